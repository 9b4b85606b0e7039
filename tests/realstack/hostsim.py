"""The registry host for real: the program's own files, run by real nginx and a real registry.

`materialize` runs the program's recorded file-placing commands for every file of
`manifest.REGISTRY_HOST` (their `create` text with their stdin, through bash, as SSH would) in a
`Sandbox`, so the files land in a test directory with the owners and modes the host would give
them.

`RegistryHostSim` then starts the services the way the compose file describes them, with
Debian's `nginx` and `docker-registry` instead of the images:

    client netns (client's private IP) ──veth──► host netns (registry's private IP)
    public netns (an Internet address) ──veth──►    (and the registry's public IP)
                                                    nginx, listening as published
                                     │ the API's Unix socket  │ veth ("compose network")
                                     ▼                        ▼
                              container netns: the registry (API socket, debug port)

Each compose bind mount becomes a bind mount at the same container path, and each named volume
a directory of the test with its tmpfs options' mode and owners, mounted in every service that
names it; `environment` and `env_file` become the process environment; the services' entrypoint
and command run as compose would run them; the registry's service name resolves through a
private /etc/hosts. A port compose publishes on one host address only (`IP:PORT:PORT`) is
refused on the host's other addresses, as Docker's binding to that address would. The only
adaptation is `IMAGE_REGISTRY_COMMAND` (see there). Nothing outside the test directory and the
namespaces is touched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

import yaml

from components.manifest import (
    CLIENT_HOST,
    REGISTRY_HOST,
    REGISTRY_LAYOUT,
    HostManifest,
    command_name,
)
from components.versions import NGINX_WORKER_GID
from tests.harness import ProgramRun, Registration
from tests.realstack.sandbox import Sandbox, overlay_mount

# The ONE adaptation: the registry image's `registry` binary (on its PATH) is Debian's build of
# distribution v2.8, `docker-registry`; a `registry` on the registry service's PATH runs it with
# the same arguments. Compose's entrypoint and command (with the config path, always explicit)
# run unchanged.
IMAGE_REGISTRY_COMMAND = '#!/bin/sh\nexec docker-registry "$@"\n'

# The nginx:alpine image's `nginx` user and group (same id), which nginx.conf's `user` names.
NGINX_ID = NGINX_WORKER_GID
COMPOSE_NET_PREFIX = "172.31.250"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# One `key=value` field of a registry (logrus) log line; a value with spaces is quoted.
LOG_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')
# curl printing only the response's status code (000 when it could not connect).
CURL_STATUS = ("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}")
NETMASK = 20
T = TypeVar("T")


def sh(
    *argv: str, input: bytes | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv), input=input, capture_output=True, check=check, timeout=timeout
    )


def run_client(
    full_argv: Sequence[str], argv: Sequence[str], input: bytes | None, timeout: float, check: bool
) -> subprocess.CompletedProcess[bytes]:
    """Run a client command line (`full_argv`, wrapping `argv`); with `check`, fail naming
    `argv` and the end of its stderr."""
    result = sh(*full_argv, input=input, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"client command failed ({result.returncode}): "
            f"{' '.join(argv)}\n{result.stderr.decode()[-3000:]}"
        )
    return result


def with_image_nginx_user() -> dict[str, str]:
    """This machine's /etc/passwd and /etc/group with the image's `nginx` user and group
    added (unless this machine has them)."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if "\nnginx:" not in "\n" + passwd:
        passwd += f"nginx:x:{NGINX_ID}:{NGINX_ID}:nginx:/nonexistent:/usr/sbin/nologin\n"
    if "\nnginx:" not in "\n" + group:
        group += f"nginx:x:{NGINX_ID}:\n"
    return {"/etc/passwd": passwd, "/etc/group": group}


# The program's component that is the registry host (its resources are named after it).
REGISTRY_HOST_NAME = "registry"


@dataclass
class HostFiles:
    """What the program places on the registry host, materialized in `sandbox`."""

    sandbox: Sandbox
    compose: dict[str, Any]

    def host_path(self, path: str) -> Path:
        """Where the file the host has at `path` is, in the test directory."""
        return self.sandbox.upper(path)


def run_placing(sandbox: Sandbox, command: Registration) -> None:
    """Run one recorded place-file command in the sandbox; fail with its stderr."""
    result = sandbox.run_command(command)
    if result.returncode != 0:
        raise AssertionError(f"{command.name} failed: {result.stderr.decode()}")


