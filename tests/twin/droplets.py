"""The droplet twin's machines: a network like DigitalOcean's, droplets, block volumes.

Every droplet is Debian bookworm with systemd as PID 1 under `systemd-nspawn` (the cached
build's, extracted, never installed), booted from the cached pristine rootfs through an overlay
whose upper layer is the droplet's disk, in a private mount namespace (nothing is mounted where
the machine sees it). Network namespaces are held open by `sleep` processes: the router's holds
two bridges, `public` (the deployer and the Docker Hub stand-in at PUBLIC_GATEWAY) and `vpc`;
each droplet's holds `eth0` and `eth1` on them with the addresses the mocks gave the droplet, and
keeps them (and their MACs) across reboots. Volumes are sparse ext4 images, attached as loop
devices that appear inside the droplet as `/dev/disk/by-id/scsi-0DO_Volume_<name>`. The program's
Cloud Firewalls filter on the router (tests/twin/firewalls.py).

`Twin.close()` leaves the machine as it was: no process, loop device or veth left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.twin.firewalls import Host, ruleset

PUBLIC_GATEWAY = "203.0.113.1"
PUBLIC_PREFIX = 24
VPC_PREFIX = 20
NSPAWN_ENV = {
    # dockerd needs keyctl, bpf, mount...: no syscall filter.
    "SYSTEMD_SECCOMP": "0",
    # Without it dockerd cannot enable IP forwarding in the droplet's network namespace.
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
    # Otherwise the guest's cgroup v1 controllers are read-only.
    "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
}
BOOT_TIMEOUT = 60.0


def run(argv: list[str], stdin: bytes | None = None, timeout: float = 60) -> str:
    """Run `argv`, fail with its output if it fails; its stdout."""
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} failed ({done.returncode}):\n"
            f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )
    return done.stdout.decode()


def namespace_holder() -> subprocess.Popen[bytes]:
    """A process holding a new network namespace open (with its loopback up)."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep infinity"]
    )
    for _ in range(100):
        if (
            os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            and "sleep" in Path(f"/proc/{holder.pid}/cmdline").read_text()
        ):
            return holder
        time.sleep(0.02)
    raise RuntimeError("the network namespace holder did not start")


def in_namespace(holder: subprocess.Popen[bytes], *argv: str) -> list[str]:
    return ["nsenter", "-t", str(holder.pid), "-n", *argv]


