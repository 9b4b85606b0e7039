"""Real clients against the simulated registry host: skopeo, podman, curl, openssl.

Credentials go to `login --password-stdin` and live in a per-user auth file; never on argv.
skopeo and podman run with the machine-wide state they would write kept private (see
`with_private_state`), so a test run leaves nothing in /run, /dev/shm, /var/lib or /var/tmp.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.realstack.hostsim import RegistryHostSim
from tests.realstack.oci import OciImage, layout_digests


def header_lines(raw: str, name: str) -> list[str]:
    """The lines of an HTTP response (`curl -i`) that carry header `name`."""
    return [
        line.rstrip("\r")
        for line in raw.splitlines()
        if line.lower().startswith(name.lower() + ":")
    ]


def with_private_state(big_files: Path, argv: Sequence[str]) -> list[str]:
    """argv, run so that what containers/image and libpod write outside their `--root` stays
    private: /run (libpod's tmp dir, /run/containers), /dev/shm (libpod's lock), /var/lib
    (the blob-info cache in /var/lib/containers/cache) on throwaway tmpfs, and big temporary
    files (/var/tmp) in `big_files`. Only for the sim's client commands, which run in a mount
    namespace of their own (`ip netns exec`), so none of it reaches the machine.

    A fresh blob-info cache per command also means every push really uploads its layers
    (containers/image would otherwise mount a blob it has seen from another repository)."""
    big_files.mkdir(parents=True, exist_ok=True)
    script = " && ".join(
        [
            *(
                f"mount -t tmpfs -o mode=0755 tmpfs {path}"
                for path in ("/run", "/dev/shm", "/var/lib")
            ),
            f"mount --bind {shlex.quote(str(big_files))} /var/tmp",
            'exec "$@"',
        ]
    )
    return ["bash", "-c", script, "private-state", *argv]


class Skopeo:
    @classmethod
    def logged_in(cls, sim: RegistryHostSim, workdir: Path) -> Skopeo:
        """A skopeo client with every generated user logged in (an auth file each)."""
        client = cls(sim, workdir)
        for user in sim.passwords:
            client.login(user)
        return client

    def __init__(self, sim: RegistryHostSim, workdir: Path) -> None:
        self.sim = sim
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def authfile(self, user: str) -> Path:
        return self.workdir / f"auth-{user}.json"

    def argv(self, *args: str) -> list[str]:
        """A skopeo command line as `sim.client` or `sim.client_argv` take it."""
        return with_private_state(self.workdir / "tmp", ["skopeo", *args])

    def __call__(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return self.sim.client(*self.argv(*args), input=input, check=check)

    def copy_argv(self, user: str, source: str, destination: str, *options: str) -> list[str]:
        """`skopeo copy --quiet` as `user` (its auth file for both ends)."""
        authfile = str(self.authfile(user))
        return self.argv(
            "copy",
            "--quiet",
            *options,
            "--src-authfile",
            authfile,
            "--dest-authfile",
            authfile,
            source,
            destination,
        )

    def copy(
        self, user: str, source: str, destination: str, *options: str
    ) -> subprocess.CompletedProcess[bytes]:
        """`copy_argv` run in the client; the caller checks the outcome."""
        return self.sim.client(*self.copy_argv(user, source, destination, *options), check=False)

    def login(
        self, user: str, password: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        secret = self.sim.passwords[user] if password is None else password
        return self(
            "login",
            "--authfile",
            str(self.authfile(user)),
            "--username",
            user,
            "--password-stdin",
            self.sim.address,
            input=secret.encode(),
            check=check,
        )

    def push(self, image: OciImage, repository: str, user: str) -> str:
        """Copy the layout to the registry; return the manifest digest skopeo wrote."""
        digest_file = self.workdir / f"digest-{repository.replace('/', '_')}-{image.tag}"
        destination = f"docker://{self.sim.address}/{repository}:{image.tag}"
        self.sim.client(
            *self.copy_argv(user, image.reference, destination, "--digestfile", str(digest_file))
        )
        return digest_file.read_text().strip()

    def pull(
        self, repository: str, tag: str, user: str, destination: Path
    ) -> tuple[str, tuple[str, ...]]:
        """Copy from the registry into a fresh OCI layout; return its verified digests."""
        source = f"docker://{self.sim.address}/{repository}:{tag}"
        self.sim.client(*self.copy_argv(user, source, f"oci:{destination}:{tag}"))
        return layout_digests(destination, tag)

    def raw_manifest_digest(self, repository: str, tag: str, user: str) -> str:
        result = self(
            "inspect",
            "--authfile",
            str(self.authfile(user)),
            f"docker://{self.sim.address}/{repository}:{tag}",
        )
        return json.loads(result.stdout)["Digest"]


class Podman:
    """Daemonless podman with private storage (vfs) and no cgroups or events."""

    def __init__(self, sim: RegistryHostSim, workdir: Path) -> None:
        self.sim = sim
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot path longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix="podman-run-", dir="/tmp"))

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def __call__(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return self.sim.client(
            *with_private_state(
                self.workdir / "tmp",
                [
                    "podman",
                    "--root",
                    str(self.workdir / "root"),
                    "--runroot",
                    str(self.runroot),
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "none",
                    *args,
                ],
            ),
            input=input,
            check=check,
        )

    @property
    def authfile(self) -> Path:
        return self.workdir / "auth.json"

    def login(self, user: str) -> subprocess.CompletedProcess[bytes]:
        return self(
            "login",
            "--authfile",
            str(self.authfile),
            "--username",
            user,
            "--password-stdin",
            self.sim.address,
            input=self.sim.passwords[user].encode(),
        )