def materialize(
    run: ProgramRun,
    workdir: Path,
    host_name: str = REGISTRY_HOST_NAME,
    host_manifest: HostManifest = REGISTRY_HOST,
) -> HostFiles:
    """Place every file of the registry host's manifest as the host `host_name` would."""
    sandbox = Sandbox(workdir)
    for host_file in host_manifest.files:
        run_placing(sandbox, run.named(command_name(host_name, host_file)))
    compose_file = sandbox.upper(host_manifest.file("compose").path)
    return HostFiles(sandbox=sandbox, compose=yaml.safe_load(compose_file.read_text()))


def bind_mounts(compose: Mapping[str, Any], service: str) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of each of a compose service's bind mounts."""
    mounts = []
    for volume in compose["services"][service].get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("/"):
            mounts.append((source, target, mode == ["ro"]))
    return mounts


def named_volumes(compose: Mapping[str, Any], service: str) -> list[tuple[str, str, bool]]:
    """(volume name, container path, read-only) of each named volume a compose service mounts."""
    mounts = []
    for volume in compose["services"][service].get("volumes", []):
        source, target, *mode = volume.split(":")
        if not source.startswith("/"):
            if source not in compose.get("volumes", {}):
                raise AssertionError(f"{service} mounts the undeclared volume {source}")
            mounts.append((source, target, mode == ["ro"]))
    return mounts


def tmpfs_options(compose: Mapping[str, Any], volume: str) -> dict[str, str]:
    """The mount options of a named tmpfs volume (`driver_opts.o`), e.g. {"mode": "2750"}."""
    options = compose["volumes"][volume]["driver_opts"]
    if (options["type"], options["device"]) != ("tmpfs", "tmpfs"):
        raise AssertionError(f"volume {volume} is not a tmpfs: {options}")
    return dict(option.split("=", 1) for option in options["o"].split(","))


def service_argv(
    compose: Mapping[str, Any], service: str, command: Sequence[str] | None = None
) -> list[str]:
    """What compose runs for a service: its entrypoint, then its command (or `command`, as
    `compose run SERVICE COMMAND...` gives it), after compose's interpolation (`$$` is `$`; the
    rendered file has no variables)."""
    spec = compose["services"][service]
    argv = [*spec.get("entrypoint", []), *(spec.get("command", []) if command is None else [])]
    for word in argv:
        if "$" in word.replace("$$", ""):
            raise AssertionError(f"compose would interpolate a variable in {word!r}")
    return [word.replace("$$", "$") for word in argv] + list(command or [])


def container_view(
    compose: Mapping[str, Any], service: str, host_files: Mapping[str, T]
) -> dict[str, T]:
    """Container path -> value of every host file (path -> value) the service's mounts show."""
    view = {}
    for source, target, _ in bind_mounts(compose, service):
        for path, value in host_files.items():
            if path.startswith(source + "/"):
                view[target + path.removeprefix(source)] = value
    return view


def nginx_conf_path(
    compose: Mapping[str, Any], service: str = REGISTRY_LAYOUT.nginx_service
) -> str:
    """The config file nginx's compose command starts it with (`-c PATH`)."""
    command = compose["services"][service]["command"]
    return str(command[command.index("-c") + 1])


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


@dataclass(frozen=True)
class ClusterNode:
    """A registry host as one node of a cluster (tests/realstack/cluster.py): its name in the
    program, its manifest and private IP, the bridge it joins in the cluster's namespace, a
    compose network of its own (the bridge routes to it), and what its registry sees of the
    outside (host names, environment)."""

    host_name: str
    host_manifest: HostManifest
    netns_prefix: str  # unique, at most 12 characters (interface names derive from it)
    private_ip: str
    compose_net_prefix: str
    fabric_netns: str
    bridge: str
    host_routes: tuple[str, ...]  # on-link routes from the host (e.g. to the object store)
    extra_hosts: str
    registry_environment: dict[str, str]


@dataclass
class Service:
    """A compose service as processes will run it."""

    name: str
    binds: list[tuple[Path, str, bool]]  # (test directory, container path, read-only)
    environment: dict[str, str]
    argv: list[str]


