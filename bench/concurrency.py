"""Many clients at once: the front against the registry's own port, in the same run.

    sudo .venv-tests/bin/python -m bench.concurrency          # from the repository root, as root

The benchmark's stack (bench/stack.py: the program's own files, Debian's nginx and registry in
namespaces, plus a direct route to the registry). Each repetition, through the front and direct:
`--clients` skopeo processes push distinct images of one `--layer-mib` layer at once, then pull
them all at once, then half push new images while half pull; then `--small-clients` keep-alive
connections GET a manifest with wrk. Reports aggregate MiB/s and requests/s with their ratio to
direct, p50/p99 per-operation latency, errors, and CPU seconds per GiB by process. Every pull is
skopeo's, which verifies each blob's digest. Writes bench/results/concurrency.json and
concurrency.png. A script, not a test: nothing fails when a target is missed; the table says
MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import loads, report
from bench.fronts import with_tcp_listener
from bench.stack import BenchStack, CpuUse, Endpoint
from tests.harness import run_program
from tests.realstack.oci import OciImage, build_image

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
# The targets (21): aggregate throughput through the front at least this share of
# direct; small-request p99 at most this multiple of direct's.
TARGET_RATIO = 0.80
TARGET_P99_FACTOR = 1.5


def percentile(values: list[float], share: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * share // 100)]


def run_clients(tasks: list[Callable[[], float]]) -> tuple[list[float], list[str]]:
    """Run every task at once; (seconds of each that succeeded, errors)."""
    seconds: list[float] = []
    errors: list[str] = []

    def attempt(task: Callable[[], float]) -> None:
        try:
            seconds.append(task())
        except Exception as error:  # noqa: BLE001 - each failure is a finding, counted
            errors.append(str(error)[-300:])

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        list(pool.map(attempt, tasks))
    return seconds, errors


def measured(stack: BenchStack, tasks: list[Callable[[], float]], gib: float) -> dict[str, Any]:
    with stack.metered() as holder:
        seconds, errors = run_clients(tasks)
    cpu: CpuUse = holder[0]
    return {
        "MiB_per_s": round(gib * 1024 / cpu.wall, 1),
        "p50_s": round(percentile(seconds, 50), 2) if seconds else None,
        "p99_s": round(percentile(seconds, 99), 2) if seconds else None,
        "errors": len(errors),
        "error_samples": errors[:3],
        "cpu_s_per_GiB": {
            "client": round(cpu.client / gib, 2),
            "nginx": round(cpu.nginx / gib, 2),
            "registry": round(cpu.registry / gib, 2),
            "kernel_threads": round(cpu.kernel_threads / gib, 2),
        },
        "foreign_cores": round(cpu.foreign_cores, 2),
    }


def repetition(
    stack: BenchStack,
    endpoint: Endpoint,
    images: list[OciImage],
    extra: list[OciImage],
    args: argparse.Namespace,
    rep: int,
    scratch: Path,
) -> dict[str, Any]:
    prefix = f"bench/{endpoint.label}-r{rep}"
    gib = len(images) * args.layer_mib * MiB / GiB

    def push(image: OciImage, repository: str) -> Callable[[], float]:
        return lambda: loads.skopeo_push(stack, endpoint, image, repository)

    def pull(repository: str, index: int) -> Callable[[], float]:
        destination = scratch / f"{endpoint.label}-r{rep}-pull-{index}"
        return lambda: loads.skopeo_pull(stack, endpoint, repository, "v1", destination)

    result = {
        "push": measured(
            stack, [push(image, f"{prefix}-{i}") for i, image in enumerate(images)], gib
        ),
        "pull": measured(stack, [pull(f"{prefix}-{i}", i) for i in range(len(images))], gib),
    }
    half = len(images) // 2
    result["mixed"] = measured(
        stack,
        [push(image, f"{prefix}-mixed-{i}") for i, image in enumerate(extra[:half])]
        + [pull(f"{prefix}-{i}", half + i) for i in range(half, len(images))],
        gib,
    )
    small = loads.wrk_get(
        stack,
        endpoint,
        f"/v2/{prefix}-0/manifests/v1",
        args.small_seconds,
        args.small_clients,
        2,
        scratch,
    )
    result["small"] = small.as_dict()
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions, per scenario; errors summed."""
    summary: dict[str, Any] = {}
    for scenario in ("push", "pull", "mixed"):
        rows = [run[scenario] for run in runs]
        summary[scenario] = {
            "MiB_per_s": round(statistics.median(r["MiB_per_s"] for r in rows), 1),
            "p50_s": round(statistics.median(r["p50_s"] or 0 for r in rows), 2),
            "p99_s": round(statistics.median(r["p99_s"] or 0 for r in rows), 2),
            "errors": sum(r["errors"] for r in rows),
            "cpu_s_per_GiB": {
                who: round(statistics.median(r["cpu_s_per_GiB"][who] for r in rows), 2)
                for who in rows[0]["cpu_s_per_GiB"]
            },
        }
    small = [run["small"] for run in runs]
    summary["small"] = {
        key: round(statistics.median(s[key] for s in small), 3)
        for key in ("requests_per_s", "p50_ms", "p99_ms")
    } | {"failed": sum(s["failed"] for s in small)}
    return summary


