"""Layer 3: what the registry host says about itself, on the real stack (the program's own files
run by Debian's nginx and registry in namespaces, tests/realstack/hostsim.py): nginx's JSON
access log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, apply_client_trust
from tests.realstack.oci import build_image
from tests.realstack.sandbox import Sandbox

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(overrides={"users": ["ci", "viewer:pull"], "clientCount": 1})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitoring")


@pytest.fixture(scope="module")
def sim(program: ProgramRun, workdir: Path) -> Iterator[RegistryHostSim]:
    client_root = workdir / "client-root"
    for result in apply_client_trust(program, client_root):
        assert result.returncode == 0, result.stderr.decode()
    host = RegistryHostSim(program, workdir / "host")
    host.set_client_etc(Sandbox(client_root).upper("/etc"))
    with host:
        yield host
    assert not host.leftovers(), "left behind"


@pytest.fixture(scope="module")
def skopeo(sim: RegistryHostSim, workdir: Path) -> Skopeo:
    return Skopeo.logged_in(sim, workdir / "skopeo")


def access_log_entries(sim: RegistryHostSim, until: Any, timeout: float = 15) -> list[Any]:
    """nginx's access log lines (its stdout, which dockerd keeps), parsed as JSON, once one of
    them satisfies `until` (nginx flushes its log buffer every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        text = (sim.logs / "nginx.log").read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("{")]
        entries = [json.loads(line) for line in lines]  # every access line is JSON
        if any(until(entry) for entry in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_access_log_lines_are_json_with_user_repository_status_bytes_and_times(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "logged", "v1", [256 * 1024], seed="logged")
    skopeo.push(image, "team/logged", "ci")
    skopeo(
        "inspect",
        "--authfile",
        str(skopeo.authfile("viewer")),
        f"docker://{sim.address}/team/logged:v1",
    )

    def is_the_push(entry: Any) -> bool:
        return entry["method"] == "PUT" and entry["uri"] == "/v2/team/logged/manifests/v1"

    entries = access_log_entries(sim, is_the_push)
    pushes = [entry for entry in entries if is_the_push(entry)]
    assert len(pushes) == 1, entries[-20:]
    push = pushes[0]
    assert (push["user"], push["repository"], push["status"]) == ("ci", "team/logged", 201)
    assert push["request_bytes"] > 0 and isinstance(push["body_bytes_sent"], int)
    assert isinstance(push["request_time"], float)
    assert float(push["upstream_time"]) >= 0  # the registry answered it
    assert push["time"].startswith(time.strftime("%Y-"))
    blob_upload = [
        entry
        for entry in entries
        if entry["method"] == "PATCH" and entry["repository"] == "team/logged"
    ]
    assert blob_upload and blob_upload[0]["request_bytes"] > 256 * 1024  # the layer came in
    reads = [
        entry
        for entry in entries
        if entry["user"] == "viewer" and entry["repository"] == "team/logged"
    ]
    assert reads and all(entry["status"] == 200 for entry in reads), reads
