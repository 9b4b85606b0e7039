"""Faults under load, on the real stack (the program's own files served by Debian's nginx and
registry, tests/realstack/hostsim.py): 32 clients (tests/realstack/load.py: half push, half
pull, no retries) while nginx reloads with a new user, and while the registry restarts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.manifest import REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.mocks import ProviderMocks
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, running, trusting_client_etc
from tests.realstack.load import Load, pulled_images
from tests.realstack.oci import OciImage

pytestmark = pytest.mark.host

CLIENTS = 32
BASE = {"users": ["ci"], "clientCount": 1}
WITH_BOB = {"users": ["ci", "bob"], "clientCount": 1}


@dataclass
class Stack:
    sim: RegistryHostSim
    skopeo: Skopeo
    workdir: Path
    base: ProgramRun
    with_bob: ProgramRun
    pulled_images: dict[str, OciImage]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("under-load")
    mocks = ProviderMocks()
    base = run_program(mocks, overrides=BASE)
    with_bob = run_program(mocks, overrides=WITH_BOB)
    sim = RegistryHostSim(base, workdir / "host")
    sim.set_client_etc(trusting_client_etc(base, workdir / "client-root"))
    with running(sim):
        skopeo = Skopeo.logged_in(sim, workdir / "skopeo")
        pulled = pulled_images(skopeo, workdir, CLIENTS, "ci")
        yield Stack(sim, skopeo, workdir, base, with_bob, pulled)


def load(stack: Stack, name: str) -> Load:
    return Load(stack.sim, stack.skopeo, stack.workdir / name, stack.pulled_images, "ci")


def assert_everything_pulls(stack: Stack, images: dict[str, OciImage]) -> None:
    for index, (reference, image) in enumerate(images.items()):
        repository, _, tag = reference.rpartition(":")
        destination = stack.workdir / f"verify-{index}"
        pulled = stack.skopeo.pull(repository, tag, "ci", destination)
        assert pulled == (image.manifest_digest, image.layer_digests), reference
        shutil.rmtree(destination)


def test_nginx_reloads_with_a_new_user_fail_none_of_32_clients(stack: Stack) -> None:
    sim = stack.sim
    registry_pid = sim.service_pid(REGISTRY_LAYOUT.registry_service)
    with load(stack, "reload") as running_load:
        running_load.wait_for_rounds()
        for run in (stack.with_bob, stack.base, stack.with_bob):
            for role in ("htpasswd", "nginx_conf"):
                sim.place_file(run, role)
            sim.reload_nginx()
            running_load.wait_for_rounds()
    assert running_load.failures() == [], running_load.failures()[:3]
    print(
        f"\nthree nginx reloads under {CLIENTS} clients: {len(running_load.operations)} operations"
    )
    assert sim.service_pid(REGISTRY_LAYOUT.registry_service) == registry_pid
    assert len(running_load.operations) >= 4 * CLIENTS
    assert_everything_pulls(stack, {**running_load.pushed, **_tagged(stack.pulled_images)})


def _tagged(images: dict[str, OciImage]) -> dict[str, OciImage]:
    return {f"{repository}:{image.tag}": image for repository, image in images.items()}


def test_a_registry_restart_fails_only_requests_in_flight_and_retries_succeed(
    stack: Stack,
) -> None:
    sim = stack.sim
    with load(stack, "restart") as running_load:
        running_load.wait_for_rounds()
        stopping = time.monotonic()
        sim.stop_service(REGISTRY_LAYOUT.registry_service)
        sim.start_service(REGISTRY_LAYOUT.registry_service)
        sim.wait_registry()
        ready = time.monotonic()
        # Every client's next operations go through.
        running_load.wait_for_rounds(2)
    failures = running_load.failures()
    outside = [op for op in failures if op.ended < stopping or op.started > ready]
    assert outside == [], outside[:3]
    print(
        f"\nregistry restart under {CLIENTS} clients: {len(running_load.operations)} operations,"
        f" {len(failures)} failed, all in the {ready - stopping:.2f} s restart window"
    )
    assert_everything_pulls(stack, {**running_load.pushed, **_tagged(stack.pulled_images)})