class RegistryHostSim:
    """Start, drive and stop the simulated registry host. Use as a context manager."""

    def __init__(
        self,
        run: ProgramRun,
        workdir: Path,
        client_ip: str | None = None,
        expose_registry_port: bool = False,
        node: ClusterNode | None = None,
        host_manifest: HostManifest = REGISTRY_HOST,
        service_etc: Mapping[str, Mapping[str, str]] | None = None,
        registry_binary: Path | None = None,
    ) -> None:
        """`host_manifest`: what the program places on this (not clustered) host.
        `registry_binary`: a build of distribution that runs as the image's `registry` instead of
        Debian's (`bench.soak --registry-binary`: the version the hosts run).
        `service_etc`: per compose service, files of its /etc beyond the machine's (e.g. a CA
        bundle), and `hosts` lines added to its /etc/hosts."""
        self.run = run
        self.workdir = workdir
        self.node = node
        self.host_manifest = host_manifest if node is None else node.host_manifest
        self.service_etc = service_etc or {}
        self.registry_binary = registry_binary
        if node is None:
            self.files = materialize(run, workdir, host_manifest=host_manifest)
            self.registry_ip = run.outputs["registryPrivateIp"]
            self.compose_net_prefix = COMPOSE_NET_PREFIX
        else:
            self.files = materialize(run, workdir, node.host_name, node.host_manifest)
            self.registry_ip = node.private_ip
            self.compose_net_prefix = node.compose_net_prefix
        self.client_ip = client_ip or (run.outputs["clientPrivateIps"] or ["10.110.0.200"])[0]
        self.public_ip = run.outputs["registryPublicIp"]
        # Somewhere on the Internet: another address of the registry's public /24.
        public_net = ipaddress.ip_network(f"{self.public_ip}/24", strict=False)
        self.internet_ip = str(
            next(ip for ip in reversed(list(public_net.hosts())) if str(ip) != self.public_ip)
        )
        self.address = run.outputs["registryAddress"]
        self.registry_name, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.passwords: dict[str, str] = run.outputs["passwords"]
        self.ca_pem: str = run.outputs["caCertificatePem"]
        self.expose_registry_port = expose_registry_port
        tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000:03d}"[-7:]
        self.ns_client, self.ns_host, self.ns_container, self.ns_public = (
            f"rs{tag}{role}" for role in "xhcp"
        )
        if node is not None:
            self.ns_host, self.ns_container = f"{node.netns_prefix}h", f"{node.netns_prefix}c"
        self.container_ip = f"{self.compose_net_prefix}.2"
        self.data_dir = workdir / "data-volume"  # the data volume, mounted at data_mount
        self.nginx_cache = workdir / "nginx-var-cache"
        self.logs = workdir / "logs"
        self.services = self._services()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []  # every service process ever started
        self.client_etc: Path | None = None

    # -- compose file -> processes --------------------------------------------------------
    def _services(self) -> dict[str, Service]:
        services = {}
        for name, spec in self.files.compose["services"].items():
            binds = [
                (self._host_source(source), target, read_only)
                for source, target, read_only in bind_mounts(self.files.compose, name)
            ]
            environment = {}
            for env_file in spec.get("env_file", []):
                environment.update(_env_file(self.files.host_path(env_file)))
            environment.update(
                {key: str(value) for key, value in (spec.get("environment") or {}).items()}
            )
            binds += [
                (self.volume_path(volume), target, read_only)
                for volume, target, read_only in named_volumes(self.files.compose, name)
            ]
            if self._runs_registry_image(name):
                image_bin = self.workdir / "registry-image-bin"
                image_bin.mkdir(exist_ok=True)
                if self.registry_binary is None:
                    (image_bin / "registry").write_text(IMAGE_REGISTRY_COMMAND)
                else:
                    shutil.copyfile(self.registry_binary, image_bin / "registry")
                (image_bin / "registry").chmod(0o755)
                environment["PATH"] = f"{image_bin}:{SERVICE_PATH}"
            argv = service_argv(self.files.compose, name)
            services[name] = Service(name=name, binds=binds, environment=environment, argv=argv)
        return services

    def _runs_registry_image(self, name: str) -> bool:
        """The registry's service and any other of its image (the Docker Hub cache)."""
        services = self.files.compose["services"]
        return bool(services[name]["image"] == services[REGISTRY_LAYOUT.registry_service]["image"])

    def volume_path(self, volume: str) -> Path:
        """The directory of the test that is the named (tmpfs) volume `volume`, with the mode and
        owners of its mount options."""
        path = self.workdir / "volumes" / volume
        if not path.exists():
            options = tmpfs_options(self.files.compose, volume)
            path.mkdir(parents=True)
            os.chown(path, int(options.get("uid", 0)), int(options.get("gid", 0)))
            path.chmod(int(options.get("mode", "1777"), 8))
        return path

    def _host_source(self, source: str) -> Path:
        if Sandbox.covers(source):
            # Docker creates a missing bind-mount source directory; so does the sim.
            path = self.files.host_path(source)
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = self.data_path(source)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_path(self, path: str) -> Path:
        """Where the host path `path` on the data volume is, in the test directory."""
        mount = REGISTRY_LAYOUT.data_mount
        if not path.startswith(mount + "/"):
            raise AssertionError(f"{path} is neither placed by the program nor on {mount}")
        return self.data_dir / path.removeprefix(mount + "/")

    @property
    def published_port(self) -> int:
        ports = self.files.compose["services"][REGISTRY_LAYOUT.nginx_service]["ports"]
        host_port, _, container_port = ports[0].partition(":")
        assert host_port == container_port, "the sim publishes the port unchanged"
        return int(host_port)

    # -- namespaces -----------------------------------------------------------------------
    @property
    def namespaces(self) -> tuple[str, ...]:
        """The network namespaces this host makes (a cluster node has no client of its own)."""
        if self.node is not None:
            return (self.ns_host, self.ns_container)
        return (self.ns_client, self.ns_host, self.ns_container, self.ns_public)

    def _netns(self) -> None:
        if self.node is not None:
            self._node_netns(self.node)
            return
        x, h, c, p = self.ns_client, self.ns_host, self.ns_container, self.ns_public
        for ns in (x, h, c, p):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            f"{x}0",
            "netns",
            x,
            "type",
            "veth",
            "peer",
            "name",
            f"{h}0",
            "netns",
            h,
        )
        sh(
            "ip",
            "link",
            "add",
            f"{h}1",
            "netns",
            h,
            "type",
            "veth",
            "peer",
            "name",
            f"{c}1",
            "netns",
            c,
        )
        sh(
            "ip",
            "link",
            "add",
            f"{p}0",
            "netns",
            p,
            "type",
            "veth",
            "peer",
            "name",
            f"{h}2",
            "netns",
            h,
        )
        sh("ip", "-n", p, "addr", "add", f"{self.internet_ip}/24", "dev", f"{p}0")
        sh("ip", "-n", h, "addr", "add", f"{self.public_ip}/24", "dev", f"{h}2")
        sh("ip", "-n", x, "addr", "add", f"{self.client_ip}/{NETMASK}", "dev", f"{x}0")
        sh("ip", "-n", h, "addr", "add", f"{self.registry_ip}/{NETMASK}", "dev", f"{h}0")
        sh("ip", "-n", h, "addr", "add", f"{self.compose_net_prefix}.1/24", "dev", f"{h}1")
        sh("ip", "-n", c, "addr", "add", f"{self.container_ip}/24", "dev", f"{c}1")
        for ns, dev in (
            (x, f"{x}0"),
            (h, f"{h}0"),
            (h, f"{h}1"),
            (c, f"{c}1"),
            (p, f"{p}0"),
            (h, f"{h}2"),
        ):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self._publish_on_one_address_only()
        sh("ip", "-n", c, "route", "add", "default", "via", f"{self.compose_net_prefix}.1")
        if self.expose_registry_port:
            # Benchmark only: a route from the client straight to the registry's own port.
            sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh(
                "ip",
                "-n",
                x,
                "route",
                "add",
                f"{self.compose_net_prefix}.0/24",
                "via",
                self.registry_ip,
            )

    def _node_netns(self, node: ClusterNode) -> None:
        """Host and container namespaces; the host's private IP on the cluster's bridge, and
        the host forwarding for its compose network (which the bridge routes to it)."""
        h, c = self.ns_host, self.ns_container
        for ns in (h, c):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        outside = f"{h}b"
        sh("ip", "link", "add", f"{h}0", "netns", h, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", outside, "netns", node.fabric_netns)
        sh("ip", "-n", node.fabric_netns, "link", "set", outside, "master", node.bridge, "up")
        sh("ip", "link", "add", f"{h}1", "netns", h, "type", "veth", "peer", "name", f"{c}1")
        sh("ip", "link", "set", f"{c}1", "netns", c)
        sh("ip", "-n", h, "addr", "add", f"{self.registry_ip}/{NETMASK}", "dev", f"{h}0")
        sh("ip", "-n", h, "addr", "add", f"{self.compose_net_prefix}.1/24", "dev", f"{h}1")
        sh("ip", "-n", c, "addr", "add", f"{self.container_ip}/24", "dev", f"{c}1")
        for ns, dev in ((h, f"{h}0"), (h, f"{h}1"), (c, f"{c}1")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", f"{self.compose_net_prefix}.1")
        sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for route in node.host_routes:
            sh("ip", "-n", h, "route", "add", route, "dev", f"{h}0")
        sh(
            "ip",
            "-n",
            node.fabric_netns,
            "route",
            "add",
            f"{self.compose_net_prefix}.0/24",
            "via",
            self.registry_ip,
        )

    def _publish_on_one_address_only(self) -> None:
        """nginx runs in the host's namespace, where it listens on every address; a port compose
        publishes on one address only (`IP:PORT:PORT`) is refused on the others, as it would be
        on a host where Docker binds it to that address alone."""
        ports = self.files.compose["services"][REGISTRY_LAYOUT.nginx_service]["ports"]
        for entry in ports:
            parts = str(entry).split(":")
            if len(parts) != 3:
                continue
            address, host_port, container_port = parts
            assert host_port == container_port, "the sim publishes ports unchanged"
            sh(
                "ip",
                "netns",
                "exec",
                self.ns_host,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                host_port,
                "!",
                "-d",
                address,
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            )

    def _container_script(self, service: Service, etc_upper: Path) -> str:
        """Shell run inside a netns: the service in a root of its own, then exec.

        The root is a tmpfs of the test with the machine's programs read-only (`/usr` and its
        top-level links), overlays of `/etc` and `/var` whose changes stay in the test, the
        test's directories (`/tmp`) and the service's binds: a mount point is made in that
        root, never in the machine's tree, whatever exists there."""
        root = Path(f"{etc_upper}-root")
        q_root = shlex.quote(str(root))
        root.mkdir(parents=True, exist_ok=True)
        steps = ["set -e", "mount --make-rprivate /", f"mount -t tmpfs tmpfs {q_root}"]
        for entry in sorted(Path("/").iterdir()):
            if entry.name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"):
                if entry.is_symlink():
                    link = shlex.quote(os.readlink(entry))
                    steps.append(f"ln -s {link} {q_root}/{entry.name}")
                else:
                    steps += [
                        f"mkdir {q_root}/{entry.name}",
                        f"mount --rbind /{entry.name} {q_root}/{entry.name}",
                        f"mount -o remount,bind,ro {q_root}/{entry.name}",
                    ]
        for directory, upper in (("etc", etc_upper), ("var", Path(f"{etc_upper}-var"))):
            work = Path(f"{etc_upper}-{directory}-work")
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            steps += [
                f"mkdir {q_root}/{directory}",
                overlay_mount(f"/{directory}", upper, work, target=f"{root}/{directory}"),
            ]
        for directory in ("tmp", "dev", "proc", "sys"):
            steps += [
                f"mkdir {q_root}/{directory}",
                f"mount --rbind /{directory} {q_root}/{directory}",
            ]
        steps += [f"mkdir {q_root}/run", f"mount -t tmpfs tmpfs {q_root}/run"]
        for source, target, read_only in service.binds:
            q_source, q_target = shlex.quote(str(source)), shlex.quote(f"{root}{target}")
            steps.append(f"mkdir -p {q_target}")
            steps.append(f"mount --bind {q_source} {q_target}")
            if read_only:
                steps.append(f"mount -o remount,bind,ro {q_target}")
        if service.name == REGISTRY_LAYOUT.nginx_service:
            self.nginx_cache.mkdir(parents=True, exist_ok=True)
            (self.nginx_cache / "nginx").mkdir(exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(str(self.nginx_cache))} {q_root}/var/cache")
        steps.append(f'exec chroot {q_root} "$@"')
        return "\n".join(steps)

    def _etc_upper(self, name: str, hosts: str) -> Path:
        """An /etc overlay upper dir: the images' `nginx` user, and a private /etc/hosts."""
        upper = self.workdir / f"etc-{name}"
        upper.mkdir(parents=True, exist_ok=True)
        for path, text in with_image_nginx_user().items():
            (upper / Path(path).name).write_text(text)
        (upper / "hosts").write_text(hosts)
        return upper

    def start_service(self, name: str) -> None:
        service = self.services[name]
        netns = self.netns_of(name)
        hosts = f"127.0.0.1 localhost\n{self.container_ip} {REGISTRY_LAYOUT.registry_service}\n"
        extra_env: dict[str, str] = {}
        if self.node is not None and name == REGISTRY_LAYOUT.registry_service:
            hosts += self.node.extra_hosts
            extra_env = self.node.registry_environment
        extra_etc = dict(self.service_etc.get(name, {}))
        hosts += extra_etc.pop("hosts", "")
        etc_upper = self._etc_upper(name, hosts)
        for relative, text in extra_etc.items():
            (etc_upper / relative).parent.mkdir(parents=True, exist_ok=True)
            (etc_upper / relative).write_text(text)
        self.logs.mkdir(exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        env = {
            "PATH": SERVICE_PATH,
            **service.environment,
            **extra_env,
        }
        self.processes[name] = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "bash",
                "-c",
                self._container_script(service, etc_upper),
                name,
                *service.argv,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.started_pids.append(self.processes[name].pid)
        log.close()

    def netns_of(self, name: str) -> str:
        """The registry image's services (the registry, the Docker Hub cache) run in the
        container's namespace (their sockets and debug ports differ), nginx in the host's
        (where compose publishes its port)."""
        return self.ns_container if self._runs_registry_image(name) else self.ns_host

    def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the service, then reap whatever it left in its namespace (nginx workers
        outlive a SIGKILLed master)."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._kill_netns_pids(self.netns_of(name))

    def _kill_netns_pids(self, netns: str) -> None:
        pids = sh("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while sh("ip", "netns", "pids", netns, check=False).stdout.split():
            if time.monotonic() > deadline:
                raise AssertionError(f"processes left in {netns}")
            time.sleep(0.05)

    def access_log(self) -> list[dict[str, Any]]:
        """nginx's access log entries (its stdout, which dockerd keeps), parsed as JSON; each
        worker flushes its log buffer every few seconds."""
        text = (self.logs / f"{REGISTRY_LAYOUT.nginx_service}.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def registry_requests(self) -> list[dict[str, str]]:
        """The fields (`http.request.method`, `http.request.uri`, ...) of every request the
        registry answered, oldest first, from its log (written at once, unlike nginx's)."""
        text = (self.logs / f"{REGISTRY_LAYOUT.registry_service}.log").read_text(errors="replace")
        return [
            {key: value.strip('"') for key, value in LOG_FIELD.findall(line)}
            for line in text.splitlines()
            if 'msg="response completed"' in line
        ]

    def service_pid(self, name: str) -> int:
        return self.processes[name].pid

    def reload_nginx(self) -> None:
        """What `systemctl reload registry` runs: `nginx -c <conf> -s reload` in nginx's
        namespaces (the compose service's `exec`)."""
        nginx = REGISTRY_LAYOUT.nginx_service
        conf = self.services[nginx].argv[self.services[nginx].argv.index("-c") + 1]
        before = set(self._nginx_workers())
        result = sh(
            "nsenter",
            "-t",
            str(self.service_pid(nginx)),
            "-m",
            "-r",  # the service's own root
            "-n",
            "nginx",
            "-c",
            conf,
            "-s",
            "reload",
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"nginx reload failed: {result.stderr.decode()}")
        self._wait_old_nginx_workers_stop_accepting(before)

    def _nginx_workers(self) -> dict[int, str]:
        """pid -> process title of nginx's workers in the host's namespace."""
        workers = {}
        for pid in sh("ip", "netns", "pids", self.ns_host, check=False).stdout.split():
            try:
                title = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
            except OSError:
                continue
            title_text = title.replace(b"\0", b" ").decode(errors="replace").strip()
            if title_text.startswith("nginx: worker process"):
                workers[int(pid)] = title_text
        return workers

    def _wait_old_nginx_workers_stop_accepting(self, before: set[int]) -> None:
        """`nginx -s reload` returns before the master has replaced its workers; with
        `reuseport` each worker has its own listening socket, so until the old workers close
        theirs (they then say "is shutting down") a new connection may still get the old
        config. Wait for that, and for a new worker."""

        def replaced() -> bool:
            workers = self._nginx_workers()
            old_serving = [pid for pid in before if workers.get(pid) == "nginx: worker process"]
            return not old_serving and any(pid not in before for pid in workers)

        self._wait("nginx's workers replaced after a reload", replaced, timeout=30)

    def place_file(self, run: ProgramRun, role: str) -> None:
        """Re-run one of a (new) run's file-placing commands against the live host files."""
        run_placing(
            self.files.sandbox,
            run.named(command_name(REGISTRY_HOST_NAME, self.host_manifest.file(role))),
        )

    # -- readiness ------------------------------------------------------------------------
    def _wait(self, what: str, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )
        raise AssertionError(f"{what} not ready within {timeout}s\n{logs}")

    def _http_code(self, netns: str, url: str, *curl_args: str) -> str:
        result = sh(
            "ip",
            "netns",
            "exec",
            netns,
            *CURL_STATUS,
            "--max-time",
            "3",
            *curl_args,
            url,
            check=False,
        )
        return result.stdout.decode()

    def registry_api(self) -> tuple[str, ...]:
        """curl arguments that reach the registry's API as its placed config says it listens:
        its Unix socket (through the volume's directory), or a TCP address in its namespace."""
        http = yaml.safe_load(
            self.files.host_path(REGISTRY_HOST.file("registry_config").path).read_text()
        )["http"]
        if http.get("net") == "unix":
            for volume, target, _ in named_volumes(
                self.files.compose, REGISTRY_LAYOUT.registry_service
            ):
                if http["addr"].startswith(target + "/"):
                    socket = self.volume_path(volume) / http["addr"].removeprefix(target + "/")
                    return ("--unix-socket", str(socket), "http://registry")
            raise AssertionError(f"the registry's socket {http['addr']} is on no shared volume")
        host, _, port = http["addr"].rpartition(":")
        return (f"http://{host or self.container_ip}:{port}",)

    def start_hub_cache(self) -> None:
        """Start the Docker Hub cache and wait until its API socket answers."""
        self.start_service(REGISTRY_LAYOUT.hub_cache_service)
        socket = (
            self.volume_path(REGISTRY_LAYOUT.hub_cache_socket_volume)
            / PurePosixPath(REGISTRY_LAYOUT.hub_cache_socket).name
        )
        self._wait(
            "Docker Hub cache",
            lambda: (
                self._http_code(self.ns_host, "http://hub-cache/v2/", "--unix-socket", str(socket))
                == "200"
            ),
        )

    def route_compose_network_to_the_internet(self) -> None:
        """Let the containers reach the Internet side (the public namespace), as Docker's NAT
        lets them reach the Internet: the host forwards, the Internet side routes back."""
        sh("ip", "netns", "exec", self.ns_host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(
            "ip",
            "-n",
            self.ns_public,
            "route",
            "add",
            f"{self.compose_net_prefix}.0/24",
            "via",
            self.public_ip,
        )

    def service_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_registry(self) -> None:
        *options, base = self.registry_api()
        self._wait(
            "registry", lambda: self._http_code(self.ns_host, f"{base}/v2/", *options) == "200"
        )

    def wait_nginx(self) -> None:
        url = f"https://{self.registry_name}:{self.port}/v2/"
        resolve = f"{self.registry_name}:{self.port}:{self.registry_ip}"
        self._wait(
            "nginx",
            lambda: (
                self._http_code(
                    self.ns_client, url, "--resolve", resolve, "--cacert", str(self.ca_file)
                )
                == "401"
            ),
        )

    @property
    def ca_file(self) -> Path:
        path = self.workdir / "ca.crt"
        if not path.exists():
            path.write_text(self.ca_pem)
        return path

    # -- the client -----------------------------------------------------------------------
    def set_client_etc(self, etc_upper: Path) -> None:
        """Run client commands over this /etc (e.g. what the program's trust script left)."""
        self.client_etc = etc_upper

    def client_argv(self, argv: Sequence[str], trusted: bool = True) -> list[str]:
        """argv run in the client netns; with `trusted`, /etc is a read-only overlay of the
        client's trusted /etc (CA in certs.d and the system store, registry name in hosts)."""
        if trusted and self.client_etc is not None:
            mount = (
                f"mount -t overlay overlay -o "
                f"lowerdir={shlex.quote(str(self.client_etc))}:/etc /etc && "
            )
        else:
            mount = ""
        return [
            "ip",
            "netns",
            "exec",
            self.ns_client,
            "bash",
            "-c",
            f'{mount}exec "$@"',
            "client",
            *argv,
        ]

    def client(
        self,
        *argv: str,
        input: bytes | None = None,
        trusted: bool = True,
        timeout: float = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_client(self.client_argv(argv, trusted), argv, input, timeout, check)

    def verify_tls(
        self, name: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """`openssl s_client` from the client to the TLS port, asking for `name` (SNI) and
        verifying the chain against the stack's CA and the certificate against `name`."""
        return self.client(
            "openssl",
            "s_client",
            "-connect",
            f"{self.registry_ip}:{self.port}",
            "-servername",
            name,
            "-CAfile",
            str(self.ca_file),
            "-verify_hostname",
            name,
            "-verify_return_error",
            input=b"",
            check=check,
            trusted=False,
            timeout=timeout,
        )

    def run_disk_check(self, mount_volume: str = "") -> subprocess.CompletedProcess[bytes]:
        """Run the placed registry-disk.sh in the host's sandbox after `mount_volume` (a shell
        command that puts a volume at the data mount; none: nothing mounted there). The host's
        /srv is a private tmpfs there: the machine's is never touched."""
        mount = REGISTRY_LAYOUT.data_mount
        steps = [
            f"mount -t tmpfs tmpfs {shlex.quote(str(Path(mount).parent))}",
            f"mkdir -p {mount}",
        ]
        if mount_volume:
            steps.append(mount_volume)
        steps.append(f"{REGISTRY_HOST.file('disk_script').path} 2>&1")
        return self.files.sandbox.run(" && ".join(steps))

    def host_exec(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the registry host's network namespace."""
        return sh("ip", "netns", "exec", self.ns_host, *argv, check=check)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RegistryHostSim:
        self.start_network()
        self.start_services()
        return self

    def start_network(self) -> None:
        """The namespaces and links, before any service (so a test can start something on the
        Internet side the services need at start)."""
        self._netns()

    def start_services(self) -> None:
        """The registry (and the Docker Hub cache, when compose has it), then nginx, each waited
        for (what `compose up --wait` does)."""
        self.start_service(REGISTRY_LAYOUT.registry_service)
        self.wait_registry()
        if REGISTRY_LAYOUT.hub_cache_service in self.files.compose["services"]:
            self.start_hub_cache()
        self.start_service(REGISTRY_LAYOUT.nginx_service)
        if self.node is None:
            self.wait_nginx()
        else:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        """Until the node's health endpoint answers 200 on its own address."""
        url = f"https://{self.registry_ip}:{self.port}{REGISTRY_LAYOUT.health_path}"
        self._wait("node health", lambda: self._http_code(self.ns_host, url, "-k") == "200")

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_service(name)
        for ns in self.namespaces:
            if ns in sh("ip", "netns", "list", check=False).stdout.decode():
                self._kill_netns_pids(ns)
                sh("ip", "netns", "del", ns, check=False)

    def public_argv(self, argv: Sequence[str]) -> list[str]:
        """argv run on the Internet side: in the public netns, which reaches only the registry's
        public IP."""
        return ["ip", "netns", "exec", self.ns_public, *argv]

    def leftovers(self) -> list[str]:
        """What `stop` failed to clean up: namespaces, service processes, anything still
        running from the test directory."""
        namespaces = sh("ip", "netns", "list", check=False).stdout.decode()
        found = [f"netns {ns}" for ns in self.namespaces if ns in namespaces]
        found += [f"pid {pid}" for pid in self.started_pids if Path(f"/proc/{pid}").exists()]
        if str(self.workdir) in sh("ps", "-eo", "args").stdout.decode():
            found.append(f"a process running from {self.workdir}")
        return found

    def __enter__(self) -> RegistryHostSim:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def apply_client_trust(
    run: ProgramRun, workdir: Path, client: str = "client-0"
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run a client's CA-file and trust commands, as the client host would, in a `Sandbox` of
    `workdir` (its /etc changes land in `Sandbox(workdir).upper("/etc")`)."""
    sandbox = Sandbox(workdir)
    entries = (CLIENT_HOST.file("ca_cert"), CLIENT_HOST.script("trust_registry"))
    return [sandbox.run_command(run.named(command_name(client, entry))) for entry in entries]


def trusting_client_etc(run: ProgramRun, workdir: Path, client: str = "client-0") -> Path:
    """`apply_client_trust`, which must succeed; the client's /etc, to run clients over."""
    for result in apply_client_trust(run, workdir, client):
        if result.returncode != 0:
            raise AssertionError(f"client trust failed: {result.stderr.decode()}")
    return Sandbox(workdir).upper("/etc")


class Simulation(AbstractContextManager[Any], Protocol):
    def leftovers(self) -> list[str]: ...


SimulationT = TypeVar("SimulationT", bound=Simulation)


@contextmanager
def running(simulation: SimulationT) -> Iterator[SimulationT]:
    """The simulation started, and stopped after: nothing of it may be left behind."""
    with simulation:
        yield simulation
    assert not simulation.leftovers(), "left behind"
