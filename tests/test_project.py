"""The project as `pulumi install` and `pulumi up` treat it (Pulumi.yaml's runtime options)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ROOT

pytestmark = pytest.mark.program


def runtime_options() -> dict[str, str]:
    options: dict[str, str] = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["runtime"][
        "options"
    ]
    return options


def test_pulumi_installs_the_typechecker_it_runs() -> None:
    options = runtime_options()
    assert options["toolchain"] == "pip"
    assert options["typechecker"] == "mypy"
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("mypy") for line in requirements), "pulumi install lacks mypy"


def test_the_type_check_pulumi_up_runs_passes(tmp_path: Path) -> None:
    """What the Python language host runs before the program (pulumi/pulumi,
    sdk/python/cmd/pulumi-language-python/main.go): `python -m mypy --exclude <virtualenv>
    <program directory>`, from the program directory, which reads pyproject.toml."""
    cache = os.environ.get("MYPY_CACHE_DIR", str(tmp_path))  # tests/run keeps one in the venv
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            cache,
            "--exclude",
            runtime_options()["virtualenv"],
            str(ROOT),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
