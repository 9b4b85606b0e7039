"""Real clients against the simulated registry host: skopeo, podman, curl, openssl.

Credentials go to `login --password-stdin` and live in a per-user auth file; never on argv.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.realstack.hostsim import RegistryHostSim
from tests.realstack.oci import OciImage, layout_digests


def header_lines(raw: str, name: str) -> list[str]:
    """The lines of an HTTP response (`curl -i`) that carry header `name`."""
    return [line.rstrip("\r") for line in raw.splitlines()
            if line.lower().startswith(name.lower() + ":")]


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

    def login(self, user: str, password: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[bytes]:
        secret = self.sim.passwords[user] if password is None else password
        return self.sim.client("skopeo", "login", "--authfile", str(self.authfile(user)),
                               "--username", user, "--password-stdin", self.sim.address,
                               input=secret.encode(), check=check)

    def push(self, image: OciImage, repository: str, user: str) -> str:
        """Copy the layout to the registry; return the manifest digest skopeo wrote."""
        digest_file = self.workdir / f"digest-{repository.replace('/', '_')}-{image.tag}"
        self.sim.client("skopeo", "copy", "--quiet", "--dest-authfile", str(self.authfile(user)),
                        "--digestfile", str(digest_file), image.reference,
                        f"docker://{self.sim.address}/{repository}:{image.tag}")
        return digest_file.read_text().strip()

    def pull(self, repository: str, tag: str, user: str,
             destination: Path) -> tuple[str, tuple[str, ...]]:
        """Copy from the registry into a fresh OCI layout; return its verified digests."""
        self.sim.client("skopeo", "copy", "--quiet", "--src-authfile", str(self.authfile(user)),
                        f"docker://{self.sim.address}/{repository}:{tag}",
                        f"oci:{destination}:{tag}")
        return layout_digests(destination, tag)

    def raw_manifest_digest(self, repository: str, tag: str, user: str) -> str:
        result = self.sim.client("skopeo", "inspect", "--authfile", str(self.authfile(user)),
                                 f"docker://{self.sim.address}/{repository}:{tag}")
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

    def __call__(self, *args: str, input: bytes | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self.sim.client(
            "podman", "--root", str(self.workdir / "root"), "--runroot",
            str(self.runroot), "--storage-driver", "vfs", "--cgroup-manager",
            "cgroupfs", "--events-backend", "none", *args, input=input, check=check)

    @property
    def authfile(self) -> Path:
        return self.workdir / "auth.json"

    def login(self, user: str) -> subprocess.CompletedProcess[bytes]:
        return self("login", "--authfile", str(self.authfile), "--username", user,
                    "--password-stdin", self.sim.address,
                    input=self.sim.passwords[user].encode())
