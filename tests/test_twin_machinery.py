"""The twin's own machinery, without droplets: how its engine treats a failed SSH connection,
and the rootfs cache's lock."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from tests.twin import cache
from tests.twin.droplets import Twin
from tests.twin.engine import Engine
from tests.twin.hub import Hub

pytestmark = pytest.mark.twin


def answered(returncode: int, stderr: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess([], returncode, b"", stderr)


def test_a_command_whose_connection_failed_is_dialed_and_run_again_and_only_then(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No banner before the dial timeout: the command never ran, so the engine dials again and
    runs it. A command that itself exits 255 ran: it is not run twice."""
    engine = Engine(twin=cast(Twin, None), hub=cast(Hub, None), directory=tmp_path)
    answers = [answered(255, b"Connection timed out during banner exchange\r\n"), answered(0)]
    commands: list[str] = []
    dials: list[dict[str, Any]] = []

    def ssh_once(connection: Any, command: str, stdin: bytes, timeout: float) -> Any:
        commands.append(command)
        return answers.pop(0)

    monkeypatch.setattr(engine, "_ssh_once", ssh_once)
    monkeypatch.setattr(engine, "dial", dials.append)

    assert engine.ssh({"host": "203.0.113.11"}, "getent hosts x").returncode == 0
    assert commands == ["getent hosts x"] * 2 and len(dials) == 1

    answers.append(answered(255))
    assert engine.ssh({"host": "203.0.113.11"}, "exit 255").returncode == 255
    assert commands[2:] == ["exit 255"] and len(dials) == 1


def test_two_runs_at_once_build_the_rootfs_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tests/run's two pytest processes (and two runs of it) may ask for the rootfs at once."""
    builds = tmp_path / "builds"
    script = tmp_path / "build.sh"
    script.write_text(
        f'echo build >>{builds}; sleep 1; mkdir -p "$1/rootfs/usr/bin"; '
        'touch "$1/rootfs/usr/bin/systemctl"\n'
    )
    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(cache, "BUILD_SCRIPT", script)
    built: list[Path] = []
    runs = [threading.Thread(target=lambda: built.append(cache.cached_build())) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert builds.read_text().splitlines() == ["build"]
    assert built[0] == built[1]
