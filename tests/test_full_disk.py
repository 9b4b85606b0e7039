"""A full data volume, on the real stack: the program's own files served by Debian's nginx and
registry (tests/realstack/hostsim.py) with the data volume a small ext4 file system on a loop
device, as the host scripts see a DigitalOcean volume. Pushes go on until the volume is full.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.manifest import REGISTRY_HOST, REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, running, trusting_client_etc
from tests.realstack.oci import OciImage, build_image

pytestmark = pytest.mark.host

VOLUME_MIB = 48
LAYER_MIB = 6
# A push that fails must fail, not hang: well under this.
PUSH_TIMEOUT_S = 60


@dataclass
class LoopVolume:
    """An ext4 file system in a file, on a loop device, mounted at `mount_point` (a directory of
    the test's own)."""

    image: Path
    mount_point: Path
    device: str = ""

    def __enter__(self) -> LoopVolume:
        with self.image.open("wb") as image:
            image.truncate(VOLUME_MIB << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        self.device = subprocess.run(
            ["losetup", "-f", "--show", str(self.image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", self.device, str(self.mount_point)], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mount_point)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)

    def available_bytes(self) -> int:
        stat = os.statvfs(self.mount_point)
        return stat.f_bavail * stat.f_frsize


@dataclass
class Response:
    status: int
    body: str


@dataclass
class Stack:
    sim: RegistryHostSim
    skopeo: Skopeo
    volume: LoopVolume
    workdir: Path

    def request(self, user: str, method: str, path: str) -> Response:
        """`curl -X METHOD https://<registry>/v2/<path>` as a user (credentials on stdin)."""
        result = self.sim.client(
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-X",
            method,
            "-K",
            "-",
            "-w",
            "\\n%{http_code}",
            f"https://{self.sim.address}/v2/{path}",
            input=f'user = "{user}:{self.sim.passwords[user]}"\n'.encode(),
            check=False,
        )
        body, _, status = result.stdout.decode().rpartition("\n")
        return Response(int(status), body)

    def push(self, image: OciImage, repository: str) -> subprocess.CompletedProcess[bytes]:
        return self.sim.client(
            "timeout",
            str(PUSH_TIMEOUT_S),
            *self.skopeo.copy_argv(
                "ops",
                image.reference,
                f"docker://{self.sim.address}/{repository}:{image.tag}",
                "--retry-times",
                "0",
            ),
            check=False,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("full-disk")
    program: ProgramRun = run_program(overrides={"users": ["ci", "ops:admin"], "clientCount": 1})
    # Mounted before the sim lays out its directories on it.
    with LoopVolume(workdir / "volume.img", workdir / "host" / "data-volume") as volume:
        sim = RegistryHostSim(program, workdir / "host")
        assert sim.data_dir == volume.mount_point
        sim.set_client_etc(trusting_client_etc(program, workdir / "client-root"))
        with running(sim):
            skopeo = Skopeo.logged_in(sim, workdir / "skopeo")
            yield Stack(sim, skopeo, volume, workdir)


def run_disk_check(stack: Stack) -> str:
    """The placed registry-disk.sh on the simulated host, with the full volume at the data
    mount; its output is the journal line."""
    volume = shlex.quote(str(stack.volume.mount_point))
    result = stack.sim.run_disk_check(f"mount --bind {volume} {REGISTRY_LAYOUT.data_mount}")
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    return output


def collect_garbage(stack: Stack) -> None:
    """What registry-gc.sh does, on the real registry binary: the registry stopped, then
    garbage-collect on its own config and storage, then started again."""
    sim = stack.sim
    sim.stop_service(REGISTRY_LAYOUT.registry_service)
    config = sim.files.host_path(REGISTRY_HOST.file("registry_config").path)
    subprocess.run(
        ["env", "-u", "AWS_CA_BUNDLE", "docker-registry", "garbage-collect", str(config)],
        env={
            **os.environ,
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(
                sim.data_path(REGISTRY_LAYOUT.data_dir)
            ),
        },
        check=True,
        capture_output=True,
    )
    sim.start_service(REGISTRY_LAYOUT.registry_service)
    sim.wait_registry()


def unfinished_uploads(stack: Stack) -> int:
    """Bytes the registry holds in upload sessions (`_uploads`, purged after a week)."""
    repositories = stack.sim.data_path(REGISTRY_LAYOUT.data_dir) / "docker/registry/v2/repositories"
    return sum(
        path.stat().st_size for path in repositories.glob("**/_uploads/**/*") if path.is_file()
    )


def test_a_full_volume_fails_pushes_fast_with_registry_errors_and_keeps_serving_pulls(
    stack: Stack,
) -> None:
    pushed: list[tuple[str, OciImage]] = []
    failed: list[str] = []
    failed_seconds: list[float] = []
    for index in range(VOLUME_MIB // LAYER_MIB + 2):
        image = build_image(
            stack.workdir / f"image{index}", "v1", [LAYER_MIB << 20], seed=f"full-{index}"
        )
        repository = f"fill/image{index}"
        started = time.monotonic()
        result = stack.push(image, repository)
        took = time.monotonic() - started
        assert took < PUSH_TIMEOUT_S / 2, (repository, took)
        if result.returncode == 0:
            assert not failed, f"{repository} pushed after an earlier push failed on a full disk"
            pushed.append((repository, image))
        else:
            failed.append(result.stderr.decode())
            failed_seconds.append(took)
    assert len(pushed) >= 3 and len(failed) >= 2, (len(pushed), failed)
    assert stack.volume.available_bytes() < LAYER_MIB << 20

    # Each failure is the registry's own error, not the front's: nginx answered the failed
    # uploads with the registry's 500 and its JSON error body, never a 502 or 504.
    for stderr in failed:
        assert "500 Internal Server Error" in stderr, stderr
    start = stack.request("ops", "POST", "fill/one-more/blobs/uploads/")
    assert start.status == 500, start
    assert [error["code"] for error in json.loads(start.body)["errors"]] == ["UNKNOWN"], start
    deadline = time.monotonic() + 15  # nginx flushes its access log every 5 s
    while True:
        statuses = {
            entry["status"]
            for entry in stack.sim.access_log()
            if entry["repository"].startswith("fill/") and entry["status"] >= 500
        }
        if statuses or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert statuses == {500}, statuses

    # Everything pushed before still pulls, by digest, byte for byte.
    for repository, image in pushed:
        pulled = stack.workdir / f"pulled-{repository.replace('/', '-')}"
        digests = stack.skopeo.pull(repository, image.tag, "ci", pulled)
        assert digests == (image.manifest_digest, image.layer_digests), repository

    journal = run_disk_check(stack)
    assert "registry-disk: WARNING: data volume /srv/registry is 100% full" in journal, journal

    # The way out: delete an image, collect garbage; the next push goes through.
    leftover = unfinished_uploads(stack)
    doomed_repository, doomed = pushed[0]
    response = stack.sim.client(
        *stack.skopeo.argv(
            "delete",
            "--authfile",
            str(stack.skopeo.authfile("ops")),
            f"docker://{stack.sim.address}/{doomed_repository}@{doomed.manifest_digest}",
        ),
        check=False,
    )
    assert response.returncode == 0, response.stderr.decode()
    full = stack.volume.available_bytes()
    collect_garbage(stack)
    freed = stack.volume.available_bytes() - full
    assert freed > 0
    # Half a layer: the failed uploads' partial data stays until the registry purges them, and
    # ext4's 5% root reserve (which the registry, as root, had used up) is refilled first.
    after = build_image(stack.workdir / "after", "v1", [(LAYER_MIB << 20) // 2], seed="after")
    result = stack.push(after, "fill/after-gc")
    assert result.returncode == 0, result.stderr.decode()
    print(
        f"\nfull disk: {len(pushed)} pushes stored, {len(failed)} failed in at most "
        f"{max(failed_seconds):.2f} s each; unfinished uploads left: {leftover} bytes; "
        f"freed by delete and garbage collection: {freed} bytes"
    )
