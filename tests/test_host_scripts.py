"""The host scripts in files/scripts, run for real on this machine (as root).

- The data volume: a loop device stands in for the DigitalOcean volume (its /dev/disk/by-id
  link is a symlink in a test directory, `VOLUME_DEVICE_DIR`), and the scripts run in a private
  mount namespace whose /etc is an overlay, so /etc/fstab, mounts and units are the test's own.
- apt: the real apt-get against a private root (`APT_CONFIG` with `Dir`, `DPKG_ADMINDIR` for
  dpkg-query), so the locks it waits for are real apt locks on files in the test's directory and
  the machine's package database is never touched.
- The client's trust: the real script in a private /etc; a reboot is cloud-init rendering
  /etc/hosts from its template as cloud-init does, then `getent hosts` in the namespace.
- What cannot run here (systemd as PID 1, dockerd, a registry to curl) is replaced by PATH
  stand-ins that record every call and answer from a state directory (see `STANDIN`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pytest

from components.manifest import REGISTRY_HOST, REGISTRY_LAYOUT
from tests.harness import ProgramRun

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "files" / "scripts"
MiB = 1 << 20
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# One program behind every stand-in command (named by its first argument). It appends each
# call, as JSON [command, args..., {"stdin": ...}] for `docker login`, to STATE/calls, and
# answers from files in STATE:
#   systemctl: `active` and `units` (one unit a line); start/stop edit `active`; `cat` succeeds
#     for a unit in `units`; start/reload of docker.service sets `live-restore` to what
#     `daemon-live-restore` says (what dockerd reads from daemon.json; default true).
#   docker: `info` prints `live-restore`; `compose ... ps|logs` print a marker; `image inspect`
#     prints `push-digest`, then `pull-digest` once `pull` ran.
#   curl: prints the next status of `statuses` (space separated; the last one repeats).
#   mkfs*, mke2fs: fail (nothing here may format a volume).
STANDIN = r"""
import json, os, sys
from pathlib import Path

state = Path(os.environ["STANDIN_STATE"])
command, args = sys.argv[1], sys.argv[2:]
record = [command, *args]
if command == "docker" and args[:1] == ["login"]:
    record.append({"stdin": sys.stdin.read()})
with open(state / "calls", "a") as calls:
    calls.write(json.dumps(record) + "\n")


def lines(name):
    path = state / name
    return path.read_text().split() if path.exists() else []


def read(name, default=""):
    path = state / name
    return path.read_text().strip() if path.exists() else default


if command == "systemctl":
    verb, units = args[0], [a for a in args[1:] if not a.startswith("-")]
    active = lines("active")
    if verb == "is-active":
        sys.exit(0 if units[0] in active else 3)
    if verb == "cat":
        sys.exit(0 if units[0] in lines("units") else 1)
    if verb in ("start", "reload") and "docker.service" in units:
        (state / "live-restore").write_text(read("daemon-live-restore", "true"))
    if verb == "start":
        active += [u for u in units if u not in active]
    if verb == "stop":
        active = [u for u in active if u not in units]
    (state / "active").write_text("\n".join(active))
elif command == "docker":
    if args[0] == "info":
        print(read("live-restore", "false"))
    elif args[0] == "compose":
        print(f"STANDIN compose {'ps' if 'ps' in args else 'logs'} of {args[2]}")
    elif args[:2] == ["image", "inspect"]:
        pulled = (state / "pulled").exists()
        print(read("pull-digest" if pulled else "push-digest"))
    elif args[0] == "pull":
        (state / "pulled").write_text("yes")
elif command == "curl":
    statuses = lines("statuses")
    print(statuses[0], end="")
    if len(statuses) > 1:
        (state / "statuses").write_text(" ".join(statuses[1:]))
elif command.startswith("mk"):
    print(f"STANDIN {command}: formatting is not allowed here", file=sys.stderr)
    sys.exit(1)
"""
STANDIN_COMMANDS = ("systemctl", "docker", "curl", "mkfs", "mkfs.ext4", "mke2fs")


@dataclass
class Standins:
    """PATH stand-ins (`bin`) and their state and call log (`state`)."""

    bin: Path
    state: Path

    def set(self, **files: str) -> None:
        for name, text in files.items():
            (self.state / name.replace("_", "-")).write_text(text)

    def calls(self, command: str | None = None) -> list[list[str]]:
        path = self.state / "calls"
        found = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        return [call for call in found if command is None or call[0] == command]

    def reset_calls(self) -> None:
        (self.state / "calls").unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:{SYSTEM_PATH}", "STANDIN_STATE": str(self.state)}


@pytest.fixture
def standins(tmp_path: Path) -> Standins:
    found = Standins(tmp_path / "standin-bin", tmp_path / "standin-state")
    found.bin.mkdir()
    found.state.mkdir()
    program = found.bin / "standin.py"
    program.write_text(STANDIN)
    for name in STANDIN_COMMANDS:
        wrapper = found.bin / name
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {program} {name} "$@"\n')
        wrapper.chmod(0o755)
    return found


def run_script(
    name: str, *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a host script as the remote command does (`bash -s -- ARGS`, the script on stdin)."""
    return subprocess.run(
        ["bash", "-s", "--", *args],
        input=(SCRIPTS / name).read_text(),
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )


