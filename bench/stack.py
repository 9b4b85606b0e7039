"""The real stack for the benchmark: the real-stack tests' simulated registry host, plus a route
from the client straight to the registry (the "direct" baseline, on a TCP port of the
benchmark's), fronts swapped in place, and CPU accounting per measurement.

    client netns ──► host netns: nginx (TLS + auth) ──(API socket)──► container netns: registry
         └──────────── (benchmark only) plain HTTP to DIRECT_PORT ──────────────┘
"""

from __future__ import annotations

import base64
import dataclasses
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.fronts import DIRECT_PORT, FrontFiles
from components.manifest import REGISTRY_HOST
from tests.harness import ProgramRun
from tests.realstack.hostsim import RegistryHostSim, sh, trusting_client_etc
from tests.realstack.sandbox import overlay_mount

# The files a front may change, where the program places them.
FILE_PATHS = {
    field.name: REGISTRY_HOST.file(field.name).path for field in dataclasses.fields(FrontFiles)
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Endpoint:
    """Where a client reaches the registry: through a front, or straight to its own port."""

    label: str
    base_url: str  # scheme://host:port, without a trailing slash
    docker_host: str  # host:port in docker:// references
    authenticated: bool


@dataclass
class CpuUse:
    """CPU seconds spent during one measurement, by whom; `wall` in seconds."""

    wall: float
    client: float
    nginx: float
    registry: float
    kernel_threads: float  # ksoftirqd, kworkers: mostly this measurement's packets
    foreign: float  # every other process's CPU, and the hypervisor's steal

    @property
    def foreign_cores(self) -> float:
        """How many cores something else took, on average, while this was measured."""
        return self.foreign / self.wall if self.wall else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 3),
            "client_cpu_s": round(self.client, 3),
            "nginx_cpu_s": round(self.nginx, 3),
            "registry_cpu_s": round(self.registry, 3),
            "kernel_threads_cpu_s": round(self.kernel_threads, 3),
            "foreign_cores": round(self.foreign_cores, 2),
        }


