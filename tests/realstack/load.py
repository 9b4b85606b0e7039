"""A steady load of real clients on a simulated registry host, for fault tests and the soak.

`Load` runs `clients` threads, each a loop of skopeo copies without retries: the first half push
a new image each time, the second half pull an image of their own (skopeo checks every digest).
So a client's next copy is its retry. Every operation is recorded with its start and end, so a
failure can be placed against a fault's window.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim
from tests.realstack.oci import OciImage, build_image

LAYER_BYTES = 256 * 1024


@dataclass(frozen=True)
class Operation:
    client: int
    kind: str  # push | pull
    started: float
    ended: float
    error: str  # "" when it succeeded


def pulled_images(skopeo: Skopeo, workdir: Path, clients: int, user: str) -> dict[str, OciImage]:
    """Push the pullers' images (clients//2 .. clients-1): repository -> image."""
    images = {}
    for client in range(clients // 2, clients):
        image = build_image(
            workdir / f"pulled-{client}", "v1", [LAYER_BYTES], seed=f"pulled-{client}"
        )
        repository = f"load/puller{client}"
        assert skopeo.push(image, repository, user) == image.manifest_digest
        images[repository] = image
    return images


@dataclass
class Load:
    """Start with `with Load(...) as load:`; the threads stop when the block ends."""

    sim: RegistryHostSim
    skopeo: Skopeo
    workdir: Path
    pulled: dict[str, OciImage]  # from `pulled_images`, for as many clients
    user: str
    operations: list[Operation] = field(default_factory=list)
    pushed: dict[str, OciImage] = field(default_factory=dict)  # "repository:tag" -> image
    stop: threading.Event = field(default_factory=threading.Event)
    _sequence: count[int] = field(default_factory=count)

    @property
    def clients(self) -> int:
        return 2 * len(self.pulled)

    def _copy(self, source: str, destination: str) -> str:
        result = self.skopeo.copy(self.user, source, destination, "--retry-times", "0")
        return "" if result.returncode == 0 else result.stderr.decode().strip()

    def _push_once(self, client: int) -> str:
        number = next(self._sequence)
        repository = f"load/pusher{client}"
        layout = self.workdir / f"push-{number}"
        image = build_image(layout, f"v{number}", [LAYER_BYTES], seed=f"load-{number}")
        error = self._copy(image.reference, f"docker://{self.sim.address}/{repository}:v{number}")
        if not error:
            self.pushed[f"{repository}:v{number}"] = image
        shutil.rmtree(layout)
        return error

    def _pull_once(self, client: int) -> str:
        repository = f"load/puller{client}"
        image = self.pulled[repository]
        destination = self.workdir / f"pull-{next(self._sequence)}"
        error = self._copy(
            f"docker://{self.sim.address}/{repository}:{image.tag}", f"oci:{destination}:v1"
        )
        shutil.rmtree(destination, ignore_errors=True)
        return error

    def _client(self, client: int) -> None:
        kind = "push" if client < self.clients // 2 else "pull"
        while not self.stop.is_set():
            started = time.monotonic()
            error = self._push_once(client) if kind == "push" else self._pull_once(client)
            self.operations.append(Operation(client, kind, started, time.monotonic(), error))

    def completed_by_each(self) -> list[int]:
        done = [0] * self.clients
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.threads = [
            threading.Thread(target=self._client, args=(client,)) for client in range(self.clients)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)