# -- a private mount namespace with its own /etc ----------------------------------------------
class Namespace:
    """A mount namespace kept alive by a sleeping process, whose /etc is an overlay (changes
    land in `etc_upper`). Commands enter it with nsenter; closing it drops every mount in it."""

    def __init__(self, workdir: Path) -> None:
        self.etc_upper = workdir / "etc-upper"
        work = workdir / "etc-work"
        self.etc_upper.mkdir(parents=True)
        work.mkdir()
        overlay = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={self.etc_upper},"
            f"workdir={work} /etc"
        )
        self.process = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                f"{overlay} && echo ready && exec sleep infinity",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10)
        if not ready or self.process.stdout.readline() != b"ready\n":
            self.close()
            assert self.process.stderr is not None
            raise AssertionError(f"no namespace: {self.process.stderr.read()!r}")

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.process.pid), "-m", "--", *argv]

    def sh(
        self,
        command: str,
        input: str = "",
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(["bash", "-c", command]),
            input=input,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": SYSTEM_PATH, **(env or {})},
        )
        if check:
            assert result.returncode == 0, f"{command}: {result.stderr}"
        return result

    def script(
        self, name: str, *args: str, env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(["bash", "-s", "--", *args]),
            input=(SCRIPTS / name).read_text(),
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=180,
            check=False,
        )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


# -- the data volume --------------------------------------------------------------------------
VOLUME_NAME = "test-stack-data"


