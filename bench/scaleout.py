"""Storage `spaces` through the balancer: push and pull with 1 and with 3 registry nodes.

    sudo .venv-tests/bin/python -m bench.scaleout          # from the repository root, as root

The stack of tests/test_scaleout_stack.py (tests/realstack/cluster.py): the program's own files
on every node, moto over https as Spaces, haproxy in TCP mode. Each repetition pushes
`--clients` images of one `--layer-mib` layer at once (skopeo, one process each), then pulls
them all at once, and records the wall time and the CPU seconds of each node (its nginx and
registry processes), of moto, of haproxy and of the clients. Prints one table and writes
bench/results/scaleout.json. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.harness import run_program
from tests.realstack.clients import Skopeo
from tests.realstack.cluster import SpacesClusterSim
from tests.realstack.hostsim import sh
from tests.realstack.oci import OciImage, build_image

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[str]) -> float:
    """User + system CPU seconds of these processes so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def netns_pids(*namespaces: str) -> list[str]:
    return [
        pid
        for ns in namespaces
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.decode().split()
    ]


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (every process, the kernel, steal)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def measure(cluster: SpacesClusterSim, action: Callable[[], object]) -> dict[str, float]:
    """Wall seconds and CPU seconds by whom while `action` runs."""
    groups = {
        **{
            f"node{index}": netns_pids(node.ns_host, node.ns_container)
            for index, node in enumerate(cluster.nodes)
        },
        "moto": [str(cluster.processes["moto"].pid)],
        "haproxy": [str(cluster.processes["haproxy"].pid)],
    }
    before = {name: process_cpu(pids) for name, pids in groups.items()}
    machine_before, started = machine_cpu(), time.monotonic()
    action()
    wall = time.monotonic() - started
    result = {name: process_cpu(pids) - before[name] for name, pids in groups.items()}
    result["machine"] = machine_cpu() - machine_before
    result["wall"] = wall
    return result


def run_cluster(nodes: int, args: argparse.Namespace, images: list[OciImage], work: Path) -> Any:
    program = run_program(
        overrides={
            "storage": "spaces",
            "registryCount": nodes,
            "region": "fra1",
            "users": ["ci"],
        }
    )
    rows: dict[str, list[dict[str, float]]] = {"push": [], "pull": []}
    with SpacesClusterSim(program, work / f"nodes-{nodes}") as cluster:
        skopeo = Skopeo.logged_in(cluster, work / f"skopeo-{nodes}")  # type: ignore[arg-type]
        for rep in range(args.reps):
            with ThreadPoolExecutor(max_workers=len(images)) as pool:
                rows["push"].append(
                    measure(
                        cluster,
                        lambda rep=rep: list(
                            pool.map(
                                lambda item: skopeo.push(item[1], f"bench/r{rep}-{item[0]}", "ci"),
                                enumerate(images),
                            )
                        ),
                    )
                )
                rows["pull"].append(
                    measure(
                        cluster,
                        lambda rep=rep: list(
                            pool.map(
                                lambda item: skopeo.pull(
                                    f"bench/r{rep}-{item[0]}",
                                    "v1",
                                    "ci",
                                    work / f"pulled-{nodes}-{rep}-{item[0]}",
                                ),
                                enumerate(images),
                            )
                        ),
                    )
                )
            sh("rm", "-rf", *(str(p) for p in work.glob(f"pulled-{nodes}-{rep}-*")))
            print(f"  {nodes} node(s), repetition {rep + 1}: done", file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict[str, float]], nodes: int, gib: float) -> dict[str, float]:
    wall = statistics.median(row["wall"] for row in rows)
    node_cpu = [statistics.median(row[f"node{index}"] for row in rows) for index in range(nodes)]
    return {
        "wall_s": round(wall, 2),
        "MiB_per_s": round(gib * 1024 / wall, 1),
        "node_cpu_s_per_GiB": round(sum(node_cpu) / gib, 2),
        "busiest_node_share": round(max(node_cpu) / sum(node_cpu), 2) if sum(node_cpu) else 0,
        "moto_cpu_s_per_GiB": round(statistics.median(row["moto"] for row in rows) / gib, 2),
        "haproxy_cpu_s_per_GiB": round(statistics.median(row["haproxy"] for row in rows) / gib, 2),
        "machine_busy_cores": round(
            statistics.median(row["machine"] / row["wall"] for row in rows), 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--clients", type=int, default=3, help="concurrent pushes/pulls")
    parser.add_argument("--layer-mib", type=int, default=128, help="one layer per image")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nodes", default="1,3", help="node counts to compare")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network and mount namespaces)")
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        images = [
            build_image(work / f"image-{index}", "v1", [args.layer_mib * MiB], f"bench-{index}")
            for index in range(args.clients)
        ]
        gib = args.clients * args.layer_mib * MiB / GiB
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
            "clients": args.clients,
            "layer_mib": args.layer_mib,
            "reps": args.reps,
        }
        for nodes in (int(value) for value in args.nodes.split(",")):
            rows = run_cluster(nodes, args, images, work)
            results[f"{nodes}_nodes"] = {
                operation: {
                    "summary": summary(rows[operation], nodes, gib),
                    "runs": rows[operation],
                }
                for operation in ("push", "pull")
            }
    out = ROOT / "bench" / "results" / "scaleout.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{args.clients} clients x {args.layer_mib} MiB, median of {args.reps}; {out}")
    header = ("nodes", "op", "MiB/s", "node CPU s/GiB", "busiest", "moto s/GiB", "busy cores")
    print("  ".join(f"{h:>14}" for h in header))
    for key, value in results.items():
        if not key.endswith("_nodes"):
            continue
        for operation, data in value.items():
            s = data["summary"]
            cells = (
                key.split("_")[0],
                operation,
                s["MiB_per_s"],
                s["node_cpu_s_per_GiB"],
                s["busiest_node_share"],
                s["moto_cpu_s_per_GiB"],
                s["machine_busy_cores"],
            )
            print("  ".join(f"{c!s:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