def _stat_fields(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def _proc_cpu(pid: str) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class _MachineCpu:
    """CPU seconds so far: the whole machine's process time (user + system), the kernel
    threads' (ksoftirqd, kworkers: mostly this benchmark's packets), this process's own, and
    the hypervisor's steal."""

    processes: float
    kernel_threads: float
    own: float
    steal: float

    @classmethod
    def read(cls) -> _MachineCpu:
        kernel = 0.0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat_fields(entry.name)
                if fields is not None and (entry.name == "2" or fields[1] == "2"):
                    kernel += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = values
        own = os.times()
        return cls(
            processes=(user + nice + system) / CLOCK_TICKS,
            kernel_threads=kernel,
            own=own.user + own.system,
            steal=steal / CLOCK_TICKS,
        )


def _split_others(
    before: _MachineCpu, after: _MachineCpu, ours: float = 0.0
) -> tuple[float, float]:
    """(kernel threads, foreign) CPU seconds between two readings, where `ours` is what this
    benchmark's children (clients, nginx, registry) used meanwhile."""
    kernel = after.kernel_threads - before.kernel_threads
    foreign = (
        (after.processes - before.processes)
        - kernel
        - (after.own - before.own)
        - ours
        + (after.steal - before.steal)
    )
    return kernel, max(0.0, foreign)


def _children_cpu() -> float:
    """CPU of this process's reaped descendants (the client commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(max_foreign: float, patience: float, sample: float = 0.5) -> float:
    """Wait (at most `patience` s) until other processes take at most `max_foreign` cores over
    `sample` seconds; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < patience:
        before, children = _MachineCpu.read(), _children_cpu()
        time.sleep(sample)
        after = _MachineCpu.read()
        if _split_others(before, after, _children_cpu() - children)[1] <= max_foreign * sample:
            break
    return time.perf_counter() - started


class BenchStack:
    """Start with `with BenchStack(run, workdir) as stack:`; `stack.install(front)` swaps fronts."""

    def __init__(self, run: ProgramRun, workdir: Path) -> None:
        self.run = run
        self.workdir = workdir
        self.sim = RegistryHostSim(run, workdir / "host", expose_registry_port=True)
        self.sim.set_client_etc(trusting_client_etc(run, workdir / "client"))
        self.user = min(self.sim.passwords)
        self.password = self.sim.passwords[self.user]
        self.secrets = workdir / "secrets"
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.front = Endpoint("front", f"https://{self.sim.address}", self.sim.address, True)
        registry = f"{self.sim.container_ip}:{DIRECT_PORT}"
        self.direct = Endpoint("direct", f"http://{registry}", registry, False)
        self.installed: FrontFiles | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> BenchStack:
        self.sim.__enter__()
        try:
            self.installed = self.read_files()
            self._login()
        except BaseException:
            self.sim.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.sim.stop()

    def read_files(self) -> FrontFiles:
        return FrontFiles(
            **{
                field: self.sim.files.host_path(path).read_text()
                for field, path in FILE_PATHS.items()
            }
        )

    def install(self, files: FrontFiles) -> None:
        """Write a front's files over the host's (owners and modes kept), then restart what
        changed: the registry only if its config changed, nginx always (a fresh master)."""
        assert self.installed is not None
        for field, path in FILE_PATHS.items():
            text = getattr(files, field)
            if text != getattr(self.installed, field):
                self.sim.files.host_path(path).write_text(text)
        if files.registry_config != self.installed.registry_config:
            self.sim.stop_service("nginx")
            self.sim.stop_service("registry")
            self.sim.start_service("registry")
            self.sim.wait_registry()
        else:
            self.sim.stop_service("nginx")
        self.sim.start_service("nginx")
        self.sim.wait_nginx()
        self.installed = files

    # -- credentials ----------------------------------------------------------------------
    def _login(self) -> None:
        """`skopeo login --password-stdin`: the password never appears on a command line."""
        self.authfile = self.secrets / "auth.json"
        self.client(
            "skopeo",
            "login",
            "--authfile",
            str(self.authfile),
            "--username",
            self.user,
            "--password-stdin",
            self.sim.address,
            input=self.password.encode(),
        )
        basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        self.authorization_header = f"Basic {basic}"
        # wrk reads the header from this file (mode 0600), not from its argv.
        self.authorization_file = self.secrets / "authorization"
        self.authorization_file.touch(mode=0o600)
        self.authorization_file.write_text(self.authorization_header + "\n")
        # curl reads `user = ...` from stdin (-K -).
        self.curl_config = f'user = "{self.user}:{self.password}"\n'.encode()

    # -- running things in the client -----------------------------------------------------
    def client(
        self, *argv: str, input: bytes | None = None, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return self.sim.client(*argv, input=input, timeout=timeout, check=check)

    def client_private_blob_cache(self, *argv: str, timeout: float = 900) -> None:
        """Run skopeo with an empty, private blob-info cache.

        containers/image remembers where it has seen a blob (as root in
        /var/lib/containers/cache) and pushes a known blob to another repository of the same
        registry by a cross-repository mount, uploading nothing. A private tmpfs there (in the
        client's own mount namespace, over a private overlay of /var/lib so that not even its
        mount point is made on the machine) makes every push really upload."""
        # A directory per call: an overlay's work directory serves one mount at a time, and
        # bench.concurrency runs many clients at once.
        varlib = Path(tempfile.mkdtemp(prefix="client-var-lib-", dir=self.workdir))
        (varlib / "upper").mkdir()
        (varlib / "work").mkdir()
        script = (
            f"{overlay_mount('/var/lib', varlib / 'upper', varlib / 'work')} && "
            "mkdir -p /var/lib/containers && "
            "mount -t tmpfs -o size=64m,mode=0700 tmpfs /var/lib/containers && "
            'exec "$@"'
        )
        try:
            self.client(
                "bash", "-c", script, "private-blob-cache", "skopeo", *argv, timeout=timeout
            )
        finally:
            shutil.rmtree(varlib, ignore_errors=True)

    # -- CPU accounting -------------------------------------------------------------------
    def _netns_cpu(self, netns: str) -> float:
        pids = sh("ip", "netns", "pids", netns, check=False).stdout.decode().split()
        return sum(_proc_cpu(pid) for pid in pids)

    @contextmanager
    def metered(self) -> Iterator[list[CpuUse]]:
        """Yields a list that holds the measurement's CPU use once the block ends."""
        holder: list[CpuUse] = []
        nginx0 = self._netns_cpu(self.sim.ns_host)
        registry0 = self._netns_cpu(self.sim.ns_container)
        children0 = _children_cpu()
        machine0, wall0 = _MachineCpu.read(), time.perf_counter()
        yield holder
        wall = time.perf_counter() - wall0
        machine1 = _MachineCpu.read()
        client = _children_cpu() - children0
        nginx = self._netns_cpu(self.sim.ns_host) - nginx0
        registry = self._netns_cpu(self.sim.ns_container) - registry0
        kernel_threads, foreign = _split_others(machine0, machine1, client + nginx + registry)
        holder.append(
            CpuUse(
                wall=wall,
                client=client,
                nginx=nginx,
                registry=registry,
                kernel_threads=kernel_threads,
                foreign=foreign,
            )
        )