@dataclass
class Volume:
    """A loop device standing in for the DigitalOcean volume, linked where the droplet has it."""

    image: Path
    by_id: Path
    device: str = ""
    devices: list[str] = field(default_factory=list)

    @property
    def link(self) -> Path:
        return self.by_id / f"scsi-0DO_Volume_{VOLUME_NAME}"

    def attach(self) -> str:
        self.device = subprocess.run(
            ["losetup", "-f", "--show", str(self.image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.devices.append(self.device)
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(self.device)
        return self.device

    def detach(self) -> None:
        """`losetup -d`, then check the device is really gone: a device still mounted
        somewhere would only be marked to go later."""
        subprocess.run(["losetup", "-d", self.device], check=True, capture_output=True)
        name = Path(self.device).name
        deadline = time.monotonic() + 5
        while (Path("/sys/block") / name / "loop").exists():
            assert time.monotonic() < deadline, f"{self.device} stays attached: still in use"
            time.sleep(0.05)
        self.devices.remove(self.device)
        self.device = ""

    def grow(self, size: int) -> None:
        os.truncate(self.image, size)
        subprocess.run(["losetup", "-c", self.device], check=True)

    def release_all(self) -> None:
        for device in self.devices:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@dataclass
class VolumeHost:
    """A registry host for the volume scripts: namespace, volume, stand-ins, paths."""

    ns: Namespace
    volume: Volume
    standins: Standins
    mount_point: Path
    data_dir: Path
    workdir: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.standins.env(),
            "VOLUME_DEVICE_DIR": str(self.volume.by_id),
            "BLKID_FILE": str(self.workdir / "blkid.tab"),
            **extra,
        }

    def mount(self) -> subprocess.CompletedProcess[str]:
        return self.ns.script(
            "mount-data-volume.sh",
            VOLUME_NAME,
            str(self.mount_point),
            str(self.data_dir),
            env=self.env(),
        )

    def release(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.ns.script(
            "release-data-volume.sh", str(self.mount_point), env=self.env(**extra)
        )

    def mounts_of_volume(self) -> list[str]:
        return self.ns.sh(
            f"findmnt -rn -o TARGET --source {self.volume.device} || true"
        ).stdout.split()

    def fstab(self) -> str:
        return self.ns.sh("cat /etc/fstab").stdout

    def uuid(self) -> str:
        return subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "UUID", self.volume.device],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()


def format_like_digitalocean(image: Path) -> None:
    """What DigitalOcean does once, at creation (`initial_filesystem_type` ext4)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "registry-data", str(image)], check=True)


@pytest.fixture
def volume_host(tmp_path: Path, standins: Standins) -> Iterator[VolumeHost]:
    image = tmp_path / "volume.img"
    image.touch()
    os.truncate(image, 64 * MiB)
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    volume = Volume(image, by_id)
    with ExitStack() as cleanup:
        cleanup.callback(volume.release_all)  # runs last: after the namespace is gone
        ns = Namespace(tmp_path)
        cleanup.callback(ns.close)
        volume.attach()
        yield VolumeHost(
            ns,
            volume,
            standins,
            tmp_path / "srv" / "registry",
            tmp_path / "srv" / "registry" / "data",
            tmp_path,
        )


def write_data(host: VolumeHost, name: str = "blob", size: int = 2 * MiB) -> str:
    """A file with random content on the volume; returns its sha256."""
    data = os.urandom(size)
    host.ns.sh(f"cat > {host.data_dir / name}; sync", input=data.hex())
    return hashlib.sha256(data.hex().encode()).hexdigest()


def data_hash(host: VolumeHost, name: str = "blob") -> str:
    return host.ns.sh(f"sha256sum {host.data_dir / name}").stdout.split()[0]


def formatting_calls(standins: Standins) -> list[list[str]]:
    return [call for call in standins.calls() if call[0].startswith("mk")]


def test_mount_first_run_mounts_by_uuid_in_fstab_and_a_rerun_changes_nothing(
    volume_host: VolumeHost,
) -> None:
    host = volume_host
    format_like_digitalocean(host.volume.image)
    first = host.mount()
    assert first.returncode == 0, first.stderr
    assert host.mounts_of_volume() == [str(host.mount_point)]
    uuid = host.uuid()
    # In fstab by UUID with nofail: a reboot mounts it again (before registry.service, whose
    # RequiresMountsFor names this mount point), and a missing volume does not block the boot.
    ours = [line for line in host.fstab().splitlines() if str(host.mount_point) in line]
    assert ours == [f"UUID={uuid} {host.mount_point} ext4 defaults,nofail,discard,noatime 0 2"]
    assert ["systemctl", "daemon-reload"] in host.standins.calls()
    digest = write_data(host)
    fstab = host.fstab()

    host.standins.reset_calls()
    second = host.mount()
    assert second.returncode == 0, second.stderr
    assert host.fstab() == fstab
    assert host.standins.calls() == []  # no daemon-reload, no unit touched
    assert "mounting" not in second.stdout and "growing" not in second.stdout
    assert host.mounts_of_volume() == [str(host.mount_point)]
    assert data_hash(host) == digest
    assert formatting_calls(host.standins) == []

    # A reboot: nothing mounted, the fstab entry alone brings the data back.
    host.ns.sh(
        f"umount {host.mount_point} && mount {host.mount_point}",
        env={"BLKID_FILE": str(host.workdir / "blkid.tab")},
    )
    assert data_hash(host) == digest


def test_mount_refuses_a_device_without_a_filesystem_and_never_formats_it(
    volume_host: VolumeHost,
) -> None:
    host = volume_host
    fstab = host.fstab()
    result = host.mount()
    assert result.returncode != 0
    assert "has no filesystem" in result.stderr and "Refusing to format" in result.stderr
    assert formatting_calls(host.standins) == []
    assert host.volume.image.read_bytes() == bytes(64 * MiB), "the blank volume was written to"
    assert host.fstab() == fstab
    assert host.mounts_of_volume() == []


# Growing a mounted ext4 (the EXT4_IOC_RESIZE_FS ioctl) needs CAP_SYS_RESOURCE, which a droplet's
# root has and this machine's root may lack (its bounding set drops it). Without it, a stand-in
# resize2fs checks it is given the volume's device while mounted, as on the droplet, then does
# the same growth offline (unmount, e2fsck -f, the real resize2fs, mount); the rest is real.
CAP_SYS_RESOURCE = 24
RESIZE2FS_OFFLINE = r"""#!/usr/bin/env bash
set -euo pipefail
echo "[\"resize2fs\", \"$*\"]" >>"$STANDIN_STATE/calls"
[[ $# -eq 1 && -b "$1" ]] || { echo "resize2fs stand-in: want one block device: $*" >&2; exit 2; }
target="$(findmnt -rn -o TARGET --source "$(readlink -f "$1")")"
[[ -n "$target" ]] || { echo "resize2fs stand-in: $1 is not mounted (not online)" >&2; exit 2; }
umount "$target"
e2fsck -f -y "$1" >/dev/null
/sbin/resize2fs "$1"
mount "$target"
"""


def online_resize_possible() -> bool:
    effective = next(
        line
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("CapEff:")
    )
    return bool(int(effective.split()[1], 16) >> CAP_SYS_RESOURCE & 1)


def test_mount_keeps_a_volume_with_data_and_grows_its_filesystem_online(
    volume_host: VolumeHost,
) -> None:
    host = volume_host
    if not online_resize_possible():
        (host.standins.bin / "resize2fs").write_text(RESIZE2FS_OFFLINE)
        (host.standins.bin / "resize2fs").chmod(0o755)
    format_like_digitalocean(host.volume.image)
    assert host.mount().returncode == 0
    digest = write_data(host)

    def size_kib() -> int:
        return int(host.ns.sh(f"df --output=size -k {host.mount_point} | tail -n 1").stdout)

    before = size_kib()
    host.volume.grow(160 * MiB)  # `volumeSizeGb` raised: DigitalOcean grows the block device
    grown = host.mount()
    assert grown.returncode == 0, grown.stderr
    assert "growing its filesystem" in grown.stdout
    after = size_kib()
    assert after > before + 80 * 1024, (before, after)
    assert data_hash(host) == digest
    assert host.mounts_of_volume() == [str(host.mount_point)]
    host.standins.reset_calls()
    again = host.mount()
    assert again.returncode == 0 and "growing" not in again.stdout
    assert size_kib() == after
    assert host.standins.calls() == []
    assert formatting_calls(host.standins) == []


def test_mount_undoes_digitaloceans_auto_mount_and_owns_the_one_mount(
    volume_host: VolumeHost,
) -> None:
    host = volume_host
    format_like_digitalocean(host.volume.image)
    # What DigitalOcean leaves for a volume it formatted: a mount unit for /mnt/<name>
    # (here under the test directory) naming the by-id link, the volume mounted there, and
    # (the manual instructions' variant) an fstab line for it.
    auto = host.workdir / "mnt" / VOLUME_NAME
    unit = "mnt-test\\x2dstack\\x2ddata.mount"
    by_id_link = f"/dev/disk/by-id/scsi-0DO_Volume_{VOLUME_NAME}"
    host.ns.sh(f"mkdir -p {auto} /etc/systemd/system && mount {host.volume.device} {auto}")
    host.ns.sh(
        f"cat > {shlex.quote('/etc/systemd/system/' + unit)}",
        input=f"[Mount]\nWhat={by_id_link}\nWhere={auto}\nOptions=defaults,nofail\n",
    )
    host.ns.sh(
        "cat >> /etc/fstab", input=f"{by_id_link} {auto} ext4 defaults,nofail,discard,noatime 0 0\n"
    )
    assert host.mounts_of_volume() == [str(auto)]

    result = host.mount()
    assert result.returncode == 0, result.stderr
    assert host.mounts_of_volume() == [str(host.mount_point)]
    assert ["systemctl", "disable", "--now", unit] in host.standins.calls()
    assert (
        host.ns.sh(f"test -e {shlex.quote('/etc/systemd/system/' + unit)}", check=False).returncode
        != 0
    )
    fstab = host.fstab()
    assert str(auto) not in fstab and by_id_link not in fstab
    assert [line for line in fstab.splitlines() if host.uuid() in line] == [
        f"UUID={host.uuid()} {host.mount_point} ext4 defaults,nofail,discard,noatime 0 2"
    ]


# -- release-data-volume.sh ---------------------------------------------------------------------
def test_release_stops_the_registry_and_unmounts_so_the_volume_detaches_clean(
    volume_host: VolumeHost,
) -> None:
    host = volume_host
    format_like_digitalocean(host.volume.image)
    assert host.mount().returncode == 0
    digest = write_data(host)
    host.standins.set(units="registry.service", active="registry.service docker.service")
    host.standins.reset_calls()

    released = host.release()
    assert released.returncode == 0, released.stderr
    assert host.standins.calls("systemctl")[-1] == ["systemctl", "stop", "registry.service"]
    assert host.mounts_of_volume() == []
    # Detachable now: the loop device really goes away (a mounted one would linger).
    host.volume.detach()
    fsck = subprocess.run(
        ["e2fsck", "-n", "-f", str(host.volume.image)], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # clean: nothing left to replay

    # The next droplet attaches it and mounts the same filesystem: the data is there.
    host.volume.attach()
    assert host.mount().returncode == 0
    assert data_hash(host) == digest


def test_release_is_idempotent_without_a_mount_or_a_registry_unit(volume_host: VolumeHost) -> None:
    host = volume_host
    first = host.release()
    assert first.returncode == 0, first.stderr
    assert "nothing to release" in first.stdout
    assert host.standins.calls("systemctl") == [["systemctl", "cat", "registry.service"]]
    again = host.release()
    assert again.returncode == 0, again.stderr


def test_release_fails_clearly_while_the_mount_stays_busy(volume_host: VolumeHost) -> None:
    host = volume_host
    format_like_digitalocean(host.volume.image)
    assert host.mount().returncode == 0
    busy = subprocess.Popen(
        host.ns.argv(["bash", "-c", f"cd {host.data_dir} && exec sleep 60"]), start_new_session=True
    )
    try:
        time.sleep(0.2)
        result = host.release(RELEASE_ATTEMPTS="2")
        assert result.returncode != 0
        assert "is still busy after 2 attempts" in result.stderr
        assert host.mounts_of_volume() == [str(host.mount_point)]
    finally:
        busy.kill()
        busy.wait(timeout=10)
    assert host.release().returncode == 0
    assert host.mounts_of_volume() == []


# -- install-packages.sh against a private apt root ------------------------------------------
HOLD_LOCK = """
import fcntl, os, sys, time

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a POSIX record lock, as apt and dpkg take
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""
PACKAGE = "coreutils"  # essential, so installed here; apt's private root knows it installed


@dataclass
class AptRoot:
    """A private root for the real apt-get (`Dir`), no sources; dpkg-query reads `admindir`."""

    root: Path
    admindir: Path
    calls: Path
    env: dict[str, str]

    @property
    def dpkg_lock(self) -> Path:
        return self.root / "var/lib/dpkg/lock-frontend"

    @property
    def lists_lock(self) -> Path:
        return self.root / "var/lib/apt/lists/lock"

    def status(self) -> bytes:
        return (self.root / "var/lib/dpkg/status").read_bytes()

    def hide_from_dpkg_query(self, package: str) -> None:
        """dpkg-query's view without `package`: the script sees it missing and updates the
        lists first; apt still sees it installed, so the install downloads nothing."""
        stanzas = (self.admindir / "status").read_text().split("\n\n")
        kept = [s for s in stanzas if not s.startswith(f"Package: {package}\n")]
        assert len(kept) == len(stanzas) - 1
        (self.admindir / "status").write_text("\n\n".join(kept))

    def apt_calls(self) -> list[list[str]]:
        return (
            [line.split() for line in self.calls.read_text().splitlines()]
            if self.calls.exists()
            else []
        )


@pytest.fixture
def apt_root(tmp_path: Path) -> AptRoot:
    root = tmp_path / "apt-root"
    for directory in (
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
    ):
        (root / directory).mkdir(parents=True)
    (root / "etc/apt/sources.list").touch()
    # A copy of this machine's package status, read once; the machine's is never written.
    shutil.copyfile("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    admindir = tmp_path / "dpkg-query-admindir"
    admindir.mkdir()
    shutil.copyfile(root / "var/lib/dpkg/status", admindir / "status")
    config = tmp_path / "apt.conf"
    config.write_text(f'Dir "{root}/";\n')
    # A stand-in apt-get that records its arguments and runs the real one.
    bin_dir = tmp_path / "apt-bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-get.calls"
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >>{calls}\nexec /usr/bin/apt-get "$@"\n'
    )
    (bin_dir / "apt-get").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "APT_CONFIG": str(config),
        "DPKG_ADMINDIR": str(admindir),
        "LC_ALL": "C",
    }
    return AptRoot(root, admindir, calls, env)


def install_packages(
    apt: AptRoot, *packages: str, lock_timeout: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(apt.env)
    if lock_timeout is not None:
        env["APT_LOCK_TIMEOUT"] = str(lock_timeout)
    return run_script("install-packages.sh", *packages, env=env, timeout=timeout)


@contextmanager
def lock_held(path: Path, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 10)
        assert ready and holder.stdout.readline() == b"locked\n", f"could not take {path}"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)


def test_install_packages_twice_changes_nothing(apt_root: AptRoot) -> None:
    before = apt_root.status()
    for _ in range(2):
        result = install_packages(apt_root, PACKAGE)
        assert result.returncode == 0, result.stderr
        assert "updating package lists" not in result.stdout  # nothing missing: no apt update
        assert apt_root.status() == before
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", PACKAGE],
        env=apt_root.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"installed: {PACKAGE} {version}" in result.stdout


def test_install_packages_waits_for_a_held_dpkg_lock(apt_root: AptRoot) -> None:
    hold = 3.0
    with lock_held(apt_root.dpkg_lock, hold) as holder:
        started = time.monotonic()
        result = install_packages(apt_root, PACKAGE)
        elapsed = time.monotonic() - started
        assert holder.poll() is not None, "the script finished while the lock was still held"
    assert result.returncode == 0, result.stderr
    assert elapsed >= hold - 0.5
    assert f"Could not get lock {apt_root.dpkg_lock}" in result.stdout + result.stderr


def test_install_packages_waits_for_a_held_apt_lists_lock(apt_root: AptRoot) -> None:
    """apt-daily holds the lists lock: `apt-get update` alone would fail at once."""
    apt_root.hide_from_dpkg_query(PACKAGE)
    hold = 3.0
    with lock_held(apt_root.lists_lock, hold) as holder:
        started = time.monotonic()
        result = install_packages(apt_root, PACKAGE)
        elapsed = time.monotonic() - started
        assert holder.poll() is not None, "the script finished while the lock was still held"
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed >= hold - 0.5
    assert "updating package lists" in result.stdout
    verbs = [
        next(arg for arg in call if not arg.startswith("-") and "=" not in arg)
        for call in apt_root.apt_calls()
    ]
    assert verbs[-1] == "install" and set(verbs[:-1]) == {"update"}, verbs


def test_install_packages_gives_up_on_a_held_apt_lists_lock_with_a_clear_message(
    apt_root: AptRoot,
) -> None:
    apt_root.hide_from_dpkg_query(PACKAGE)
    with lock_held(apt_root.lists_lock, 120) as holder:
        started = time.monotonic()
        result = install_packages(apt_root, PACKAGE, lock_timeout=1, timeout=60)
        elapsed = time.monotonic() - started
        assert holder.poll() is None
    assert result.returncode != 0
    assert elapsed < 20
    assert "install-packages: the apt lists lock stayed held for 1s" in result.stderr
    assert f"Could not get lock {apt_root.lists_lock}" in result.stderr
    assert not any("install" in call for call in apt_root.apt_calls())


def test_install_packages_gives_up_on_a_held_dpkg_lock_with_a_clear_message(
    apt_root: AptRoot,
) -> None:
    with lock_held(apt_root.dpkg_lock, 120) as holder:
        started = time.monotonic()
        result = install_packages(apt_root, PACKAGE, lock_timeout=1, timeout=60)
        elapsed = time.monotonic() - started
        assert holder.poll() is None
    assert result.returncode != 0
    assert elapsed < 20
    assert (
        "install-packages: apt-get install failed (or its lock stayed held for 1s)" in result.stderr
    )
    assert "lock-frontend" in result.stderr + result.stdout


def test_install_packages_does_not_upgrade_installed_packages(apt_root: AptRoot) -> None:
    """A re-run on a live host must not upgrade, say, docker.io (which restarts dockerd)."""
    apt_root.hide_from_dpkg_query(PACKAGE)  # the update-then-install path, too
    result = install_packages(apt_root, PACKAGE)
    assert result.returncode == 0, result.stderr
    installs = [call for call in apt_root.apt_calls() if "install" in call]
    assert installs and all("--no-upgrade" in call for call in installs), installs


# -- trust-registry.sh: the name survives cloud-init's /etc/hosts at boot ---------------------
# The shape of cloud-init's templates/hosts.debian.tmpl (Ubuntu's os family is "debian"):
# a jinja header, a jinja comment, the host's own names, localhost.
HOSTS_TEMPLATE = """## template:jinja
{#
Rendered by cloud-init's update_etc_hosts module on every boot (manage_etc_hosts: true).
-#}
# Your system has configured 'manage_etc_hosts' as True.
127.0.1.1 {{fqdn}} {{hostname}}
127.0.0.1 localhost

::1 localhost ip6-localhost ip6-loopback
"""
CA_PEM_LINES = "-----BEGIN CERTIFICATE-----\nMIIBstandin\n-----END CERTIFICATE-----\n"


def cloud_init_render_hosts(template: str, hostname: str, fqdn: str) -> str:
    """cloud-init's templater for a `## template:jinja` file (cloudinit/templater.py:
    detect_template + jinja_render): drop the header line, render with trim_blocks, keep a
    trailing newline."""
    header, rest = template.split("\n", 1)
    assert re.match(r"##\s*template:jinja", header, re.I)
    rendered = jinja2.Template(rest, trim_blocks=True).render(hostname=hostname, fqdn=fqdn)
    return rendered + ("\n" if rest.endswith("\n") else "")


@dataclass
class ClientHost:
    ns: Namespace
    standins: Standins
    workdir: Path

    def trust(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.script("trust-registry.sh", *args, env=self.standins.env())

    def reboot(self) -> None:
        """What cloud-init does to /etc/hosts at boot with manage_etc_hosts."""
        template = self.ns.sh("cat /etc/cloud/templates/hosts.debian.tmpl").stdout
        self.ns.sh(
            "cat > /etc/hosts",
            input=cloud_init_render_hosts(template, "client-0", "client-0.local"),
        )

    def resolves(self, name: str) -> str:
        return self.ns.sh(f"getent hosts {name} || true").stdout.strip()

    def etc_snapshot(self) -> dict[str, tuple[int, bytes]]:
        return {
            str(path.relative_to(self.workdir)): (path.stat().st_mode, path.read_bytes())
            for base in (self.ns.etc_upper, self.workdir / "local-ca")
            for path in sorted(base.rglob("*"))
            if path.is_file()
        }


@pytest.fixture
def client_host(tmp_path: Path, standins: Standins) -> Iterator[ClientHost]:
    # update-ca-certificates is a stand-in: its hooks (ca-certificates-java) write outside /etc.
    (standins.bin / "update-ca-certificates").write_text("#!/bin/sh\nexit 0\n")
    (standins.bin / "update-ca-certificates").chmod(0o755)
    ns = Namespace(tmp_path)
    try:
        ns.sh(
            f"mkdir -p {tmp_path / 'local-ca'} /usr/local/share/ca-certificates && "
            f"mount --bind {tmp_path / 'local-ca'} /usr/local/share/ca-certificates && "
            "mkdir -p /etc/cloud/templates /etc/private-registry && "
            "cat > /etc/cloud/templates/hosts.debian.tmpl",
            input=HOSTS_TEMPLATE,
        )
        ns.sh("cat > /etc/private-registry/ca.crt", input=CA_PEM_LINES)
        yield ClientHost(ns, standins, tmp_path)
    finally:
        ns.close()


def test_trust_registry_mapping_survives_cloud_init_rewriting_etc_hosts_at_boot(
    client_host: ClientHost,
) -> None:
    host = client_host
    name, ca_file = "registry.internal", "/etc/private-registry/ca.crt"
    # The control: a boot from the template as it was drops any name only /etc/hosts had.
    host.ns.sh(f"echo '10.9.9.9 {name}' >> /etc/hosts")
    assert host.resolves(name)
    host.reboot()
    assert host.resolves(name) == ""

    first = host.trust(name, "5043", ca_file, "10.1.2.3")
    assert first.returncode == 0, first.stderr
    assert host.resolves(name).split() == ["10.1.2.3", name]
    snapshot = host.etc_snapshot()
    second = host.trust(name, "5043", ca_file, "10.1.2.3")
    assert second.returncode == 0, second.stderr
    assert host.etc_snapshot() == snapshot  # the second run changes nothing
    assert "mapping" not in second.stdout and "keeping" not in second.stdout

    host.reboot()
    assert host.resolves(name).split() == ["10.1.2.3", name]
    assert host.resolves("client-0.local").split()[0] == "127.0.1.1"  # cloud-init's own lines

    # A new address replaces the entry in both places, never adds a second one.
    assert host.trust(name, "5043", ca_file, "10.1.2.4").returncode == 0
    host.reboot()
    hosts = host.ns.sh("cat /etc/hosts").stdout
    assert [line.split()[0] for line in hosts.splitlines() if name in line] == ["10.1.2.4"]


def test_trust_registry_reads_the_ca_from_its_argument(client_host: ClientHost) -> None:
    host = client_host
    host.ns.sh("cat > /etc/private-registry/other.crt", input=CA_PEM_LINES)
    result = host.trust("registry.example.com", "443", "/etc/private-registry/other.crt")
    assert result.returncode == 0, result.stderr
    placed = host.ns.sh("cat /etc/docker/certs.d/registry.example.com:443/ca.crt").stdout
    assert placed == CA_PEM_LINES
    host.ns.sh("echo not-a-certificate > /etc/private-registry/bad.crt")
    bad = host.trust("registry.example.com", "443", "/etc/private-registry/bad.crt")
    assert bad.returncode != 0
    assert "/etc/private-registry/bad.crt holds no PEM certificate" in bad.stderr


# -- registry.service and dockerd ---------------------------------------------------------------
def unit_entries(text: str, section: str) -> list[tuple[str, str]]:
    entries, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line
        elif current == f"[{section}]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries.append((key, value))
    return entries


def verify_offline(tmp_path: Path, unit_path: str, files: dict[str, tuple[str, int]]) -> None:
    """systemd-analyze verify, offline: a root with this machine's unit directory and `files`
    (path -> text, mode: the unit, and what its Exec lines run)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for path, (text, mode) in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
        (root / path.lstrip("/")).chmod(mode)
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit_path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr


def test_registry_unit_is_valid_and_a_dockerd_restart_does_not_stop_it(tmp_path: Path) -> None:
    unit = REGISTRY_HOST.file("systemd_unit").render({})
    verify_offline(
        tmp_path,
        REGISTRY_LAYOUT.unit_path,
        {"/usr/bin/docker": ("#!/bin/sh\n", 0o755), REGISTRY_LAYOUT.unit_path: (unit, 0o644)},
    )
    entries = unit_entries(unit, "Unit")
    naming_docker = {key for key, value in entries if "docker.service" in value.split()}
    # Requires=/BindsTo=/PartOf=/Requisite= would propagate dockerd's stop or restart (by hand,
    # or finishing a docker.io upgrade) to this unit, whose ExecStop is `compose down`.
    assert naming_docker == {"Wants", "After"}
    assert ("RequiresMountsFor", REGISTRY_LAYOUT.data_mount) in entries


def test_request_counter_unit_is_valid(tmp_path: Path) -> None:
    """registry-requests.service, with the placed script and python3 where it wants them."""
    service = REGISTRY_HOST.file("requests_service")
    script = REGISTRY_HOST.file("requests_script")
    verify_offline(
        tmp_path,
        service.path,
        {
            "/usr/bin/python3": ("#!/bin/sh\n", 0o755),
            script.path: (script.render({}), script.mode),
            service.path: (service.render({}), service.mode),
        },
    )
    (exec_start,) = [
        value for key, value in unit_entries(service.render({}), "Service") if key == "ExecStart"
    ]
    assert exec_start.split()[:2] == ["/usr/bin/python3", script.path]


def test_docker_runs_with_live_restore_from_a_file_the_program_places(
    program_run: ProgramRun,
) -> None:
    daemon = REGISTRY_HOST.file("docker_daemon")
    assert daemon.path == "/etc/docker/daemon.json"  # where dockerd reads it
    placed = program_run.named("registry-file-docker-daemon").inputs["stdin"]
    assert json.loads(placed) == {"live-restore": True}


# -- activate-registry.sh ---------------------------------------------------------------------
COMPOSE_FILE = "/srv/test/compose.yaml"
CA_FILE = "/srv/test/ca.crt"


UNITS = ("registry-requests.service", "registry-gc.timer", "registry-disk.timer")
# What every activation asks systemd first, whatever state the host is in.
ACTIVATION_PREAMBLE = (
    "daemon-reload",
    "enable --quiet docker.service registry.service",
    f"enable --quiet {' '.join(UNITS)}",
    f"restart {' '.join(UNITS)}",
)


def activate(standins: Standins, *, attempts: int = 60) -> subprocess.CompletedProcess[str]:
    env = {**standins.env(), "ACTIVATE_WAIT_ATTEMPTS": str(attempts), "ACTIVATE_WAIT_SECONDS": "0"}
    return run_script(
        "activate-registry.sh",
        "registry.internal",
        "5043",
        COMPOSE_FILE,
        CA_FILE,
        *UNITS,
        env=env,
    )


def systemctl_verbs(standins: Standins) -> list[str]:
    return [
        " ".join(call[1:])
        for call in standins.calls("systemctl")
        if call[1] not in ("is-active", "cat")
    ]


def test_activate_script_names_no_host_path_of_its_own() -> None:
    text = (SCRIPTS / "activate-registry.sh").read_text()
    assert "/etc/registry" not in text and "/etc/private-registry" not in text
    for name in ("verify-registry.sh", "trust-registry.sh"):
        assert "/etc/private-registry" not in (SCRIPTS / name).read_text(), name


def test_activate_first_start_enables_live_restore_then_waits_for_401(standins: Standins) -> None:
    standins.set(active="docker.service", live_restore="false", statuses="000 000 502 401")
    result = activate(standins)
    assert result.returncode == 0, result.stderr
    assert systemctl_verbs(standins) == [
        *ACTIVATION_PREAMBLE,
        "reload docker.service",
        "start registry.service",
    ]
    curls = standins.calls("curl")
    assert len(curls) == 4
    for call in curls:
        assert call[call.index("--cacert") + 1] == CA_FILE
        assert call[call.index("--resolve") + 1] == "registry.internal:5043:127.0.0.1"
        assert call[-1] == "https://registry.internal:5043/v2/"


def test_activate_starts_a_stopped_dockerd_which_reads_live_restore_itself(
    standins: Standins,
) -> None:
    standins.set(active="", live_restore="false", statuses="401")
    result = activate(standins)
    assert result.returncode == 0, result.stderr
    assert systemctl_verbs(standins) == [
        *ACTIVATION_PREAMBLE,
        "start docker.service",
        "start registry.service",
    ]


def test_activate_reloads_a_running_registry_and_leaves_dockerd_alone(standins: Standins) -> None:
    standins.set(active="docker.service registry.service", live_restore="true", statuses="401")
    result = activate(standins)
    assert result.returncode == 0, result.stderr
    assert systemctl_verbs(standins) == [
        *ACTIVATION_PREAMBLE,
        "reload registry.service",
    ]
    assert len(standins.calls("curl")) == 1


def test_activate_times_out_printing_compose_ps_and_logs(standins: Standins) -> None:
    standins.set(active="docker.service registry.service", live_restore="true", statuses="502")
    result = activate(standins, attempts=3)
    assert result.returncode == 1
    assert "activate-registry: expected 401 from /v2/, got 502" in result.stderr
    assert f"STANDIN compose ps of {COMPOSE_FILE}" in result.stderr
    assert f"STANDIN compose logs of {COMPOSE_FILE}" in result.stderr
    assert len(standins.calls("curl")) == 3


def test_activate_fails_clearly_when_dockerd_keeps_live_restore_off(standins: Standins) -> None:
    standins.set(
        active="docker.service", live_restore="false", daemon_live_restore="false", statuses="401"
    )
    result = activate(standins)
    assert result.returncode == 1
    assert "dockerd did not enable live-restore" in result.stderr
    assert "start registry.service" not in systemctl_verbs(standins)


# -- verify-registry.sh -----------------------------------------------------------------------
PASSWORD = "correct-horse-battery-staple-0123456789"
DIGEST = "localhost:5043/private-registry/proof@sha256:" + "ab" * 32


def verify(standins: Standins, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    password_file = tmp_path / "login-password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    return run_script(
        "verify-registry.sh", "localhost:5043", "ci", str(password_file), env=standins.env()
    )


def test_verify_logs_in_with_the_password_on_stdin_then_pushes_and_pulls(
    standins: Standins, tmp_path: Path
) -> None:
    standins.set(active="docker.service", push_digest=DIGEST, pull_digest=DIGEST)
    result = verify(standins, tmp_path)
    assert result.returncode == 0, result.stderr
    calls = standins.calls("docker")
    login = calls[0]
    assert login[1:-1] == ["login", "--username", "ci", "--password-stdin", "localhost:5043"]
    assert login[-1] == {"stdin": PASSWORD}
    verbs = [call[1] if call[1] != "image" else f"image {call[2]}" for call in calls]
    assert verbs == ["login", "build", "push", "image inspect", "image rm", "pull", "image inspect"]
    image = calls[2][-1]
    assert image.startswith("localhost:5043/private-registry/proof:")
    assert calls[5][-1] == image
    argvs = [[arg for arg in call if isinstance(arg, str)] for call in standins.calls()]
    everything = json.dumps(argvs)
    assert PASSWORD not in everything + result.stdout + result.stderr  # never in argv or logs
    assert f"proof passed: {DIGEST}" in result.stdout


def test_verify_fails_when_the_pulled_digest_differs(standins: Standins, tmp_path: Path) -> None:
    other = DIGEST.replace("ab" * 32, "cd" * 32)
    standins.set(active="docker.service", push_digest=DIGEST, pull_digest=other)
    result = verify(standins, tmp_path)
    assert result.returncode == 1
    assert f"verify-registry: pulled {other}, pushed {DIGEST}" in result.stderr
    assert "proof passed" not in result.stdout


def test_verify_starts_a_stopped_dockerd(standins: Standins, tmp_path: Path) -> None:
    standins.set(active="", push_digest=DIGEST, pull_digest=DIGEST)
    assert verify(standins, tmp_path).returncode == 0
    assert ["systemctl", "start", "docker.service"] in standins.calls("systemctl")
