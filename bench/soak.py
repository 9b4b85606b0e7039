"""A soak: a steady mixed load for `--minutes`, with a user change or a certificate renewal
reloaded into nginx every `--interval` seconds.

    sudo .venv-tests/bin/python -m bench.soak                # 10 minutes (repository root)
    sudo .venv-tests/bin/python -m bench.soak --minutes 60   # an hour

The real-stack tests' simulated registry host (tests/realstack/hostsim.py: the program's own files,
Debian's nginx and registry) under tests/realstack/load.py's clients (half push new images, half
pull their own, skopeo, no retries). Every `--interval` seconds the next of a cycle of program runs
from one stack state is applied as its remote commands would (a user added, the certificate
renewed, the user removed, ...): the changed files placed, then nginx reloaded. nginx's and the
registry's resident memory and open file descriptors are sampled every 10 s; the figures compare
the medians of the first minute after `--warmup` and of the last minute. Target: no failed
operation; growth at most 10%. At the baseline and at the end, the registry's Go heap profile
(its debug server's pprof) says how much of its heap the in-memory blob descriptor cache holds.
Writes bench/results/soak.json. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from components.manifest import REGISTRY_LAYOUT
from tests.harness import run_program
from tests.mocks import ProviderMocks
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, running, sh, trusting_client_etc
from tests.realstack.load import Load, pulled_images

ROOT = Path(__file__).resolve().parent.parent
TARGET_GROWTH = 0.10
SAMPLE_SECONDS = 10
# One stack's successive configs: each step is one change a user makes.
BASE = {"users": ["ci"], "clientCount": 1}
CYCLE = [
    {**BASE, "users": ["ci", "bob"]},  # a user added
    {**BASE, "users": ["ci", "bob"], "certValidityHours": 4380},  # the certificate renewed
    {**BASE, "certValidityHours": 4380},  # the user removed
    BASE,  # renewed again
]
PLACED = ("server_cert", "htpasswd", "nginx_conf")
# Where distribution's in-memory blob descriptor cache lives (2.8: github.com/docker/
# distribution/...; 3.x: github.com/distribution/distribution/v3/...).
BLOB_CACHE_PACKAGE = "registry/storage/cache/memory."
ALLOCATION_SITE = re.compile(r"^(\d+): (\d+) \[\d+: \d+\] @ ")


def usage(namespace: str) -> dict[str, int]:
    """Resident memory (KiB) and open file descriptors of every process in a namespace."""
    rss = fds = 0
    for pid in sh("ip", "netns", "pids", namespace, check=False).stdout.decode().split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        rss += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
            0,
        )
    return {"rss_kib": rss, "fds": fds}


def sample(sim: RegistryHostSim, started: float) -> dict[str, Any]:
    return {
        "t_s": round(time.monotonic() - started, 1),
        "nginx": usage(sim.ns_host),
        "registry": usage(sim.ns_container),
    }


def registry_heap(sim: RegistryHostSim) -> dict[str, int]:
    """The registry's heap in use (Go's HeapInuse), and what its heap profile's allocation sites
    hold in use, in all and in the in-memory blob descriptor cache. `debug=1` gives per site a
    line `objects: bytes [...] @ pcs` of sampled allocations, then its stack as `#` lines; each
    site is scaled up as `go tool pprof` does (one allocation of a site's mean size is sampled
    with probability 1 - exp(-size / rate); the header states 2 * rate as `@ heap/N`)."""
    url = f"http://127.0.0.1:{REGISTRY_LAYOUT.debug_port}/debug/pprof/heap?debug=1"
    text = sh("ip", "netns", "exec", sim.ns_container, "curl", "-sf", url).stdout.decode()
    rate = int(text.split("@ heap/", 1)[1].split()[0]) / 2
    figures = {"heap_in_use_bytes": 0, "profiled_in_use_bytes": 0, "blob_descriptor_cache_bytes": 0}
    site_bytes = 0
    for line in text.splitlines():
        if site := ALLOCATION_SITE.match(line):
            objects, sampled = int(site[1]), int(site[2])
            site_bytes = 0
            if objects:
                site_bytes = round(sampled / (1 - math.exp(-sampled / objects / rate)))
            figures["profiled_in_use_bytes"] += site_bytes
        elif line.startswith("#\t") and BLOB_CACHE_PACKAGE in line:
            figures["blob_descriptor_cache_bytes"] += site_bytes
            site_bytes = 0  # a site counts once, however many of its frames are the cache's
        elif line.startswith("# HeapInuse = "):
            figures["heap_in_use_bytes"] = int(line.split("=")[1])
    return figures


def window(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Per service and figure, the median of the samples taken in [start, end) seconds: one
    sample counts the connections in flight at that instant, a minute of them does not."""
    chosen = [s for s in samples if start <= s["t_s"] < end] or samples[-1:]
    return {
        "t_s": [chosen[0]["t_s"], chosen[-1]["t_s"]],
        **{
            service: {
                key: statistics.median(s[service][key] for s in chosen)
                for key in ("rss_kib", "fds")
            }
            for service in ("nginx", "registry")
        },
    }