def ratios(front: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    out = {
        scenario: round(front[scenario]["MiB_per_s"] / direct[scenario]["MiB_per_s"], 2)
        for scenario in ("push", "pull", "mixed")
    }
    out["small_requests_per_s"] = round(
        front["small"]["requests_per_s"] / direct["small"]["requests_per_s"], 2
    )
    out["small_p99_factor"] = round(front["small"]["p99_ms"] / direct["small"]["p99_ms"], 2)
    return out


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_table(results: dict[str, Any]) -> None:
    front, direct, ratio = results["front"], results["direct"], results["ratios"]
    print(report.machine_line(results["machine"]))
    print(
        f"{results['clients']} clients x {results['layer_mib']} MiB layers, "
        f"{results['small_clients']} small-request connections; median of {results['reps']}"
    )
    header = ("scenario", "direct", "front", "ratio", "p50/p99 s front", "errors", "nginx s/GiB")
    print("  ".join(f"{h:>16}" for h in header))
    for scenario in ("push", "pull", "mixed"):
        f, d = front[scenario], direct[scenario]
        cells = (
            scenario,
            f"{d['MiB_per_s']} MiB/s",
            f"{f['MiB_per_s']} MiB/s",
            f"{ratio[scenario]} {mark(ratio[scenario] >= TARGET_RATIO)}",
            f"{f['p50_s']}/{f['p99_s']}",
            f"{f['errors']}+{d['errors']}",
            f["cpu_s_per_GiB"]["nginx"],
        )
        print("  ".join(f"{c!s:>16}" for c in cells))
    f, d = front["small"], direct["small"]
    print(
        f"small GET: direct {d['requests_per_s']} req/s p99 {d['p99_ms']} ms; front "
        f"{f['requests_per_s']} req/s p99 {f['p99_ms']} ms; ratio "
        f"{ratio['small_requests_per_s']}, p99 x{ratio['small_p99_factor']} "
        f"{mark(ratio['small_p99_factor'] <= TARGET_P99_FACTOR)}; failed {f['failed']}+"
        f"{d['failed']}"
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["push", "pull", "mixed", "small_requests_per_s"]
    values = [results["ratios"][label] for label in labels]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(["push", "pull", "mixed", "small GET"], values, color="#4477aa")
    axis.axhline(TARGET_RATIO, color="#cc3311", linestyle="--", label=f"target {TARGET_RATIO}")
    for index, value in enumerate(values):
        axis.text(index, value + 0.02, f"{value:.2f}", ha="center")
    axis.set_ylim(0, max(1.1, max(values) + 0.15))
    axis.set_ylabel("front / direct")
    axis.set_title(
        f"{results['clients']} clients at once, {results['layer_mib']} MiB layers "
        f"({results['small_clients']} connections for small GETs)"
    )
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--small-clients", type=int, default=64)
    parser.add_argument("--small-seconds", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network and mount namespaces)")
    program = run_program(overrides={"users": ["bench"], "clientCount": 1})
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        work = Path(tmp)
        images = [
            build_image(work / f"image-{i}", "v1", [args.layer_mib * MiB], f"conc-{i}")
            for i in range(args.clients)
        ]
        extra = [
            build_image(work / f"extra-{i}", "v1", [args.layer_mib * MiB], f"conc-extra-{i}")
            for i in range(args.clients // 2)
        ]
        runs: dict[str, list[dict[str, Any]]] = {"front": [], "direct": []}
        with BenchStack(program, work / "stack") as stack:
            program_files = stack.read_files()
            # Direct: the same registry config with its API on the TCP port the client reaches.
            files_for = {
                stack.front.label: program_files,
                stack.direct.label: replace(
                    program_files, registry_config=with_tcp_listener(program_files.registry_config)
                ),
            }
            for rep in range(args.reps):
                for endpoint in (stack.direct, stack.front):  # alternated, same conditions
                    if stack.installed != files_for[endpoint.label]:
                        stack.install(files_for[endpoint.label])
                    started = time.monotonic()
                    runs[endpoint.label].append(
                        repetition(stack, endpoint, images, extra, args, rep, work)
                    )
                    print(
                        f"  {endpoint.label} repetition {rep + 1}: "
                        f"{time.monotonic() - started:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    front, direct = summarize(runs["front"]), summarize(runs["direct"])
    results: dict[str, Any] = {
        "machine": report.machine(),
        "clients": args.clients,
        "layer_mib": args.layer_mib,
        "small_clients": args.small_clients,
        "reps": args.reps,
        "front": front,
        "direct": direct,
        "ratios": ratios(front, direct),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps(results, indent=1) + "\n")
    chart(results, args.out / "concurrency.png")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
