"""The Python side of `pulumi preview`/`up`: how long evaluating the program takes under mocks
(next to importing the five provider packages alone), and what a second `up` would re-run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import ProgramRun, run_program
from tests.mocks import ProviderMocks

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ONLY = "import pulumi, pulumi_digitalocean, pulumi_command, pulumi_tls, pulumi_random"

# The whole program under the tests' provider-like mocks, in a fresh interpreter, with a
# breakdown the parent prints as a diagnosis (the headline is the parent's wall clock).
EVALUATE = """
import json, time
started = time.perf_counter()
from tests import harness, mocks
imported = time.perf_counter()
in_mocks = [0.0]
new_resource = mocks.ProviderMocks.new_resource
def timed(self, args):
    began = time.perf_counter()
    try:
        return new_resource(self, args)
    finally:
        in_mocks[0] += time.perf_counter() - began
mocks.ProviderMocks.new_resource = timed
run = harness.run_program()
finished = time.perf_counter()
print(json.dumps({"harness_import_s": imported - started, "run_s": finished - imported,
                  "in_mocks_s": in_mocks[0], "resources": len(run.resources)}))
"""


# Bytecode caches as a user's repeated `pulumi preview` has them, kept outside the repository
# (and written even where PYTHONDONTWRITEBYTECODE is set), so both timings read cached bytecode.
PYCACHE = Path(tempfile.gettempdir()) / "registry-bench-pycache"


def _fresh_python(code: str) -> tuple[float, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
    }
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise AssertionError(f"python -c failed:\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


@dataclass
class Evaluation:
    program_s: list[float]
    imports_s: list[float]
    breakdown: list[dict[str, Any]]

    @property
    def ratio(self) -> float:
        return statistics.median(self.program_s) / statistics.median(self.imports_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "program_eval_s": [round(x, 3) for x in self.program_s],
            "imports_only_s": [round(x, 3) for x in self.imports_s],
            "program_eval_median_s": round(statistics.median(self.program_s), 3),
            "imports_only_median_s": round(statistics.median(self.imports_s), 3),
            "ratio": round(self.ratio, 2),
            "breakdown_median": {
                key: round(statistics.median(b[key] for b in self.breakdown), 3)
                for key in self.breakdown[0]
            },
        }


def time_evaluation(repetitions: int, settle: Callable[[], object] = lambda: None) -> Evaluation:
    """Each run in a fresh interpreter (imports counted), alternating, after one warm-up of
    each (bytecode caches written, files in the page cache) that is not counted; `settle`
    runs before each timed run (the benchmark waits there for a quiet machine)."""
    _fresh_python(EVALUATE)
    _fresh_python(IMPORT_ONLY)
    program, imports, breakdown = [], [], []
    for _ in range(repetitions):
        settle()
        elapsed, output = _fresh_python(EVALUATE)
        program.append(elapsed)
        breakdown.append(json.loads(output.strip().splitlines()[-1]))
        settle()
        imports.append(_fresh_python(IMPORT_ONLY)[0])
    return Evaluation(program_s=program, imports_s=imports, breakdown=breakdown)


@dataclass
class SecondUp:
    first: ProgramRun
    changed_commands: list[str]
    command_count: int
    changed_resources: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "remote_commands": self.command_count,
            "remote_commands_rerun": len(self.changed_commands),
            "rerun_names": self.changed_commands,
            "resources_with_changed_inputs": self.changed_resources,
        }


def second_up() -> SecondUp:
    """Run the program twice against the same engine-like mock state (an unchanged config);
    a command whose inputs differ, or that appears or disappears, would run again."""
    mocks = ProviderMocks()
    first = run_program(mocks)
    second = run_program(mocks)

    def inputs(run: ProgramRun, commands_only: bool) -> dict[str, Any]:
        return {
            r.urn: r.inputs
            for r in run.resources.values()
            if r.custom and (r.type.startswith("command:") or not commands_only)
        }

    def changed(commands_only: bool) -> list[str]:
        before, after = inputs(first, commands_only), inputs(second, commands_only)
        return sorted(
            urn.rsplit("::", 1)[1]
            for urn in before.keys() | after.keys()
            if before.get(urn) != after.get(urn)
        )

    return SecondUp(
        first=first,
        changed_commands=changed(True),
        command_count=len(inputs(first, True)),
        changed_resources=changed(False),
    )
