"""Storage `spaces` for real: several registry hosts on one object store behind a balancer.

From a program run with `storage: spaces`, each node is a `RegistryHostSim` running that node's
own placed files (Debian's nginx and docker-registry, the s3 driver config as rendered), and the
stand-ins are:

    client netns (client IP; its trust script maps the name to the balancer)
        │ bridge in the cluster's namespace
        ├── haproxy on the balancer's IP: TCP (TLS passthrough), round robin, to each node's
        │   balancer listener with a PROXY protocol line (health checks on its /healthz over
        │   https too), as the DigitalOcean load balancer is configured
        ├── moto (S3) as Spaces, over https with a test certificate for the Spaces endpoint's
        │   host name, which each registry resolves to it (a private /etc/hosts)
        └── node i: host netns (private IP; nginx) ─ container netns (registry, its own
            compose network, routed through the host)

The adaptations: the registry trusts the test certificate (`SSL_CERT_FILE`), and starts
without this machine's `AWS_CA_BUNDLE` (the sim gives services a clean environment). The
health checks run every second instead of DigitalOcean's 3 s minimum, to keep the tests short.

With `spacesCache: valkey`, Debian's redis-server (password, allkeys-lru) stands in for the
Managed Valkey cluster at its private host name. Debian's registry 2.8 reads the address from
`redis.addr` (3.x: the rendered `redis.addrs`), given as `REGISTRY_REDIS_ADDR`, and has no
Redis TLS: the stand-in speaks plain TCP, so the TLS part is not exercised here. The password
comes from the rendered registry.env, as on a droplet.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from components.manifest import REGISTRY_HOST_SPACES, REGISTRY_HOST_SPACES_VALKEY, REGISTRY_LAYOUT
from tests.harness import ProgramRun
from tests.realstack.hostsim import (
    ClusterNode,
    RegistryHostSim,
    run_client,
    sh,
    trusting_client_etc,
)
from tests.realstack.sandbox import Sandbox

BRIDGE = "br0"
FABRIC_IP = "10.110.15.254"  # the balancer's and the object store's side of the bridge
OBJECT_STORE_IP = "10.110.15.250"
CACHE_IP = "10.110.15.249"  # the shared cache's private host, with `spacesCache: valkey`
DATABASE_CLUSTER = "digitalocean:index/databaseCluster:DatabaseCluster"
NETMASK = 20
HEALTH_CHECK_INTERVAL_MS = 1000
MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")


class SpacesClusterSim:
    """Start, drive and stop the cluster. Use as a context manager."""

    def __init__(self, run: ProgramRun, workdir: Path, name_prefix: str = "registry-dev") -> None:
        self.run = run
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000:03d}"[-6:]
        self.ns_fabric, self.ns_client = f"rs{tag}f", f"rs{tag}x"
        self.address: str = run.outputs["registryAddress"]
        self.registry_name, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.passwords: dict[str, str] = run.outputs["passwords"]
        self.balancer_ip: str = run.outputs["loadBalancerIp"]
        self.client_ip: str = run.outputs["clientPrivateIps"][0]
        self.bucket: str = run.outputs["spacesBucket"]["name"]
        self.spaces_host = urlparse(run.outputs["spacesBucket"]["endpoint"]).hostname or ""
        self.store_cert = workdir / "spaces.crt"
        self.client_root = workdir / "client-root"
        self.logs = workdir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        caches = [cluster.outputs for cluster in run.of_type(DATABASE_CLUSTER)]
        # (private host, port, password) of the shared cache; None: each node's own memory.
        self.cache: tuple[str, int, str] | None = (
            (caches[0]["privateHost"], int(caches[0]["port"]), caches[0]["password"])
            if caches
            else None
        )
        self.registry_environment = {"SSL_CERT_FILE": str(self.store_cert)}
        extra_hosts = f"{OBJECT_STORE_IP} {self.spaces_host}\n"
        if self.cache is not None:
            cache_host, cache_port, _ = self.cache
            self.registry_environment["REGISTRY_REDIS_ADDR"] = f"{cache_host}:{cache_port}"
            extra_hosts += f"{CACHE_IP} {cache_host}\n"
        self.nodes = [
            RegistryHostSim(
                run,
                workdir / f"node-{index}",
                node=ClusterNode(
                    host_name=node["name"].removeprefix(f"{name_prefix}-"),
                    host_manifest=(
                        REGISTRY_HOST_SPACES if self.cache is None else REGISTRY_HOST_SPACES_VALKEY
                    ),
                    netns_prefix=f"rs{tag}{index}",
                    private_ip=node["privateIp"],
                    compose_net_prefix=f"172.31.{250 + index}",
                    fabric_netns=self.ns_fabric,
                    bridge=BRIDGE,
                    host_routes=(),
                    extra_hosts=extra_hosts,
                    registry_environment=dict(self.registry_environment),
                ),
            )
            for index, node in enumerate(run.outputs["registryNodes"])
        ]

    # -- the network and the stand-ins -----------------------------------------------------
    def _fabric(self) -> None:
        f, x = self.ns_fabric, self.ns_client
        for ns in (f, x):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", f, "link", "add", BRIDGE, "type", "bridge")
        addresses = [f"{FABRIC_IP}/{NETMASK}", f"{OBJECT_STORE_IP}/32", f"{self.balancer_ip}/32"]
        if self.cache is not None:
            addresses.append(f"{CACHE_IP}/32")
        for address in addresses:
            sh("ip", "-n", f, "addr", "add", address, "dev", BRIDGE)
        sh("ip", "-n", f, "link", "set", BRIDGE, "up")
        sh("ip", "link", "add", f"{x}0", "netns", x, "type", "veth", "peer", "name", f"{x}b")
        sh("ip", "link", "set", f"{x}b", "netns", f)
        sh("ip", "-n", f, "link", "set", f"{x}b", "master", BRIDGE, "up")
        sh("ip", "-n", x, "addr", "add", f"{self.client_ip}/{NETMASK}", "dev", f"{x}0")
        sh("ip", "-n", x, "link", "set", f"{x}0", "up")
        sh("ip", "-n", x, "route", "add", f"{self.balancer_ip}/32", "dev", f"{x}0")

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.logs.mkdir(exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns_fabric, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.started_pids.append(self.processes[name].pid)

    def _object_store(self) -> None:
        """moto over https as the Spaces endpoint, and the bucket the program creates."""
        key = self.workdir / "spaces.key"
        sh(
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", f"/CN={self.spaces_host}",
            "-addext", f"subjectAltName=DNS:{self.spaces_host}",
            "-keyout", str(key), "-out", str(self.store_cert),
        )  # fmt: skip
        self._spawn(
            "moto",
            [MOTO_SERVER, "-H", OBJECT_STORE_IP, "-p", "443", "-c", str(self.store_cert), "-k",
             str(key)],
            # Requests to this endpoint are path-style (forcepathstyle), not bucket subdomains.
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(self.workdir),
                "MOTO_S3_CUSTOM_ENDPOINTS": f"https://{self.spaces_host}",
            },
        )  # fmt: skip
        url = f"https://{self.spaces_host}/{self.bucket}"
        # moto picks the service from the request's signature scope (it checks no signature).
        authorization = (
            "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=0"
        )
        resolve = f"{self.spaces_host}:443:{OBJECT_STORE_IP}"
        deadline = time.monotonic() + 30
        while True:
            created = sh(
                "ip", "netns", "exec", self.ns_fabric, "curl", "-sf", "-o", "/dev/null",
                "--max-time", "3", "--cacert", str(self.store_cert), "--resolve", resolve,
                "-H", authorization, "-X", "PUT", url, check=False,
            )  # fmt: skip
            if created.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"moto not ready: {self.log('moto')[-2000:]}")
            time.sleep(0.2)

    def _shared_cache(self) -> None:
        """redis-server as the Managed Valkey cluster: its password, allkeys-lru, no disk."""
        assert self.cache is not None
        _, port, password = self.cache
        config = self.workdir / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(
            f"bind {CACHE_IP}\nport {port}\nrequirepass {password}\nmaxmemory 64mb\n"
            f'maxmemory-policy allkeys-lru\nsave ""\nappendonly no\ndir {self.workdir}\n'
        )
        self._spawn("redis", ["redis-server", str(config)])
        deadline = time.monotonic() + 30
        while self.cache_command("PING", check=False) != "PONG":
            if time.monotonic() > deadline:
                raise AssertionError(f"redis not ready: {self.log('redis')[-2000:]}")
            time.sleep(0.1)

    def cache_command(self, *args: str, check: bool = True) -> str:
        """A redis-cli command on the shared cache (the password in the environment)."""
        assert self.cache is not None
        _, port, password = self.cache
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns_fabric, "redis-cli", "--no-auth-warning", "-h",
             CACHE_IP, "-p", str(port), *args],
            env={"PATH": os.environ["PATH"], "REDISCLI_AUTH": password},
            capture_output=True, check=check, timeout=30,
        )  # fmt: skip
        return result.stdout.decode().strip()

    def _balancer(self) -> None:
        """haproxy as the DigitalOcean load balancer is configured (components/network.py)."""
        servers = "\n".join(
            f"    server node{index} {node.registry_ip}:{REGISTRY_LAYOUT.balancer_port}"
            for index, node in enumerate(self.nodes)
        )
        checks = f"check check-ssl verify none inter {HEALTH_CHECK_INTERVAL_MS} fall 2 rise 2"
        config = self.workdir / "haproxy.cfg"
        config.write_text(
            f"""global
    stats socket {self.stats_socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 15m
    timeout server 15m
    retries 3
    option redispatch
frontend registry
    bind {self.balancer_ip}:{self.port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET {REGISTRY_LAYOUT.health_path}
    http-check expect status 200
    default-server {checks} send-proxy check-send-proxy
{servers}
"""
        )
        self._spawn("haproxy", ["haproxy", "-db", "-f", str(config)])
        self.wait_servers({f"node{index}": "UP" for index in range(len(self.nodes))})

    @property
    def stats_socket(self) -> Path:
        return self.workdir / "haproxy.sock"

    def haproxy(self, command: str) -> str:
        """A command on haproxy's stats socket (a file: no namespace needed)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(self.stats_socket))
            connection.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Balancer's view: node name -> UP / DOWN (with its check's transition, e.g. UP 1/2)."""
        lines = self.haproxy("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "nodes" and row.get("svname", "").startswith("node"):
                states[row["svname"]] = row["status"]
        return states

    def wait_servers(self, wanted: dict[str, str], timeout: float = 30) -> float:
        """Until the balancer shows these states; returns the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                states = self.server_states()
            except OSError:
                states = {}
            if all(states.get(name) == state for name, state in wanted.items()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"balancer states {states}, wanted {wanted}")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- nodes ------------------------------------------------------------------------------
    def node_requests(self, index: int) -> list[tuple[str, str]]:
        """(method, URI) of every request node `index`'s registry answered, oldest first."""
        return [
            (fields["http.request.method"], fields["http.request.uri"])
            for fields in self.nodes[index].registry_requests()
        ]

    def kill_node(self, index: int) -> None:
        """The node dies: its nginx and registry are killed."""
        node = self.nodes[index]
        for service in (REGISTRY_LAYOUT.nginx_service, REGISTRY_LAYOUT.registry_service):
            node.stop_service(service, signal.SIGKILL)

    def restart_node(self, index: int) -> None:
        """Stop both services (as `systemctl restart registry` does), start them again."""
        node = self.nodes[index]
        for service in (REGISTRY_LAYOUT.nginx_service, REGISTRY_LAYOUT.registry_service):
            node.stop_service(service)
        node.start_services()

    def restart_registry(self, index: int, environment: dict[str, str]) -> None:
        """Restart node `index`'s registry with `environment` over its own (a test's change)."""
        node = self.nodes[index]
        assert node.node is not None
        node.stop_service(REGISTRY_LAYOUT.registry_service)
        node.node.registry_environment.clear()
        node.node.registry_environment.update({**self.registry_environment, **environment})
        node.start_service(REGISTRY_LAYOUT.registry_service)
        node.wait_registry()

    def busy_nodes(self) -> set[int]:
        """Nodes with a connection from the balancer open now and 0.3 s later (health checks
        last milliseconds, so they are not counted)."""

        def connected() -> set[int]:
            return {
                index
                for index, node in enumerate(self.nodes)
                if node.host_exec(
                    "ss",
                    "-Htn",
                    "state",
                    "established",
                    f"( sport = :{REGISTRY_LAYOUT.balancer_port} )",
                ).stdout.strip()
            }

        first = connected()
        time.sleep(0.3)
        return first & connected()

    # -- the client -------------------------------------------------------------------------
    def client_argv(self, argv: Sequence[str], trusted: bool = True) -> list[str]:
        """argv in the client netns over its trusted /etc (what its trust script left)."""
        etc = Sandbox(self.client_root).upper("/etc")
        mount = (
            f"mount -t overlay overlay -o lowerdir={shlex.quote(str(etc))}:/etc /etc && "
            if trusted
            else ""
        )
        return ["ip", "netns", "exec", self.ns_client, "bash", "-c", f'{mount}exec "$@"', "x",
                *argv]  # fmt: skip

    def client(
        self,
        *argv: str,
        input: bytes | None = None,
        trusted: bool = True,
        timeout: float = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_client(self.client_argv(argv, trusted), argv, input, timeout, check)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> SpacesClusterSim:
        trusting_client_etc(self.run, self.client_root)
        self._fabric()
        self._object_store()
        if self.cache is not None:
            self._shared_cache()
        for node in self.nodes:
            node.start()
        self._balancer()
        return self

    def stop(self) -> None:
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            del self.processes[name]
        for node in self.nodes:
            node.stop()
        listed = sh("ip", "netns", "list", check=False).stdout.decode()
        for ns in (self.ns_client, self.ns_fabric):
            if ns in listed:
                sh("ip", "netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        listed = sh("ip", "netns", "list", check=False).stdout.decode()
        found = [f"netns {ns}" for ns in (self.ns_client, self.ns_fabric) if ns in listed]
        found += [f"pid {pid}" for pid in self.started_pids if Path(f"/proc/{pid}").exists()]
        for node in self.nodes:
            found += node.leftovers()
        return found

    def __enter__(self) -> SpacesClusterSim:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
