"""What the benchmark prints and writes: the machine, one table, the JSON and the chart."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LARGE_TARGET = 0.90
SMALL_TARGET = 0.85
# The front's CPU per pushed GiB against the front before issue 12 (`BEFORE_FRONT`), at most.
FRONT_CPU_TARGET = 0.60
BEFORE_FRONT = "tcp-upstream"
EVAL_TARGET = 2.0

# (key, row label, unit, target ratio or None for information only)
LARGE_ROWS = [
    ("push", "{size} push, skopeo", "MiB/s", LARGE_TARGET),
    ("pull", "{size} pull, skopeo", "MiB/s", LARGE_TARGET),
    ("raw_put", "{size} blob PUT, curl (info)", "MiB/s", None),
    ("raw_get", "{size} blob GET, curl (info)", "MiB/s", None),
]
SMALL_ROWS = [
    ("head_blob", "HEAD blob, ab -k", "req/s", SMALL_TARGET),
    ("get_manifest", "GET manifest, wrk", "req/s", SMALL_TARGET),
]
CHART_KEYS = [
    ("push", "{size} push"),
    ("pull", "{size} pull"),
    ("head_blob", "HEAD blob"),
    ("get_manifest", "GET manifest"),
]


def size_label(results: Mapping[str, Any]) -> str:
    mib = results["settings"]["layer_mib"]
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def _version(argv: Sequence[str], pattern: str = r"([\d][\w.+~:-]*)") -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


def machine(registry_binary: Path | None = None) -> dict[str, Any]:
    """The machine and the versions measured; `registry_binary`: a distribution build run
    instead of Debian's docker-registry (its version is the last word it prints)."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    debian = Path("/etc/debian_version")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "debian": debian.read_text().strip() if debian.exists() else "not Debian",
        "nginx": _version(["nginx", "-v"], r"nginx/([\d.]+)"),
        "registry": _version(
            [str(registry_binary or "docker-registry"), "--version"], r"(\S+)\s*$"
        ),
        "skopeo": _version(["skopeo", "--version"]),
        "openssl": _version(["openssl", "version"], r"OpenSSL ([\w.]+)"),
        "curl": _version(["curl", "--version"], r"curl ([\d.]+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "ab": _version(["ab", "-V"], r"Version ([\d.]+)"),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: Mapping[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; kernel "
        f"{info['kernel']}; Debian {info['debian']}; nginx {info['nginx']}; registry "
        f"{info['registry']}; skopeo {info['skopeo']}; OpenSSL {info['openssl']}; "
        f"Python {info['python']}"
    )