def growth(first: dict[str, Any], last: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        service: {
            key: round(last[service][key] / first[service][key] - 1, 3)
            for key in ("rss_kib", "fds")
        }
        for service in ("nginx", "registry")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=60, help="seconds between changes")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--registry-binary",
        type=Path,
        help="a distribution build to run instead of Debian's docker-registry (2.8)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network and mount namespaces)")
    mocks = ProviderMocks()
    base = run_program(mocks, overrides=BASE)
    cycle = [run_program(mocks, overrides=overrides) for overrides in CYCLE]
    samples: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        sim = RegistryHostSim(base, work / "host", registry_binary=args.registry_binary)
        sim.set_client_etc(trusting_client_etc(base, work / "client-root"))
        with running(sim):
            skopeo = Skopeo.logged_in(sim, work / "skopeo")
            pulled = pulled_images(skopeo, work, args.clients, "ci")
            with Load(sim, skopeo, work / "load", pulled, "ci") as load:
                started = time.monotonic()
                end = started + args.minutes * 60
                heap: dict[str, dict[str, int]] = {}
                next_change, next_sample, step = started + args.interval, started, 0
                while time.monotonic() < end:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append(sample(sim, started))
                        next_sample += SAMPLE_SECONDS
                    if "baseline" not in heap and now - started >= args.warmup:
                        heap["baseline"] = registry_heap(sim)
                    if now >= next_change:
                        run = cycle[step % len(cycle)]
                        for role in PLACED:
                            sim.place_file(run, role)
                        sim.reload_nginx()
                        changes.append(
                            {"t_s": round(now - started, 1), "config": CYCLE[step % len(cycle)]}
                        )
                        step += 1
                        next_change += args.interval
                        print(f"  {now - started:5.0f} s: change {step} applied", file=sys.stderr)
                    time.sleep(0.5)
                samples.append(sample(sim, started))
                heap["final"] = registry_heap(sim)
            operations, failures = load.operations, load.failures()
    minute = 60.0
    baseline = window(samples, args.warmup, args.warmup + minute)
    final = window(samples, samples[-1]["t_s"] - minute, samples[-1]["t_s"] + 1)
    results = {
        "machine": report.machine(args.registry_binary),
        "minutes": args.minutes,
        "clients": args.clients,
        "interval_s": args.interval,
        "warmup_s": args.warmup,
        "operations": len(operations),
        "failed": len(failures),
        "failure_samples": [f.error[-300:] for f in failures[:5]],
        "changes": changes,
        "baseline": baseline,
        "final": final,
        "growth": growth(baseline, final),
        "registry_heap": heap,
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(results, indent=1) + "\n")
    print(report.machine_line(results["machine"]))
    print(
        f"{args.minutes:g} min, {args.clients} clients, {len(changes)} reloads: "
        f"{len(operations)} operations, {len(failures)} failed "
        f"{'ok' if not failures else 'MISS'}"
    )
    for service, figures in results["growth"].items():
        ok = all(value <= TARGET_GROWTH for value in figures.values())
        print(
            f"  {service}: RSS {baseline[service]['rss_kib']} -> "
            f"{final[service]['rss_kib']} KiB, fds {baseline[service]['fds']} -> "
            f"{final[service]['fds']} (growth {figures}) {'ok' if ok else 'MISS'}"
        )
    for moment, figures in heap.items():
        print(
            f"  registry heap ({moment}): {figures['heap_in_use_bytes'] / 2**20:.1f} MiB in use; "
            f"of {figures['profiled_in_use_bytes'] / 2**20:.1f} MiB profiled, "
            f"{figures['blob_descriptor_cache_bytes'] / 2**20:.1f} MiB the in-memory blob "
            "descriptor cache's"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
