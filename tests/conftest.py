"""Fixtures that run the real program under provider-like mocks, each configuration once.

A run costs about a second, so the dev stack's run is shared by the whole session, and runs
with other config are made once per module that needs them. Everything a fixture returns is a
plain value (resolved inputs and outputs), so tests read as assertions on data.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import sdk_internals  # noqa: E402  (needs the repository root on sys.path)

try:
    from tests import harness
    from tests.harness import ProgramRun, Registration, run_program
except (ImportError, AttributeError) as moved:  # pragma: no cover - only when the SDK changed
    raise ImportError(sdk_internals.moved_message(str(moved))) from moved
from tests.mocks import ProviderMocks  # noqa: E402

LAYERS = ("program", "files", "host", "twin")
# Layers that need root: without it their tests are deselected (and counted as not run).
ROOT_LAYERS = ("host", "twin")
BIG_FILE = 1 << 20
# State that podman, skopeo, update-ca-certificates' hooks and apt would leave outside the
# tests' own directories: a run must not add to it (the session fails if it does).
MACHINE_STATE = (
    "/run/libpod",
    "/run/containers",
    "/run/nginx.pid",
    "/var/lib/containers",
    "/dev/shm",
    "/var/tmp",
    "/var/lib/dpkg",
    "/var/lib/ca-certificates-java",
    "/etc/ssl/certs",
)


def pytest_configure(config: pytest.Config) -> None:
    # The provider SDKs warn on import about resources this program does not use.
    for package in ("pulumi_digitalocean", "pulumi_command"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{package}.*")
    config.stash[_machine_state_key] = machine_state()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test belongs to a layer (its module's `pytestmark`); a test that names none is a
    `host` test, and so is any test that needs root (`files` tests of real file owners). Without
    root those cannot run: they are deselected, and the summary says how many."""
    for item in items:
        if not any(item.get_closest_marker(layer) for layer in LAYERS):
            item.add_marker(pytest.mark.host)
    if os.geteuid() == 0:
        return
    needs_root = [
        item for item in items if any(item.get_closest_marker(layer) for layer in ROOT_LAYERS)
    ]
    if needs_root:
        config.hook.pytest_deselected(items=needs_root)
        items[:] = [item for item in items if not item.get_closest_marker("host")]
    config.stash[_not_run_key] = len(needs_root)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    not_run = config.stash.get(_not_run_key, 0)
    if not_run:
        terminalreporter.write_line(
            f"NOT RUN: {not_run} host- and twin-layer tests (they need root; `sudo tests/run` runs "
            "every layer)",
            yellow=True,
            bold=True,
        )
    left = config.stash.get(_left_behind_key, [])
    if left:
        terminalreporter.write_line(
            "FAILED: the run left state outside the tests' own directories:", red=True, bold=True
        )
        for path in left:
            terminalreporter.write_line(f"  {path}", red=True)


def machine_state() -> dict[str, tuple[int, int]]:
    """Every path under MACHINE_STATE this user can see, with its size and mtime."""
    state = {}
    for top in map(Path, MACHINE_STATE):
        paths = [top, *top.rglob("*")] if top.is_dir() else [top]
        for path in paths:
            try:
                stat = path.lstat()
            except (FileNotFoundError, PermissionError):
                continue
            if path.is_file() and not path.name.startswith("lock"):  # dpkg's lock files
                state[str(path)] = (stat.st_size, stat.st_mtime_ns)
            elif path.is_dir() or path.is_symlink():
                state[str(path)] = (0, 0)
    return state


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_machine_state_key, None)
    if before is None:
        return
    after = machine_state()
    left = sorted(path for path, stat in after.items() if before.get(path) != stat)
    session.config.stash[_left_behind_key] = left
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_machine_state_key = pytest.StashKey[dict[str, tuple[int, int]]]()
_not_run_key = pytest.StashKey[int]()
_left_behind_key = pytest.StashKey[list[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped test is not a passing test: every layer runs, here and in CI."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which counts as a failure here: {report.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def no_big_files_kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A failing run keeps its temporary directories for debugging (pyproject.toml), but not
    the layers and registry data the real-stack tests make (hundreds of MiB): logs, configs and
    small files stay. And all of it can be removed, by the next run or by hand."""
    yield
    base = tmp_path_factory.getbasetemp()
    for directory, subdirectories, files in os.walk(base):
        for name in subdirectories:  # overlayfs leaves `work/work` at mode 000: make it removable
            if not os.access(os.path.join(directory, name), os.R_OK | os.W_OK | os.X_OK):
                os.chmod(os.path.join(directory, name), 0o700)
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink() and path.stat().st_size > BIG_FILE:
                path.unlink()


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