def stop(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Volume:
    name: str
    image: Path
    loop_device: str = ""

    def attach(self) -> str:
        """Its loop device (made now); `MAJOR:MINOR`."""
        self.loop_device = run(["losetup", "--find", "--show", str(self.image)]).strip()
        rdev = os.stat(self.loop_device).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def detach(self) -> None:
        if self.loop_device:
            run(["losetup", "--detach", self.loop_device])
            self.loop_device = ""


@dataclass
class Droplet:
    """One droplet: its disk (an overlay's upper layer), network namespace and, while it runs,
    its `systemd-nspawn`."""

    twin: Twin
    droplet_id: str
    name: str
    public_ip: str
    private_ip: str
    index: int
    directory: Path
    tags: tuple[str, ...] = ()
    holder: subprocess.Popen[bytes] | None = None
    nspawn: subprocess.Popen[bytes] | None = None
    volumes: dict[str, Volume] = field(default_factory=dict)
    boots: int = 0

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Put a file on the droplet's disk while it is off (cloud-init's seed, say)."""
        target = self.upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def wire(self) -> None:
        """Its network namespace, with eth0 (public) and eth1 (VPC) on the router's bridges."""
        self.holder = namespace_holder()
        router = self.twin.router
        assert router is not None
        for interface, bridge, address, prefix, mac_byte in (
            ("eth0", "public", self.public_ip, PUBLIC_PREFIX, 1),
            ("eth1", "vpc", self.private_ip, VPC_PREFIX, 2),
        ):
            outer = f"{bridge[:3]}{self.index}"
            run(["ip", "link", "add", outer, "netns", str(router.pid), "type", "veth",
                 "peer", "name", interface, "netns", str(self.holder.pid)])  # fmt: skip
            run(in_namespace(router, "ip", "link", "set", outer, "master", bridge, "up"))
            mac = f"02:d0:00:{self.index:02x}:00:{mac_byte:02x}"  # fixed: same after a reboot
            for argv in (
                ["ip", "link", "set", interface, "address", mac],
                ["ip", "address", "add", f"{address}/{prefix}", "dev", interface],
                ["ip", "link", "set", interface, "up"],
            ):
                run(in_namespace(self.holder, *argv))
        run(in_namespace(self.holder, "ip", "route", "add", "default", "via", PUBLIC_GATEWAY))

    @property
    def host(self) -> Host:
        return Host(self.droplet_id, (self.public_ip, self.private_ip), self.tags)

    def boot(self) -> None:
        """Start systemd as PID 1 on the droplet's disk; return once it is running."""
        assert self.holder is not None and self.nspawn is None
        build = self.twin.build
        for directory in ("upper", "work", "root", "docker", "containerd"):
            (self.directory / directory).mkdir(exist_ok=True)
        root = self.directory / "root"
        overlay = (
            f"lowerdir={build / 'rootfs'},upperdir={self.upper},workdir={self.directory / 'work'}"
        )
        nspawn = [
            str(build / "tools/usr/bin/systemd-nspawn"),
            "--boot", f"--directory={root}", f"--machine={self.name}", "--register=no",
            "--keep-unit", f"--network-namespace-path=/proc/{self.holder.pid}/ns/net",
            "--capability=all", "--console=pipe",
            # The droplet's own /etc/resolv.conf (the engine's seed), not a copy of the machine's.
            "--resolv-conf=off",
            # Docker's and containerd's storage cannot be an overlay's upper layer.
            f"--bind={self.directory / 'docker'}:/var/lib/docker",
            f"--bind={self.directory / 'containerd'}:/var/lib/containerd",
        ]  # fmt: skip
        script = " && ".join(
            [
                "mount -t tmpfs tmpfs /run",
                f"mount -t overlay overlay -o {shlex.quote(overlay)} {shlex.quote(str(root))}",
                "exec " + shlex.join(nspawn),
            ]
        )
        environment = {
            **os.environ,
            **NSPAWN_ENV,
            "LD_LIBRARY_PATH": str(build / "tools/usr/lib/x86_64-linux-gnu/systemd"),
        }
        console = (self.directory / f"console-{self.boots}.log").open("wb")
        self.boots += 1
        self.nspawn = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                break
            pid1 = self.pid1()
            if pid1:
                state = subprocess.run(
                    ["nsenter", "-t", str(pid1), "-a", "systemctl", "is-system-running"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise RuntimeError(
            f"droplet {self.name} did not boot (state {state!r}); console:\n"
            + (self.directory / f"console-{self.boots - 1}.log").read_text(errors="replace")[-3000:]
        )

    def pid1(self) -> int | None:
        """The droplet's systemd, seen from the machine."""
        if self.nspawn is None:
            return None
        frontier = [self.nspawn.pid]
        while frontier:
            pid = frontier.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except FileNotFoundError:
                    continue
                frontier.append(child)
        return None

    def inside(self, script: str, timeout: float = 60) -> str:
        """Run a shell script in the droplet as root, outside SSH (the twin's own hand)."""
        pid1 = self.pid1()
        assert pid1 is not None, f"droplet {self.name} is not running"
        return run(["nsenter", "-t", str(pid1), "-a", "bash", "-c", script], timeout=timeout)

    def shutdown(self, grace: float = 30) -> bool:
        """`systemctl poweroff`; after `grace` seconds its PID 1 is killed (systemd-shutdown can
        wait 90 s for live-restored containers). Whether it stopped in time by itself."""
        if self.nspawn is None:
            return True
        pid1 = self.pid1()
        if pid1:
            subprocess.run(
                ["nsenter", "-t", str(pid1), "-a", "systemctl", "poweroff", "--no-block"],
                capture_output=True,
                check=False,
            )
        try:
            self.nspawn.wait(grace)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
            pid1 = self.pid1()
            if pid1:
                os.kill(pid1, signal.SIGKILL)
            try:
                self.nspawn.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait()
        self.nspawn = None
        return stopped

    def reboot(self) -> None:
        """`systemctl reboot`: nspawn exits (it does not restart itself); boot the disk again."""
        assert self.shutdown(), f"droplet {self.name} did not shut down by itself"
        self.boot()

    def attach(self, volume: Volume) -> None:
        numbers = volume.attach()
        self.volumes[volume.name] = volume
        self.inside(
            f"mkdir -p /etc/twin && echo {shlex.quote(volume.name)} {numbers} >>/etc/twin/volumes"
            " && /usr/local/sbin/twin-volumes"
        )

    def detach(self, volume: Volume) -> None:
        """DigitalOcean detaches a volume whatever the droplet does with it; the twin refuses a
        detach while the volume is mounted (data written since would be lost)."""
        node = f"/dev/twin-volume-{volume.name}"
        if self.nspawn is not None:
            mounts = self.inside(f"findmnt -rn -o TARGET --source {node} || true").split()
            if mounts:
                raise AssertionError(f"volume {volume.name} detached while mounted at {mounts}")
            self.inside(
                f"sed -i '/^{volume.name} /d' /etc/twin/volumes && rm -f {node}"
                f" /dev/disk/by-id/scsi-0DO_Volume_{volume.name}"
                f" && find /dev/disk/by-uuid -lname {node} -delete"
            )
        else:
            (self.upper / "etc/twin/volumes").write_text(
                "".join(
                    line + "\n"
                    for line in (self.upper / "etc/twin/volumes").read_text().splitlines()
                    if not line.startswith(volume.name + " ")
                )
            )
        volume.detach()
        del self.volumes[volume.name]

    def destroy(self) -> bool:
        """Shut down (whether it did so by itself within the grace period) and unwire."""
        stopped = self.shutdown()
        for volume in list(self.volumes.values()):
            volume.detach()
        self.volumes.clear()
        if self.holder is not None:
            stop(self.holder)  # its veths go with the namespace
            self.holder = None
        return stopped


@dataclass
class Bystander:
    """A droplet outside the stack in the same VPC (a user's Prometheus scraper, say): only a
    network namespace with `eth1` on the VPC bridge and the tags a firewall may name."""

    droplet_id: str
    private_ip: str
    tags: tuple[str, ...]
    holder: subprocess.Popen[bytes]

    @property
    def host(self) -> Host:
        return Host(self.droplet_id, (self.private_ip,), self.tags)

    def run(self, *argv: str) -> list[str]:
        """`argv` as run on it."""
        return in_namespace(self.holder, *argv)


@dataclass
class Twin:
    """The twin's world: the router's namespace and every droplet and volume in it."""

    build: Path
    directory: Path
    router: subprocess.Popen[bytes] | None = None
    droplets: dict[str, Droplet] = field(default_factory=dict)  # by droplet id
    volumes: dict[str, Volume] = field(default_factory=dict)  # by volume id
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The Cloud Firewalls' inputs by firewall id, and the load balancers' addresses by uid, as
    # the engine last set them.
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_balancers: dict[str, str] = field(default_factory=dict)
    bystanders: list[Bystander] = field(default_factory=list)

    def start(self) -> None:
        self.router = namespace_holder()
        # Bridged traffic through the router's IP hooks (and connection tracking), where the
        # firewalls filter: per network namespace, and needs br_netfilter in the kernel.
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            run(in_namespace(self.router, "sysctl", "-q", "-w", f"net.bridge.{name}=1"))
        for bridge, address in (("public", f"{PUBLIC_GATEWAY}/{PUBLIC_PREFIX}"), ("vpc", None)):
            run(in_namespace(self.router, "ip", "link", "add", bridge, "type", "bridge"))
            run(in_namespace(self.router, "ip", "link", "set", bridge, "up"))
            if address:
                run(in_namespace(self.router, "ip", "address", "add", address, "dev", bridge))

    def deployer(self, *argv: str) -> list[str]:
        """`argv` as run from the deployer's machine (on the public network)."""
        assert self.router is not None
        return in_namespace(self.router, *argv)

    def add_droplet(
        self,
        droplet_id: str,
        name: str,
        public_ip: str,
        private_ip: str,
        seed: dict[str, str],
        tags: tuple[str, ...] = (),
    ) -> Droplet:
        """A new droplet from the pristine rootfs, with `seed` (path -> text) on its disk."""
        directory = self.directory / f"droplet-{droplet_id}"
        directory.mkdir()
        droplet = Droplet(
            self,
            droplet_id,
            name,
            public_ip,
            private_ip,
            # Not len(): a replacement's veths must not take a live droplet's names.
            max((d.index for d in self.droplets.values()), default=0) + 1,
            directory,
            tags,
        )
        self.droplets[droplet_id] = droplet
        for path, text in seed.items():
            droplet.write(path, text)
        droplet.wire()
        self.apply_firewalls()  # a tagged droplet is guarded from its first packet
        droplet.boot()
        return droplet

    def add_bystander(self, private_ip: str, tags: tuple[str, ...]) -> Bystander:
        assert self.router is not None
        index = 100 + len(self.bystanders)
        holder = namespace_holder()
        bystander = Bystander(f"bystander-{index}", private_ip, tags, holder)
        self.bystanders.append(bystander)
        outer = f"vpc{index}"
        run(["ip", "link", "add", outer, "netns", str(self.router.pid), "type", "veth",
             "peer", "name", "eth1", "netns", str(holder.pid)])  # fmt: skip
        run(in_namespace(self.router, "ip", "link", "set", outer, "master", "vpc", "up"))
        run(bystander.run("ip", "address", "add", f"{private_ip}/{VPC_PREFIX}", "dev", "eth1"))
        run(bystander.run("ip", "link", "set", "eth1", "up"))
        self.apply_firewalls()
        return bystander

    def apply_firewalls(self) -> None:
        """Load the firewalls' rules over today's droplets into the router, in one transaction."""
        assert self.router is not None
        hosts = [d.host for d in self.droplets.values()] + [b.host for b in self.bystanders]
        script = ruleset(self.firewalls.values(), hosts, self.load_balancers)
        (self.directory / "firewalls.nft").write_text(script)
        run(in_namespace(self.router, "nft", "-f", "-"), stdin=script.encode())

    def droplet_at(self, public_ip: str) -> Droplet:
        found = [d for d in self.droplets.values() if d.public_ip == public_ip]
        assert len(found) == 1, f"no droplet at {public_ip}"
        return found[0]

    def add_volume(self, volume_id: str, name: str, size_gib: int) -> Volume:
        """A volume as DigitalOcean makes one with `initial_filesystem_type: ext4`."""
        image = self.directory / f"volume-{volume_id}.img"
        with image.open("wb") as sparse:
            sparse.truncate(size_gib << 30)
        run(["mkfs.ext4", "-q", "-F", str(image)])
        volume = Volume(name, image)
        self.volumes[volume_id] = volume
        return volume

    def start_process(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A process of the twin's own (the hub), stopped by `close`."""
        with log.open("wb") as output:
            process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for droplet in list(self.droplets.values()):
            droplet.destroy()
        for volume in self.volumes.values():
            volume.detach()
        for process in self.processes:
            stop(process)
        for bystander in self.bystanders:
            stop(bystander.holder)
        if self.router is not None:
            stop(self.router)
            self.router = None
