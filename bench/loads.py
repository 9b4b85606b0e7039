"""One measurement each: a 1 GiB push or pull (skopeo), a raw blob GET or PUT (curl), and
keep-alive small requests (ab for HEAD, wrk for GET). Each returns plain numbers."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stack import BenchStack, Endpoint
from tests.realstack.oci import MANIFEST_MEDIA_TYPE, OciImage

MiB = 1 << 20

# wrk reads the Authorization header from a file named in its script arguments, so the
# credentials stay off its command line; done() prints the figures as one JSON line.
WRK_SCRIPT = """
function init(args)
  local file = io.open(args[1], "r")
  local header = file:read("*l")
  file:close()
  wrk.headers["Authorization"] = header
  wrk.headers["Accept"] = args[2]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class SmallResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "failed": self.failed,
        }


# -- large: skopeo ---------------------------------------------------------------------------
def skopeo_push(stack: BenchStack, endpoint: Endpoint, image: OciImage, repository: str) -> float:
    """Seconds to copy the OCI layout to `repository` (a new one: every blob is uploaded)."""
    if endpoint.authenticated:
        access = ["--dest-authfile", str(stack.authfile)]
    else:  # the registry's own port speaks plain HTTP; skopeo falls back to it when not verifying
        access = ["--dest-tls-verify=false"]
    started = time.perf_counter()
    stack.client_private_blob_cache(
        "copy",
        "--quiet",
        *access,
        image.reference,
        f"docker://{endpoint.docker_host}/{repository}:{image.tag}",
    )
    return time.perf_counter() - started


def skopeo_pull(
    stack: BenchStack, endpoint: Endpoint, repository: str, tag: str, destination: Path
) -> float:
    """Seconds to copy the image into a fresh OCI layout (skopeo verifies every digest)."""
    if endpoint.authenticated:
        access = ["--src-authfile", str(stack.authfile)]
    else:
        access = ["--src-tls-verify=false"]
    shutil.rmtree(destination, ignore_errors=True)
    try:
        started = time.perf_counter()
        # A private blob-info cache here too: the machine's own is never written.
        stack.client_private_blob_cache(
            "copy",
            "--quiet",
            *access,
            f"docker://{endpoint.docker_host}/{repository}:{tag}",
            f"oci:{destination}:{tag}",
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(destination, ignore_errors=True)


# -- large: curl -----------------------------------------------------------------------------
def _curl(stack: BenchStack, endpoint: Endpoint, *args: str) -> str:
    auth = ["-K", "-"] if endpoint.authenticated else []
    result = stack.client(
        "curl",
        "-sS",
        "--fail",
        *auth,
        *args,
        input=stack.curl_config if endpoint.authenticated else None,
    )
    return result.stdout.decode()


def curl_get_blob(
    stack: BenchStack, endpoint: Endpoint, repository: str, digest: str, size: int
) -> float:
    """Seconds to GET one blob to /dev/null."""
    started = time.perf_counter()
    written = _curl(
        stack,
        endpoint,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        f"{endpoint.base_url}/v2/{repository}/blobs/{digest}",
    )
    elapsed = time.perf_counter() - started
    if int(float(written)) != size:
        raise AssertionError(f"GET {digest}: {written} bytes, expected {size}")
    return elapsed


def curl_put_blob(
    stack: BenchStack, endpoint: Endpoint, repository: str, blob: Path, digest: str
) -> float:
    """Seconds for a monolithic blob upload (the PUT only; the POST that opens it is untimed)."""
    headers = _curl(
        stack, endpoint, "-i", "-X", "POST", f"{endpoint.base_url}/v2/{repository}/blobs/uploads/"
    )
    match = re.search(r"^location:\s*(\S+)", headers, re.IGNORECASE | re.MULTILINE)
    if match is None:
        raise AssertionError(f"no upload location in:\n{headers}")
    location = match.group(1)
    if location.startswith("/"):
        location = endpoint.base_url + location
    separator = "&" if "?" in location else "?"
    started = time.perf_counter()
    code = _curl(
        stack,
        endpoint,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Expect:",
        "-H",
        "Content-Type: application/octet-stream",
        "-T",
        str(blob),
        f"{location}{separator}digest={digest}",
    )
    elapsed = time.perf_counter() - started
    if code != "201":
        raise AssertionError(f"PUT blob: HTTP {code}")
    return elapsed


# -- small requests --------------------------------------------------------------------------
def ab_head(
    stack: BenchStack,
    endpoint: Endpoint,
    path: str,
    seconds: float,
    concurrency: int,
    scratch: Path,
) -> SmallResult:
    """HEAD with `ab -k -i` (HTTP/1.0 keep-alive). ab has no way to read a header from a file,
    so the Authorization header is on its argv: the benchmark's own throwaway credentials, in a
    private network namespace, for the few seconds the run lasts."""
    csv = scratch / "ab-percentiles.csv"
    per_request = scratch / "ab-requests.tsv"
    argv = [
        "ab",
        "-q",
        "-k",
        "-i",
        "-c",
        str(concurrency),
        "-t",
        str(seconds),
        "-n",
        "1000000",
        "-e",
        str(csv),
        "-g",
        str(per_request),
        "-H",
        f"Authorization: {stack.authorization_header}",
        f"{endpoint.base_url}{path}",
    ]
    output = stack.client(*argv, timeout=seconds * 4 + 60).stdout.decode()

    def number(label: str, default: float | None = None) -> float:
        match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", output, re.MULTILINE)
        if match is None:
            if default is None:
                raise AssertionError(f"ab printed no `{label}`:\n{output}")
            return default
        return float(match.group(1))

    complete = int(number("Complete requests"))
    percentiles = {}
    if complete > 200:  # ab's -e table (0.001 ms) indexes past its data for few requests
        for line in csv.read_text().splitlines()[1:]:
            percent, milliseconds = line.split(",")
            percentiles[int(float(percent))] = float(milliseconds)
    else:  # then use the per-request times (whole ms, enough at these latencies)
        times = sorted(
            int(line.split("\t")[4])
            for line in per_request.read_text().splitlines()[1:]
            if line.strip()
        )
        for share in (50, 99):
            percentiles[share] = float(times[min(len(times) - 1, len(times) * share // 100)])
    keep_alive = int(number("Keep-Alive requests", 0))
    if complete and keep_alive < complete * 0.99:
        raise AssertionError(f"ab: only {keep_alive} of {complete} requests kept alive")
    failed = int(number("Failed requests")) + int(number("Non-2xx responses", 0))
    return SmallResult(
        requests_per_s=number("Requests per second"),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        requests=complete,
        failed=failed,
    )


def wrk_get(
    stack: BenchStack,
    endpoint: Endpoint,
    path: str,
    seconds: float,
    concurrency: int,
    threads: int,
    scratch: Path,
    accept: str = MANIFEST_MEDIA_TYPE,
) -> SmallResult:
    """GET with wrk (HTTP/1.1 keep-alive), the same headers through the front and direct."""
    script = scratch / "bench.lua"
    script.write_text(WRK_SCRIPT)
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{endpoint.base_url}{path}",
        "--",
        str(stack.authorization_file),
        accept,
    ]
    output = stack.client(*argv, timeout=seconds * 4 + 60).stdout.decode()
    figures = json.loads(output.strip().splitlines()[-1])
    return SmallResult(
        requests_per_s=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        requests=figures["requests"],
        failed=figures["errors"] + figures["non_2xx"],
    )
