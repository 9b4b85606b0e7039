"""Faults under load, on the real stack (the program's own files served by Debian's nginx and
registry, tests/realstack/hostsim.py): 32 clients push and pull while nginx reloads with a new
user, and while the registry restarts.

Each client is a loop of skopeo copies without retries (pushers: a new image each time; pullers:
their own image, digests checked), so a client's next copy is its retry. Every operation is
recorded with its start and end, so a failure can be placed against the fault's window.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

from components.manifest import REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.mocks import ProviderMocks
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, running, trusting_client_etc
from tests.realstack.oci import OciImage, build_image

pytestmark = pytest.mark.host

CLIENTS = 32
PUSHERS = CLIENTS // 2
LAYER_BYTES = 256 * 1024
BASE = {"users": ["ci"], "clientCount": 1}
WITH_BOB = {"users": ["ci", "bob"], "clientCount": 1}


@dataclass(frozen=True)
class Operation:
    client: int
    kind: str  # push | pull
    started: float
    ended: float
    error: str  # "" when it succeeded


@dataclass
class Load:
    """CLIENTS threads copying images in a loop until stopped."""

    sim: RegistryHostSim
    skopeo: Skopeo
    workdir: Path
    pulled_images: dict[str, OciImage]
    operations: list[Operation] = field(default_factory=list)
    pushed: dict[str, OciImage] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    _sequence: Iterator[int] = field(default_factory=count)

    def _copy(self, source: str, destination: str, user: str = "ci") -> str:
        authfile = str(self.skopeo.authfile(user))
        result = self.skopeo(
            "copy",
            "--quiet",
            "--retry-times",
            "0",
            "--src-authfile",
            authfile,
            "--dest-authfile",
            authfile,
            source,
            destination,
            check=False,
        )
        return "" if result.returncode == 0 else result.stderr.decode().strip()

    def _push_once(self, client: int) -> str:
        number = next(self._sequence)
        repository = f"load/pusher{client}"
        image = build_image(
            self.workdir / f"push-{number}", f"v{number}", [LAYER_BYTES], seed=f"load-{number}"
        )
        error = self._copy(image.reference, f"docker://{self.sim.address}/{repository}:v{number}")
        if not error:
            self.pushed[f"{repository}:v{number}"] = image
        shutil.rmtree(self.workdir / f"push-{number}")
        return error

    def _pull_once(self, client: int) -> str:
        repository = f"load/puller{client}"
        image = self.pulled_images[repository]
        destination = self.workdir / f"pull-{next(self._sequence)}"
        error = self._copy(
            f"docker://{self.sim.address}/{repository}:{image.tag}", f"oci:{destination}:v1"
        )
        shutil.rmtree(destination, ignore_errors=True)
        return error

    def _client(self, client: int) -> None:
        kind = "push" if client < PUSHERS else "pull"
        while not self.stop.is_set():
            started = time.monotonic()
            error = self._push_once(client) if kind == "push" else self._pull_once(client)
            self.operations.append(Operation(client, kind, started, time.monotonic(), error))

    def completed_by_each(self) -> list[int]:
        done = [0] * CLIENTS
        for operation in list(self.operations):
            if not operation.error:
                done[operation.client] += 1
        return done

    def wait_for_rounds(self, rounds: int = 1, timeout: float = 120) -> None:
        """Until every client has completed `rounds` more operations."""
        target = [done + rounds for done in self.completed_by_each()]
        deadline = time.monotonic() + timeout
        while any(done < want for done, want in zip(self.completed_by_each(), target, strict=True)):
            assert time.monotonic() < deadline, f"clients stalled: {self.completed_by_each()}"
            time.sleep(0.1)

    def failures(self) -> list[Operation]:
        return [operation for operation in self.operations if operation.error]

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)


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
        pulled_images = {}
        for client in range(PUSHERS, CLIENTS):
            image = build_image(
                workdir / f"pulled-{client}", "v1", [LAYER_BYTES], seed=f"pulled-{client}"
            )
            repository = f"load/puller{client}"
            assert skopeo.push(image, repository, "ci") == image.manifest_digest
            pulled_images[repository] = image
        yield Stack(sim, skopeo, workdir, base, with_bob, pulled_images)


def load(stack: Stack, name: str) -> Load:
    directory = stack.workdir / name
    directory.mkdir()
    return Load(stack.sim, stack.skopeo, directory, stack.pulled_images)


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
