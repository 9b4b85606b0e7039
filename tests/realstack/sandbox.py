"""A private view of this machine's file system, for running what a host would run.

`Sandbox(directory)` runs a bash script in private mount and PID namespaces (and, if asked, a
private network namespace) where each of `ROOTS` is an overlay whose upper layer lives in
`directory`: whatever the script writes there lands in `sandbox.upper(path)`, the real system is
never touched, and no process outlives the script. The layers persist from one script to the
next, as a host's disk does, so a sandbox is one simulated host.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.harness import Registration

# Everything the program's commands and the tested tools write to (the client's trust script
# runs update-ca-certificates, whose hooks write /var/lib as well as /etc).
ROOTS = ("/etc", "/root", "/var/cache", "/var/lib", "/usr/local/share/ca-certificates")


def overlay_mount(root: str, upper: Path, work: Path, target: str | None = None) -> str:
    """The shell command that overlays `root` with `upper` (changes land there), mounted on
    `target` (default: over `root` itself)."""
    return (
        f"mount -t overlay overlay -o lowerdir={shlex.quote(root)},"
        f"upperdir={shlex.quote(str(upper))},workdir={shlex.quote(str(work))} "
        f"{shlex.quote(target or root)}"
    )


class Sandbox:
    """One simulated host's writable file system: overlays of `ROOTS` kept in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def root_of(path: str) -> str:
        roots = [root for root in ROOTS if path.startswith(root + "/")]
        if not roots:
            raise AssertionError(f"{path} is not under any of {ROOTS}")
        return max(roots, key=len)

    @staticmethod
    def covers(path: str) -> bool:
        return any(path.startswith(root + "/") for root in ROOTS)

    def _layer(self, root: str, kind: str) -> Path:
        return self.directory / f"{root.strip('/').replace('/', '-')}-{kind}"

    def upper(self, path: str) -> Path:
        """Where a write to `path` (a root or a path under one) lands."""
        if path in ROOTS:
            return self._layer(path, "upper")
        root = self.root_of(path)
        return self._layer(root, "upper") / path.removeprefix(root + "/")

    def run(
        self,
        script: str,
        stdin: bytes | None = None,
        files: Mapping[str, str] | None = None,
        directories: Mapping[str, int] | None = None,
        network: bool = False,
        timeout: float = 120,
        netns: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `script` with `bash -c` in the sandbox; `files` (path -> text) and `directories`
        (path -> mode) are put in the upper layers first. /run is a private tmpfs (`nginx -t`
        writes its pid file there). Without root, in a user namespace in which this user is root
        (enough for the mounts; files then belong to this user). With `netns`, in that named
        network namespace (as root)."""
        for path, mode in (directories or {}).items():
            self.upper(path).mkdir(parents=True, exist_ok=True)
            self.upper(path).chmod(mode)
        for path, text in (files or {}).items():
            self.upper(path).parent.mkdir(parents=True, exist_ok=True)
            self.upper(path).write_text(text)
        mounts = []
        for root in ROOTS:
            upper, work = self._layer(root, "upper"), self._layer(root, "work")
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            mounts.append(overlay_mount(root, upper, work))
        preamble = [
            "set -euo pipefail",
            *mounts,
            "mount -t tmpfs tmpfs /run",
            *(["ip link set lo up"] if network else []),
        ]
        # The script runs as its own `bash -c`, exactly as sshd would run a command's text.
        unshare = [
            "unshare",
            *(["--user", "--map-root-user"] if os.geteuid() != 0 else []),
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            *(["--net"] if network else []),
        ]
        return subprocess.run(
            [
                *(["ip", "netns", "exec", netns] if netns else []),
                *unshare,
                "bash",
                "-c",
                "\n".join([*preamble, 'exec bash -c "$1"']),
                "sandbox",
                script,
            ],
            input=b"" if stdin is None else stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def run_command(self, registration: Registration) -> subprocess.CompletedProcess[bytes]:
        """Run a recorded remote command (its `create` text, its stdin) as SSH would."""
        return self.run(
            registration.inputs["create"], stdin=str(registration.inputs.get("stdin", "")).encode()
        )


def mapped_accounts(accounts: Mapping[str, str]) -> dict[str, str]:
    """/etc/passwd and /etc/group texts for a sandbox: without root, its user namespace maps only
    id 0, so the `nginx` user (whose id nginx chowns its temp paths to) becomes id 0."""
    if os.geteuid() == 0:
        return dict(accounts)
    mapped = {}
    for path, text in accounts.items():
        lines = []
        for line in text.splitlines():
            fields = line.split(":")
            if fields[0] == "nginx":
                ids = 2 if path == "/etc/passwd" else 1  # name:x:uid:gid:... or name:x:gid:...
                fields[2 : 2 + ids] = ["0"] * ids
            lines.append(":".join(fields) + "\n")
        mapped[path] = "".join(lines)
    return mapped
