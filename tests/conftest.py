"""Fixtures that run the real program under provider-like mocks, each configuration once.

A run costs about a second, so the dev stack's run is shared by the whole session, and runs
with other config are made once per module that needs them. Everything a fixture returns is a
plain value (resolved inputs and outputs), so tests read as assertions on data.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import harness  # noqa: E402  (needs the repository root on sys.path)
from tests.harness import ProgramRun, Registration, run_program  # noqa: E402
from tests.mocks import ProviderMocks  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # The provider SDKs warn on import about resources this program does not use.
    for package in ("pulumi_digitalocean", "pulumi_command"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{package}.*")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped test is not a passing test: every layer runs, here and in CI."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which counts as a failure here: {report.longrepr}"


@dataclass(frozen=True)
class DevStack:
    """The dev stack after one `pulumi up`: what the program asked for, and the engine state."""

    mocks: ProviderMocks
    run: ProgramRun


@dataclass(frozen=True)
class FailedRun:
    """A program run that raised: the exception and every resource registered before it."""

    error: Exception
    registrations: dict[str, Registration]


@pytest.fixture(scope="session")
def dev_stack() -> DevStack:
    mocks = ProviderMocks()
    return DevStack(mocks=mocks, run=run_program(mocks=mocks))


@pytest.fixture(scope="session")
def program_run(dev_stack: DevStack) -> ProgramRun:
    """The program run once with the dev stack's config (`Pulumi.yaml` + `Pulumi.dev.yaml`)."""
    return dev_stack.run


@pytest.fixture(scope="session")
def run_with() -> Callable[[Mapping[str, Any]], ProgramRun]:
    """Run the dev stack with config overrides (`{"clientCount": 0}`), on a fresh engine."""
    def run(overrides: Mapping[str, Any]) -> ProgramRun:
        return run_program(overrides=overrides)
    return run


@pytest.fixture(scope="session")
def update_dev_stack(dev_stack: DevStack) -> Callable[[Mapping[str, Any]], ProgramRun]:
    """A second `pulumi up` of the dev stack with config overrides (`{}`: unchanged config).

    Each call starts from a copy of the engine state the first run left, so calls do not see
    each other's changes: resources with unchanged inputs keep their outputs (keys, passwords,
    IPs), as the engine keeps them in its state file.
    """
    def run(overrides: Mapping[str, Any]) -> ProgramRun:
        return run_program(mocks=copy.deepcopy(dev_stack.mocks), overrides=overrides)
    return run


@pytest.fixture
def run_failing() -> Callable[[Mapping[str, Any]], FailedRun]:
    """Run the program with config that must make it fail; keep what reached the monitor."""
    def run(overrides: Mapping[str, Any]) -> FailedRun:
        mocks = ProviderMocks()
        monitor = harness.RecordingMonitor(mocks)
        with pytest.raises(Exception) as caught:
            run_program(mocks=mocks, overrides=overrides, monitor=monitor)
        return FailedRun(error=caught.value, registrations=dict(monitor.registrations))
    return run
