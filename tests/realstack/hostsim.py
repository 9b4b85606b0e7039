"""The registry host for real: the program's own files, run by real nginx and a real registry.

`materialize` runs the program's recorded file-placing commands (their `create` text with their
stdin, through bash, as SSH would) in a private mount namespace whose /etc is an overlay, so the
files land in a test directory with the owners and modes the host would give them.

`RegistryHostSim` then starts the services the way the compose file describes them, with
Debian's `nginx` and `docker-registry` instead of the images:

    client netns (client's private IP) ──veth──► host netns (registry's private IP)
                                                    nginx, listening as published
                                                        │ veth ("compose network")
                                                        ▼
                                                 container netns: registry on :5000

Each compose volume becomes a bind mount at the same container path; `environment` and
`env_file` become the process environment; the service name `registry` resolves through a
private /etc/hosts. The only adaptation is `REGISTRY_ARGV` (see there). Nothing outside the
test directory and the namespaces is touched.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.versions import NGINX_WORKER_GID
from tests.harness import ProgramRun

# The ONE adaptation of the rendered files: the registry image's entrypoint runs
# `registry serve /etc/distribution/config.yml` (v3's default config path, where compose mounts
# the rendered config). Debian packages distribution v2.8 as `docker-registry`, whose default
# path is the v2 one, so the same mounted file is passed explicitly. Nothing else differs.
REGISTRY_ARGV = ("docker-registry", "serve", "/etc/distribution/config.yml")

# The nginx:alpine image's `nginx` user and group (same id), which nginx.conf's `user` names.
NGINX_ID = NGINX_WORKER_GID
COMPOSE_NET_PREFIX = "172.31.250"
NETMASK = 20


def sh(*argv: str, input: bytes | None = None, check: bool = True,
       timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), input=input, capture_output=True, check=check,
                          timeout=timeout)


def _overlay_etc(upper: Path, work: Path) -> str:
    return (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={shlex.quote(str(upper))},"
            f"workdir={shlex.quote(str(work))} /etc")


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


def run_in_private_etc(
        create: str, stdin: bytes, upper: Path, work: Path,
        extra_binds: Mapping[str, Path] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a recorded command text (`bash -c`, as sshd runs it) with its stdin, with /etc an
    overlay whose changes land in `upper`; `extra_binds` maps host paths to test directories."""
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    steps = [_overlay_etc(upper, work)]
    for target, source in (extra_binds or {}).items():
        source.mkdir(parents=True, exist_ok=True)
        steps.append(f"mkdir -p {shlex.quote(target)} && "
                     f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
    steps.append('exec bash -c "$1"')
    return sh("unshare", "-m", "--propagation", "private", "bash", "-c", " && ".join(steps),
              "private-etc", create, input=stdin, check=False, timeout=120)


@dataclass
class HostFiles:
    """What the program places on the registry host, materialized under `etc` (the host's /etc)."""

    etc: Path
    compose: dict[str, Any]

    def host_path(self, path: str) -> Path:
        if not path.startswith("/etc/"):
            raise ValueError(f"{path} is not under /etc")
        return self.etc / path.removeprefix("/etc/")


def materialize(run: ProgramRun, workdir: Path, prefix: str = "registry-file-") -> HostFiles:
    """Execute every `<prefix>*` command of the run as the host would; return where files are."""
    etc = workdir / "etc-upper"
    commands = sorted((c for c in run.commands() if c.name.startswith(prefix)),
                      key=lambda c: c.name)
    if not commands:
        raise AssertionError(f"the program placed no files ({prefix}*)")
    for command in commands:
        result = run_in_private_etc(command.inputs["create"], command.inputs["stdin"].encode(),
                                    etc, workdir / "etc-work")
        if result.returncode != 0:
            raise AssertionError(f"{command.name} failed: {result.stderr.decode()}")
    compose = yaml.safe_load((etc / "registry" / "compose.yaml").read_text())
    return HostFiles(etc=etc, compose=compose)


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


@dataclass
class Service:
    """A compose service as processes will run it."""

    name: str
    binds: list[tuple[Path, str, bool]]  # (test directory, container path, read-only)
    environment: dict[str, str]
    argv: list[str]


class RegistryHostSim:
    """Start, drive and stop the simulated registry host. Use as a context manager."""

    def __init__(self, run: ProgramRun, workdir: Path, client_ip: str | None = None,
                 expose_registry_port: bool = False) -> None:
        self.run = run
        self.workdir = workdir
        self.files = materialize(run, workdir)
        self.registry_ip = run.outputs["registryPrivateIp"]
        self.client_ip = client_ip or (run.outputs["clientPrivateIps"] or ["10.110.0.200"])[0]
        self.address = run.outputs["registryAddress"]
        self.registry_name, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.passwords: dict[str, str] = run.outputs["passwords"]
        self.ca_pem: str = run.outputs["caCertificatePem"]
        self.expose_registry_port = expose_registry_port
        tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000:03d}"[-7:]
        self.ns_client, self.ns_host, self.ns_container = (f"rs{tag}{role}" for role in "xhc")
        self.container_ip = f"{COMPOSE_NET_PREFIX}.2"
        self.data_dir = workdir / "srv"
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
            binds = []
            for volume in spec.get("volumes", []):
                source, target, *mode = volume.split(":")
                binds.append((self._host_source(source), target, mode == ["ro"]))
            environment = {}
            for env_file in spec.get("env_file", []):
                environment.update(_env_file(self.files.host_path(env_file)))
            environment.update({key: str(value)
                                for key, value in (spec.get("environment") or {}).items()})
            argv = list(REGISTRY_ARGV) if name == "registry" else list(spec["command"])
            services[name] = Service(name=name, binds=binds, environment=environment, argv=argv)
        return services

    def _host_source(self, source: str) -> Path:
        if source.startswith("/etc/"):
            return self.files.host_path(source)
        if source.startswith("/srv/"):
            path = self.data_dir / source.removeprefix("/srv/")
            path.mkdir(parents=True, exist_ok=True)
            return path
        raise AssertionError(f"unexpected compose volume source {source}")

    @property
    def published_port(self) -> int:
        ports = self.files.compose["services"]["nginx"]["ports"]
        host_port, _, container_port = ports[0].partition(":")
        assert host_port == container_port, "the sim publishes the port unchanged"
        return int(host_port)

    # -- namespaces -----------------------------------------------------------------------
    def _netns(self) -> None:
        x, h, c = self.ns_client, self.ns_host, self.ns_container
        for ns in (x, h, c):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{x}0", "netns", x, "type", "veth", "peer", "name", f"{h}0",
           "netns", h)
        sh("ip", "link", "add", f"{h}1", "netns", h, "type", "veth", "peer", "name", f"{c}1",
           "netns", c)
        sh("ip", "-n", x, "addr", "add", f"{self.client_ip}/{NETMASK}", "dev", f"{x}0")
        sh("ip", "-n", h, "addr", "add", f"{self.registry_ip}/{NETMASK}", "dev", f"{h}0")
        sh("ip", "-n", h, "addr", "add", f"{COMPOSE_NET_PREFIX}.1/24", "dev", f"{h}1")
        sh("ip", "-n", c, "addr", "add", f"{self.container_ip}/24", "dev", f"{c}1")
        for ns, dev in ((x, f"{x}0"), (h, f"{h}0"), (h, f"{h}1"), (c, f"{c}1")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", f"{COMPOSE_NET_PREFIX}.1")
        if self.expose_registry_port:
            # Benchmark only: a route from the client straight to the registry's own port.
            sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", x, "route", "add", f"{COMPOSE_NET_PREFIX}.0/24", "via",
               self.registry_ip)

    def _container_script(self, service: Service, etc_upper: Path) -> str:
        """Shell run inside a netns: private /etc overlay, the service's binds, then exec."""
        work = etc_upper.parent / f"{etc_upper.name}-work"
        work.mkdir(parents=True, exist_ok=True)
        steps = ["set -e", "mount --make-rprivate /", _overlay_etc(etc_upper, work),
                 "mount -t tmpfs tmpfs /run"]
        for index, (source, target, read_only) in enumerate(service.binds):
            q_source, q_target = shlex.quote(str(source)), shlex.quote(target)
            if not target.startswith("/etc/") and not Path(target).exists():
                # Make the mount point without touching the real tree: overlay its nearest
                # existing ancestor with a private upper dir first.
                ancestor = Path(target)
                while not ancestor.exists():
                    ancestor = ancestor.parent
                scratch = etc_upper.parent / f"{etc_upper.name}-mnt{index}"
                (scratch / "upper").mkdir(parents=True, exist_ok=True)
                (scratch / "work").mkdir(parents=True, exist_ok=True)
                steps.append(f"mount -t overlay overlay -o lowerdir={ancestor},"
                             f"upperdir={scratch}/upper,workdir={scratch}/work {ancestor}")
            steps.append(f"mkdir -p {q_target}")
            steps.append(f"mount --bind {q_source} {q_target}")
            if read_only:
                steps.append(f"mount -o remount,bind,ro {q_target}")
        if service.name == "nginx":
            self.nginx_cache.mkdir(parents=True, exist_ok=True)
            (self.nginx_cache / "nginx").mkdir(exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(str(self.nginx_cache))} /var/cache")
        steps.append('exec "$@"')
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
        hosts = f"127.0.0.1 localhost\n{self.container_ip} registry\n"
        etc_upper = self._etc_upper(name, hosts)
        self.logs.mkdir(exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               **service.environment}
        self.processes[name] = subprocess.Popen(
            ["ip", "netns", "exec", netns, "bash", "-c",
             self._container_script(service, etc_upper), name, *service.argv],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started_pids.append(self.processes[name].pid)
        log.close()

    def netns_of(self, name: str) -> str:
        """Each service has its namespace to itself: the registry its container's, nginx the
        host's (where compose publishes its port)."""
        return self.ns_container if name == "registry" else self.ns_host

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

    def service_pid(self, name: str) -> int:
        return self.processes[name].pid

    def reload_nginx(self) -> None:
        """What `systemctl reload registry` runs: `nginx -c <conf> -s reload` in nginx's
        namespaces (the compose service's `exec`)."""
        conf = self.services["nginx"].argv[self.services["nginx"].argv.index("-c") + 1]
        result = sh("nsenter", "-t", str(self.service_pid("nginx")), "-m", "-n",
                    "nginx", "-c", conf, "-s", "reload", check=False)
        if result.returncode != 0:
            raise AssertionError(f"nginx reload failed: {result.stderr.decode()}")

    def place_file(self, run: ProgramRun, command_name: str) -> None:
        """Re-run one of a (new) run's file-placing commands against the live host files."""
        command = run.named(command_name)
        scratch = self.workdir / f"scratch-{time.monotonic_ns()}"
        result = run_in_private_etc(command.inputs["create"], command.inputs["stdin"].encode(),
                                    scratch / "upper", scratch / "work",
                                    extra_binds={"/etc/registry": self.files.etc / "registry"})
        if result.returncode != 0:
            raise AssertionError(f"{command_name} failed: {result.stderr.decode()}")

    # -- readiness ------------------------------------------------------------------------
    def _wait(self, what: str, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))
        raise AssertionError(f"{what} not ready within {timeout}s\n{logs}")

    def _http_code(self, netns: str, url: str, *curl_args: str) -> str:
        result = sh("ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-w",
                    "%{http_code}", "--max-time", "3", *curl_args, url, check=False)
        return result.stdout.decode()

    def wait_registry(self) -> None:
        url = f"http://{self.container_ip}:5000/v2/"
        self._wait("registry", lambda: self._http_code(self.ns_host, url) == "200")

    def wait_nginx(self) -> None:
        url = f"https://{self.registry_name}:{self.port}/v2/"
        resolve = f"{self.registry_name}:{self.port}:{self.registry_ip}"
        self._wait("nginx", lambda: self._http_code(
            self.ns_client, url, "--resolve", resolve, "--cacert", str(self.ca_file)) == "401")

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
            mount = (f"mount -t overlay overlay -o "
                     f"lowerdir={shlex.quote(str(self.client_etc))}:/etc /etc && ")
        else:
            mount = ""
        return ["ip", "netns", "exec", self.ns_client, "bash", "-c",
                f'{mount}exec "$@"', "client", *argv]

    def client(self, *argv: str, input: bytes | None = None, trusted: bool = True,
               timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = sh(*self.client_argv(argv, trusted), input=input, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"client command failed ({result.returncode}): "
                                 f"{' '.join(argv)}\n{result.stderr.decode()[-3000:]}")
        return result

    def host_exec(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the registry host's network namespace."""
        return sh("ip", "netns", "exec", self.ns_host, *argv, check=check)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RegistryHostSim:
        self._netns()
        self.start_service("registry")
        self.wait_registry()
        self.start_service("nginx")
        self.wait_nginx()
        return self

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_service(name)
        for ns in (self.ns_client, self.ns_host, self.ns_container):
            if ns in sh("ip", "netns", "list", check=False).stdout.decode():
                self._kill_netns_pids(ns)
                sh("ip", "netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        """What `stop` failed to clean up: namespaces, service processes, anything still
        running from the test directory."""
        namespaces = sh("ip", "netns", "list", check=False).stdout.decode()
        found = [f"netns {ns}" for ns in (self.ns_client, self.ns_host, self.ns_container)
                 if ns in namespaces]
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



def apply_client_trust(run: ProgramRun, workdir: Path,
                       client: str = "client-0") -> list[subprocess.CompletedProcess[bytes]]:
    """Run a client's CA-file and trust commands, as the client host would, over a private
    /etc (changes land in `workdir/etc-upper`) and a private system CA directory.

    update-ca-certificates' hooks do not run: this machine's (ca-certificates-java) would write
    the real /var/lib and run dpkg's triggers on the real package database."""
    results = []
    for command_name in (f"{client}-file-ca-cert", f"{client}-trust-registry"):
        command = run.named(command_name)
        results.append(run_in_private_etc(
            command.inputs["create"], command.inputs["stdin"].encode(),
            workdir / "etc-upper", workdir / "etc-work",
            extra_binds={"/usr/local/share/ca-certificates": workdir / "local-ca",
                         "/etc/ca-certificates/update.d": workdir / "no-ca-hooks"}))
    return results
