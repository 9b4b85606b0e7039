#!/usr/bin/env python3
"""nginx's requests, counted for Prometheus (run by registry-requests.service).

nginx sends each access log entry (its `registry_json` format) as a syslog datagram to SOCKET;
every INTERVAL seconds the counts are written whole to OUTPUT, which nginx's metrics listener
serves (/metrics/requests). Counts start at zero when the service starts (Prometheus handles
counter resets). Labels stay bounded: the user is the one nginx verified (none for a 401, whose
name nobody checked), and an unknown method counts as "other".
Usage: registry-requests.py SOCKET OUTPUT GROUP INTERVAL
Rendered by the private-registry Pulumi program; do not edit on the host.
"""

import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
PREFIX = "registry_nginx_"


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def sample(name: str, labels: dict[str, str], value: float) -> str:
    """One Prometheus sample line (built without braces in f-strings: the program renders this
    file as a template)."""
    pairs = ",".join(f'{key}="{escape(text)}"' for key, text in labels.items())
    return PREFIX + name + "{" + pairs + "} " + str(value)


class Counts:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()  # status, method, user
        self.request_bytes: Counter[str] = Counter()  # by user: request line, headers, body
        self.response_bytes: Counter[str] = Counter()  # by user: body bytes sent
        self.duration_buckets = [0] * len(DURATION_BUCKETS)
        self.duration_count = 0
        self.duration_sum = 0.0

    def add(self, entry: dict[str, Any]) -> None:
        status = str(int(entry["status"]))
        method = entry["method"] if entry["method"] in METHODS else "other"
        user = "" if status == "401" else str(entry["user"])
        seconds = float(entry["request_time"])
        request_bytes, response_bytes = int(entry["request_bytes"]), int(entry["body_bytes_sent"])
        self.requests[status, method, user] += 1
        self.request_bytes[user] += request_bytes
        self.response_bytes[user] += response_bytes
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.duration_buckets[index] += 1
        self.duration_count += 1
        self.duration_sum += seconds

    def text(self) -> str:
        lines = [
            f"# HELP {PREFIX}requests_total Requests nginx answered, by status, method and user.",
            f"# TYPE {PREFIX}requests_total counter",
        ]
        for (status, method, user), count in sorted(self.requests.items()):
            labels = {"status": status, "method": method, "user": user}
            lines.append(sample("requests_total", labels, count))
        for name, counter, what in (
            ("request_bytes_total", self.request_bytes, "Bytes nginx received"),
            ("response_bytes_total", self.response_bytes, "Body bytes nginx sent"),
        ):
            lines.append(f"# HELP {PREFIX}{name} {what}, by user.")
            lines.append(f"# TYPE {PREFIX}{name} counter")
            for user, count in sorted(counter.items()):
                lines.append(sample(name, {"user": user}, count))
        histogram = "request_duration_seconds"
        lines.append(f"# HELP {PREFIX}{histogram} Time nginx took per request.")
        lines.append(f"# TYPE {PREFIX}{histogram} histogram")
        bounds = [*map(str, DURATION_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, [*self.duration_buckets, self.duration_count], strict=True):
            lines.append(sample(f"{histogram}_bucket", {"le": bound}, count))
        lines.append(f"{PREFIX}{histogram}_sum {self.duration_sum:.3f}")
        lines.append(f"{PREFIX}{histogram}_count {self.duration_count}")
        return "\n".join(lines) + "\n"


def write_whole(path: str, text: str) -> None:
    """Written to a temporary file, then renamed into place: a scraper never reads half."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        file.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def entry_of(datagram: bytes) -> dict[str, Any] | None:
    """The JSON entry of one syslog datagram (`<PRI>TIMESTAMP TAG: {...}`), or None."""
    text = datagram.decode("utf-8", errors="replace")
    start = text.find("{")
    try:
        entry = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def serve(socket_path: str, output: str, group: int, interval: float) -> None:
    os.makedirs(os.path.dirname(socket_path), mode=0o755, exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(socket_path)
    # nginx's workers (its group) may send; nobody else may.
    os.chown(socket_path, 0, group)
    os.chmod(socket_path, 0o660)
    receiver.settimeout(interval)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    counts = Counts()
    written = None
    next_write = time.monotonic()
    try:
        while True:
            try:
                entry = entry_of(receiver.recv(65536))
            except TimeoutError:
                entry = None
            if entry is not None:
                try:
                    counts.add(entry)
                except (KeyError, TypeError, ValueError):
                    pass  # not one of nginx's entries
            if time.monotonic() >= next_write:
                text = counts.text()
                if text != written:
                    write_whole(output, text)
                    written = text
                next_write = time.monotonic() + interval
    finally:
        write_whole(output, counts.text())
        receiver.close()
        os.unlink(socket_path)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: registry-requests.py SOCKET OUTPUT GROUP INTERVAL")
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