def spread(values: Sequence[float]) -> float:
    """Half the range, relative to the median: a plain "±" for a few repetitions."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / 2 / middle if middle else 0.0


def _mark(ratio: float | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return " ok" if ratio >= target else " MISS"


def table(results: Mapping[str, Any]) -> str:
    """The one table: rows are measurements, columns the direct baseline and each front."""
    fronts = [front["name"] for front in results["fronts"]]
    baselines = sorted(
        {front["baseline"] for front in results["fronts"]},
        key=lambda label: (label != "direct", label),
    )
    columns = baselines + fronts
    operations = results.get("operations", {})
    header = ["measurement", *columns]
    rows: list[list[str]] = []

    def value_cell(series: Mapping[str, Any] | None, key: str = "median") -> str:
        if not series:
            return "-"
        return f"{series[key]:.1f} ±{spread(series['values']) * 100:.0f}%"

    for key, label, unit, target in LARGE_ROWS + SMALL_ROWS:
        if key not in operations:
            continue
        ops = operations[key]
        row = [f"{label.format(size=size_label(results))} ({unit})"]
        for column in columns:
            cell = value_cell(ops.get(column))
            ratio = results["ratios"].get(column, {}).get(key)
            if ratio is not None:
                cell += f"  {ratio['ratio']:.2f}{_mark(ratio['ratio'], target)}"
            row.append(cell)
        rows.append(row)
        if unit == "req/s":
            latency = ["  p50 / p99 (ms)"]
            for column in columns:
                series = ops.get(column)
                latency.append(
                    f"{series['p50_ms']:.2f} / {series['p99_ms']:.2f}" if series else "-"
                )
            rows.append(latency)
        if ops and "cpu_s_per_gib" in next(iter(ops.values())):
            cpu_row = ["  CPU-s/GiB client/nginx/registry"]
            for column in columns:
                series = ops.get(column)
                if not series:
                    cpu_row.append("-")
                    continue
                per_gib = series["cpu_s_per_gib"]
                cell = f"{per_gib['client']:.2f}/{per_gib['nginx']:.2f}/{per_gib['registry']:.2f}"
                front_cpu = (
                    results["ratios"].get(column, {}).get(key, {}).get("front_cpu_s_per_gib")
                )
                if front_cpu is not None:
                    cell += f"  front {front_cpu:.2f}"
                cpu_row.append(cell)
            rows.append(cpu_row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    rule = "-" * max(len(line) for line in lines)
    lines.insert(1, rule)
    compared = [
        (name, by_operation["push"]["front_cpu_vs_before"])
        for name, by_operation in results["ratios"].items()
        if "front_cpu_vs_before" in by_operation.get("push", {})
    ]
    if compared:
        lines.append(rule)
        lines.append(
            f"front CPU per pushed GiB, against {BEFORE_FRONT}'s (target <= {FRONT_CPU_TARGET}): "
            + ", ".join(
                f"{name} {ratio:.2f}{' ok' if ratio <= FRONT_CPU_TARGET else ' MISS'}"
                for name, ratio in compared
            )
        )
    if "noise" in results:
        noise = results["noise"]
        lines.append(rule)
        lines.append(
            f"other processes (e.g. someone's tests) took > {noise['max_foreign_cores']}"
            f" cores during {noise['kept_disturbed']} of {noise['measurements']} kept "
            f"measurements; {noise['repeated']} measurements were repeated"
        )
    if "evaluation" in results:
        ev = results["evaluation"]
        if "noise" not in results:
            lines.append(rule)
        lines.append(
            f"program evaluation under mocks, fresh python (s): "
            f"{ev['program_eval_median_s']:.2f} ±{spread(ev['program_eval_s']) * 100:.0f}%"
            f"  vs importing the five packages: {ev['imports_only_median_s']:.2f} "
            f"±{spread(ev['imports_only_s']) * 100:.0f}%  = {ev['ratio']:.2f}x"
            f"{' ok' if ev['ratio'] <= EVAL_TARGET else ' MISS'} (target <= "
            f"{EVAL_TARGET:.0f}x)"
        )
    if "second_up" in results:
        su = results["second_up"]
        lines.append(
            f"remote commands a second `pulumi up` would re-run: "
            f"{su['remote_commands_rerun']} of {su['remote_commands']}"
            f"{' ok' if su['remote_commands_rerun'] == 0 else ' MISS'} (target 0)"
        )
    return "\n".join(lines)


def chart(results: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per measurement, each front's ratio (median) with the range of the
    paired repetitions, and the issue's target lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fronts = [front["name"] for front in results["fronts"]]
    keys = [
        (key, label)
        for key, label in CHART_KEYS
        if any(key in results["ratios"].get(front, {}) for front in fronts)
    ]
    if not keys:
        return
    figure, axes = plt.subplots(figsize=(8.5, 4.8))
    width = 0.8 / len(fronts)
    top = 1.2
    for index, front in enumerate(fronts):
        xs, heights, low, high = [], [], [], []
        for position, (key, _) in enumerate(keys):
            ratio = results["ratios"].get(front, {}).get(key)
            if ratio is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            heights.append(ratio["ratio"])
            low.append(max(0.0, ratio["ratio"] - min(ratio["paired"])))
            high.append(max(0.0, max(ratio["paired"]) - ratio["ratio"]))
            top = max(top, max(ratio["paired"]) + 0.08)
        bars = axes.bar(
            xs,
            heights,
            width * 0.9,
            yerr=[low, high],
            capsize=3,
            label=front,
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
        for bar, height in zip(bars, heights, strict=True):
            inside = height > 0.15  # a short bar gets its label above, in the bar's colour
            axes.text(
                bar.get_x() + bar.get_width() / 2,
                0.02 if inside else height + 0.02,
                f"{height:.2f}",
                ha="center",
                va="bottom",
                rotation=90 if len(fronts) > 3 else 0,
                color="white" if inside else bar.get_facecolor(),
                fontsize=8,
                fontweight="bold",
            )
    for target, members, label, color in (
        (LARGE_TARGET, ("push", "pull"), f"target {LARGE_TARGET:.2f} (large layer)", "crimson"),
        (
            SMALL_TARGET,
            ("head_blob", "get_manifest"),
            f"target {SMALL_TARGET:.2f} (small requests)",
            "darkorange",
        ),
    ):
        positions = [i for i, (key, _) in enumerate(keys) if key in members]
        if positions:
            axes.hlines(
                target,
                min(positions) - 0.45,
                max(positions) + 0.45,
                colors=color,
                linestyles="dashed",
                linewidth=1.3,
                label=label,
            )
    axes.set_xticks(range(len(keys)), [label.format(size=size_label(results)) for _, label in keys])
    axes.set_ylabel("through the front / straight to the registry")
    axes.set_ylim(0, min(top, 1.8))
    axes.axhline(1.0, color="grey", linewidth=0.6)
    axes.set_title(
        f"Cost of the TLS + auth front: ratio of medians of "
        f"{results['settings']['repetitions']} (whiskers: paired repetitions)",
        fontsize=10,
    )
    axes.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=min(4, len(fronts) + 2),
        frameon=False,
    )
    info = results["machine"]
    figure.text(
        0.01,
        0.01,
        f"{results['started'][:10]} · {info['cpu']}, {info['cores']} cores "
        f"shared by client, nginx and registry · Debian {info['debian']} · nginx "
        f"{info['nginx']} · registry {info['registry']}",
        fontsize=7,
        color="dimgrey",
    )
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
