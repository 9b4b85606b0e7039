"""What lands on each kind of host, declared once: every file (path, template, mode, owner,
secret, the values it is rendered with) and every script (with its arguments).

Where things live (directories, ports, compose service names) is stated here and nowhere else:
templates receive paths and ports as `{{placeholders}}`, scripts as arguments, and the
components, the tests, the host simulator and the benchmark read these tables instead of
re-listing them. Facts about the images (the nginx worker's gid, the registry's config path)
live in `versions.py`. A value only the stack knows (a setting, a certificate, a secret) is a
`StackValue`, supplied by the component that applies the manifest.

To add a file: one `HostFile` in `registry_host` or `client_host` (plus its template in
`files/`, and the stack value if it needs a new one). To move a directory: change its layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal, TypeVar

from components import versions
from components.rendering.templates import render_template


@dataclass(frozen=True)
class StackValue:
    """A value the stack supplies when the manifest is applied. An `optional` script argument
    is left out when the stack's value is empty or None (so it must come last)."""

    name: str
    optional: bool = False


@dataclass(frozen=True)
class Fragment:
    """A template of `files/` rendered into another file's placeholder (an optional server
    block, a compose service), with values that may be the stack's."""

    template: str
    values: Mapping[str, Value]

    @property
    def stack_values(self) -> set[str]:
        return {name for value in self.values.values() for name in _stack_values_of(value)}


Value = str | int | StackValue | Fragment


def _stack_values_of(value: Value) -> set[str]:
    if isinstance(value, StackValue):
        return {value.name}
    if isinstance(value, Fragment):
        return value.stack_values
    return set()


def _resolve(value: Value, stack: Mapping[str, object]) -> object:
    if isinstance(value, StackValue):
        return stack[value.name]
    if isinstance(value, Fragment):
        return render_template(
            value.template, **{name: _resolve(item, stack) for name, item in value.values.items()}
        )
    return value


@dataclass(frozen=True)
class HostFile:
    """A file placed on a host: its path, what it is rendered from, its owner and mode, and
    whether it holds a secret (its command then keeps stdin secret and logs nothing).

    With a `template` (a file in `files/`) the file is the template filled with `values`;
    without one it holds its single value, `content`, as is (a certificate, a password)."""

    role: str
    path: str
    mode: int
    values: Mapping[str, Value] = field(default_factory=dict)
    template: str | None = None
    uid: int = 0
    gid: int = 0
    secret: bool = False

    @property
    def stack_values(self) -> set[str]:
        return {name for value in self.values.values() for name in _stack_values_of(value)}

    def render(self, stack: Mapping[str, object]) -> str:
        """The file's text, with the stack's values (a mapping of at least `stack_values`)."""
        values = {name: _resolve(value, stack) for name, value in self.values.items()}
        if self.template is None:
            if set(values) != {"content"}:
                raise ValueError(f"{self.role}: a file without a template holds one `content`")
            return str(values["content"])
        return render_template(self.template, **values)


@dataclass(frozen=True)
class HostScript:
    """A script of `files/scripts/` run on a host, with its arguments in order."""

    role: str
    script: str
    args: tuple[Value, ...]

    @property
    def stack_values(self) -> set[str]:
        return {value.name for value in self.args if isinstance(value, StackValue)}

    def arguments(self, stack: Mapping[str, object]) -> list[str]:
        """The command-line arguments, with the stack's values; empty optional ones dropped."""
        arguments: list[str] = []
        for value in self.args:
            resolved = _resolve(value, stack)
            if isinstance(value, StackValue) and value.optional and resolved in (None, ""):
                continue
            if resolved is None:
                raise ValueError(f"{self.role}: no value for argument {value}")
            arguments.append(str(resolved))
        return arguments


@dataclass(frozen=True)
class HostManifest:
    """Everything one kind of host gets, in the order it is declared."""

    files: tuple[HostFile, ...]
    scripts: tuple[HostScript, ...]

    def file(self, role: str) -> HostFile:
        return _by_role(self.files, role)

    def script(self, role: str) -> HostScript:
        return _by_role(self.scripts, role)

    @property
    def stack_values(self) -> set[str]:
        """The names of every value the stack must supply."""
        entries: list[HostFile | HostScript] = [*self.files, *self.scripts]
        return {name for entry in entries for name in entry.stack_values}

    def check_stack_values(self, names: set[str]) -> None:
        """Fail unless `names` are exactly the stack values the manifest uses."""
        if names != self.stack_values:
            raise ValueError(
                f"stack values: missing {sorted(self.stack_values - names)}, "
                f"unused {sorted(names - self.stack_values)}"
            )


_Entry = TypeVar("_Entry", HostFile, HostScript)


def _by_role(entries: tuple[_Entry, ...], role: str) -> _Entry:
    found = [entry for entry in entries if entry.role == role]
    if len(found) != 1:
        raise KeyError(f"no single entry with role {role!r}")
    return found[0]


def command_name(host: str, entry: HostFile | HostScript) -> str:
    """The resource name of the command that places a file (`<host>-file-<role>`) or runs a
    script (`<host>-<role>`) on the host named `host`; underscores become dashes."""
    slug = entry.role.replace("_", "-")
    return f"{host}-file-{slug}" if isinstance(entry, HostFile) else f"{host}-{slug}"


@dataclass(frozen=True)
class Mount:
    """A host directory bind-mounted into a container. Directories, not single files, so a file
    renamed into place is seen at once (a single-file bind mount keeps the old inode)."""

    host_dir: str
    container_dir: str

    @property
    def volume(self) -> str:
        """The compose volume, `HOST:CONTAINER`."""
        return f"{self.host_dir}:{self.container_dir}"

    def host_path(self, name: str) -> str:
        """The host path of the file `name` in this directory."""
        return f"{self.host_dir}/{name}"

    def in_container(self, host_path: str) -> str:
        """Where the container sees a host file of this directory."""
        if not host_path.startswith(self.host_dir + "/"):
            raise ValueError(f"{host_path} is not under {self.host_dir}")
        return self.container_dir + host_path.removeprefix(self.host_dir)


@dataclass(frozen=True)
class RegistryHostLayout:
    """Where things live on the registry host and in its containers."""

    config_dir: str = "/etc/registry"
    data_mount: str = "/srv/registry"  # the block storage volume
    unit_path: str = "/etc/systemd/system/registry.service"
    # The Compose project (compose.yaml's `name`): its containers and volumes carry it as a label.
    compose_project: str = "registry"
    # Compose service names; nginx reaches the registry's debug server by its name.
    registry_service: str = "registry"
    nginx_service: str = "nginx"
    # distribution's API listens on a Unix socket in a directory only the registry and nginx
    # mount (a tmpfs compose volume): no TCP port, so nothing else on the host or the compose
    # network reaches the unauthenticated API, and nginx's proxying skips the TCP stack.
    registry_socket_volume: str = "registry-api"
    registry_socket_dir: str = "/run/registry-api"
    # Its debug (health, metrics) port, on the compose network only: never published, and the
    # TLS port may not be it.
    debug_port: int = 5001
    # nginx's unauthenticated health endpoint on the TLS port (what load balancers check).
    health_path: str = "/healthz"
    # Storage `spaces`: nginx's listener for the load balancer (PROXY protocol, so the clients'
    # addresses reach the logs), published and admitted from the balancer alone.
    balancer_port: int = 9444
    # nginx's metrics listener, published on the droplet's private address only, and the path of
    # the registry's Prometheus metrics on its debug server.
    metrics_port: int = 9443
    registry_metrics_path: str = "/metrics"
    # The disk check's Prometheus text file (nginx serves the directory) and its interval.
    metrics_dir: str = "/var/lib/registry-metrics"
    disk_check_interval: str = "5min"
    # How often the request counter (registry-requests.service) writes its counts there.
    request_metrics_interval_seconds: int = 15
    # publicTls: certbot's state and the webroot of its HTTP-01 challenge files, and the port
    # nginx answers those challenges on (HTTP-01 validates on port 80 only).
    acme_dir: str = "/var/lib/registry-acme"
    acme_http_port: int = 80
    # Inside the containers.
    registry_storage: str = "/var/lib/registry"
    nginx_dir: str = "/etc/nginx"
    # dockerd's own configuration file.
    docker_daemon_config: str = "/etc/docker/daemon.json"
    # Storage `spaces`: where the registry keeps its tree in the bucket.
    spaces_root_directory: str = "/registry"
    # Each container's json-file log: at most this many files of this size (dockerd rotates).
    container_log_max_size: str = "20m"
    container_log_max_files: int = 5
    # The Docker Hub cache (hubCache): its compose service, its API socket (a tmpfs volume only
    # it and nginx mount, as the registry's), its debug server (compose network only), its
    # config directory and its data directory on the data volume, beside the registry's.
    hub_cache_service: str = "hub-cache"
    hub_cache_socket_volume: str = "hub-cache-api"
    hub_cache_socket_dir: str = "/run/hub-cache-api"
    hub_cache_debug_port: int = 5002
    hub_cache_data_name: str = "hub-cache"
    # Where the cache pulls from: Docker Hub's registry API.
    hub_cache_remote_url: str = "https://registry-1.docker.io"

    @property
    def data_dir(self) -> str:
        return f"{self.data_mount}/data"

    @property
    def registry_socket(self) -> str:
        """The registry API's Unix socket, at the same path in both containers."""
        return f"{self.registry_socket_dir}/registry.sock"

    @property
    def hub_cache_data_dir(self) -> str:
        return f"{self.data_mount}/{self.hub_cache_data_name}"

    @property
    def hub_cache_socket(self) -> str:
        return f"{self.hub_cache_socket_dir}/registry.sock"


@dataclass(frozen=True)
class ClientHostLayout:
    """Where a client host keeps what its trust and proof scripts read."""

    client_dir: str = "/etc/private-registry"
    # dockerd's own configuration file (with hubCache: its registry mirror).
    docker_daemon_config: str = "/etc/docker/daemon.json"


Storage = Literal["volume", "spaces"]
# The registry listener's certificate: the stack's private CA's, or a public one from an ACME CA.
Tls = Literal["private", "public"]
# The blob descriptor cache of storage `spaces`: per node in memory, or one shared Valkey.
Cache = Literal["memory", "valkey"]
# The S3 driver's multipart part size: 32 MiB (its default is 10 MiB, its minimum 5 MiB).
SPACES_CHUNK_BYTES = 32 << 20


def _storage_driver(layout: RegistryHostLayout) -> str:
    """The `storage:` driver lines of the registry config for a block storage volume."""
    return render_template(
        "registry-storage-filesystem.yml", storage_dir=layout.registry_storage
    ).rstrip("\n")


def spaces_storage_driver(
    region: str, endpoint: str, bucket: str, redirect: bool, layout: RegistryHostLayout
) -> str:
    """The `storage:` driver lines of the registry config for a Spaces bucket (the value of
    the `storage_driver` stack value in storage `spaces`)."""
    return render_template(
        "registry-storage-s3.yml",
        region=region,
        endpoint=endpoint,
        bucket=bucket,
        root_directory=layout.spaces_root_directory,
        chunksize=SPACES_CHUNK_BYTES,
        redirect_disabled="false" if redirect else "true",
    ).rstrip("\n")


def redis_section(address: str) -> str:
    """The registry config's `redis:` section for the shared cache at `address` (host:port),
    the value of the `redis_section` stack value with cache `valkey`."""
    return render_template(
        "registry-redis.yml", address=address, root_cas=versions.REGISTRY_CA_BUNDLE
    )


def _balancer_listener(layout: RegistryHostLayout) -> str:
    """nginx.conf's lines for the load balancer's listener (storage `spaces`)."""
    return render_template("nginx-balancer-listener.conf", balancer_port=layout.balancer_port)


def _balancer_port_mapping(layout: RegistryHostLayout) -> str:
    """compose.yaml's `ports:` entry publishing the load balancer's listener."""
    return render_template("compose-balancer-port.yaml", balancer_port=layout.balancer_port)


def proxy_credentials(username: str, password: str) -> str:
    """The Docker Hub cache's env lines with the account it pulls as (the value of the
    `proxy_credentials` stack value; empty when it pulls anonymously)."""
    return render_template("hub-cache-credentials.env", username=username, password=password)


def hub_cache_allow(sources: Sequence[str]) -> str:
    """nginx `allow` lines for the sources the cache serves without credentials (the value of
    the `hub_cache_allow` stack value): addresses and CIDR blocks, in order, without repeats."""
    return "".join(f"        allow {source};\n" for source in dict.fromkeys(sources))


_HUB_CACHE_COMPOSE_PLACEHOLDERS = (
    "hub_cache_port_mapping",
    "hub_cache_socket_mount",
    "hub_cache_service",
    "hub_cache_socket_volume",
)


def _hub_cache_compose_values(
    layout: RegistryHostLayout, config_dir: Mount, env: HostFile, data: Mount
) -> dict[str, Value]:
    """compose.yaml's fragments for the Docker Hub cache: its service, nginx's port and socket
    mount for it, and its socket volume."""
    socket = {
        "socket_volume": layout.hub_cache_socket_volume,
        "socket_dir": layout.hub_cache_socket_dir,
    }
    values: dict[str, Value] = {
        "hub_cache_port_mapping": Fragment(
            "compose-hub-cache-port.yaml", {"hub_cache_port": StackValue("hub_cache_port")}
        ),
        "hub_cache_socket_mount": Fragment("compose-hub-cache-socket-mount.yaml", socket),
        "hub_cache_service": Fragment(
            "compose-hub-cache.yaml",
            {
                **socket,
                "service": layout.hub_cache_service,
                "registry_image": StackValue("registry_image"),
                "config_file": versions.REGISTRY_CONFIG_FILE,
                "env_file": env.path,
                # The placed config's sha256: a changed config recreates the cache.
                "config_sha256": StackValue("hub_cache_config_sha256"),
                "config_volume": config_dir.volume,
                "data_volume": data.volume,
                "debug_port": layout.hub_cache_debug_port,
            },
        ),
        "hub_cache_socket_volume": Fragment(
            "compose-hub-cache-socket-volume.yaml",
            {
                "socket_volume": layout.hub_cache_socket_volume,
                "nginx_gid": versions.NGINX_WORKER_GID,
            },
        ),
    }
    return values


def registry_host(
    layout: RegistryHostLayout = RegistryHostLayout(),
    storage: Storage = "volume",
    cache: Cache = "memory",
    tls: Tls = "private",
    hub_cache: bool = False,
) -> HostManifest:
    """The registry host: compose, registry and nginx files, the unit, and its scripts.

    Storage `volume`: the data on the block storage volume, which the host mounts (and
    releases before a detach), and scheduled garbage collection. Storage `spaces`: the data in
    a Spaces bucket that every node shares, its key in registry.env; no volume, and no
    scheduled garbage collection (it needs every node read-only at once). Cache `valkey`
    (storage `spaces` only): the blob descriptor cache in the shared Valkey at the stack's
    `redis_section`, its password in registry.env. TLS `public` (storage `volume` only): the
    registry listener serves the certificate registry-acme.sh keeps (the ACME CA's once issued,
    the private one until then), renewed by its timer; nginx answers HTTP-01 challenges on
    port 80 from the webroot certbot writes. `hub_cache` (storage `volume` only): a
    second registry in pull-through mode for Docker Hub, its data beside the registry's on the
    volume, behind nginx on its own port.
    """
    spaces = storage == "spaces"
    valkey = cache == "valkey"
    public = tls == "public"
    if valkey and not spaces:
        raise ValueError("a shared cache needs storage spaces")
    if public and spaces:
        raise ValueError("public TLS needs storage volume (one node)")
    if hub_cache and spaces:
        raise ValueError("the Docker Hub cache needs storage volume")
    config_file = PurePosixPath(versions.REGISTRY_CONFIG_FILE)
    registry_config_dir = Mount(f"{layout.config_dir}/distribution", str(config_file.parent))
    nginx_conf_dir = Mount(f"{layout.config_dir}/nginx", f"{layout.nginx_dir}/registry")
    tls_dir = Mount(f"{layout.config_dir}/tls", f"{layout.nginx_dir}/tls")
    auth_dir = Mount(f"{layout.config_dir}/auth", f"{layout.nginx_dir}/auth")
    data_dir = Mount(layout.data_dir, layout.registry_storage)
    metrics_dir = Mount(layout.metrics_dir, f"{layout.nginx_dir}/metrics")
    disk_metrics_file = metrics_dir.host_path("disk.prom")
    # nginx's access log arrives at the request counter on this socket, and its counts go here.
    requests_socket = metrics_dir.host_path("requests.sock")
    requests_metrics_file = metrics_dir.host_path("requests.prom")
    tls_metrics_file = metrics_dir.host_path("tls.prom")
    webroot = Mount(f"{layout.acme_dir}/webroot", f"{layout.nginx_dir}/acme")

    registry_config = HostFile(
        "registry_config",
        registry_config_dir.host_path(config_file.name),
        0o644,
        template="registry-config.yml",
        values={
            "registry_socket": layout.registry_socket,
            "debug_port": layout.debug_port,
            "storage_driver": StackValue("storage_driver") if spaces else _storage_driver(layout),
            "metrics_path": layout.registry_metrics_path,
            "blobdescriptor": "redis" if valkey else "inmemory",
            "redis_section": StackValue("redis_section") if valkey else "",
            "proxy_section": "",
        },
    )
    registry_env = HostFile(
        "registry_env",
        f"{layout.config_dir}/registry.env",
        0o600,
        template=(
            "registry-spaces-valkey.env"
            if valkey
            else "registry-spaces.env"
            if spaces
            else "registry.env"
        ),
        values={
            "http_secret": StackValue("http_secret"),
            **(
                {
                    "access_key": StackValue("spaces_access_key"),
                    "secret_key": StackValue("spaces_secret_key"),
                }
                if spaces
                else {}
            ),
            **({"redis_password": StackValue("redis_password")} if valkey else {}),
        },
        secret=True,
    )
    # The Docker Hub cache: its config (the registry's template, its own socket, debug port and
    # proxy section) in its own directory, its env file (http.secret, Docker Hub credentials).
    hub_cache_config_dir = Mount(f"{layout.config_dir}/hub-cache", str(config_file.parent))
    hub_cache_data = Mount(layout.hub_cache_data_dir, layout.registry_storage)
    hub_cache_config = HostFile(
        "hub_cache_config",
        hub_cache_config_dir.host_path(config_file.name),
        0o644,
        template="registry-config.yml",
        values={
            "registry_socket": layout.hub_cache_socket,
            "debug_port": layout.hub_cache_debug_port,
            "storage_driver": _storage_driver(layout),
            "metrics_path": layout.registry_metrics_path,
            "blobdescriptor": "inmemory",
            "redis_section": "",
            "proxy_section": Fragment(
                "registry-proxy.yml",
                {"remote_url": layout.hub_cache_remote_url, "ttl": StackValue("hub_cache_ttl")},
            ),
        },
    )
    hub_cache_env = HostFile(
        "hub_cache_env",
        f"{layout.config_dir}/hub-cache.env",
        0o600,
        template="hub-cache.env",
        values={
            "http_secret": StackValue("http_secret"),
            "proxy_credentials": StackValue("proxy_credentials"),
        },
        secret=True,
    )
    server_cert = HostFile(
        "server_cert",
        tls_dir.host_path("server.crt"),
        0o644,
        values={"content": StackValue("server_cert_pem")},
    )
    # Read by nginx's master process (root) only.
    server_key = HostFile(
        "server_key",
        tls_dir.host_path("server.key"),
        0o600,
        values={"content": StackValue("server_key_pem")},
        secret=True,
    )
    ca_cert = HostFile(
        "ca_cert", tls_dir.host_path("ca.crt"), 0o644, values={"content": StackValue("ca_cert_pem")}
    )
    # publicTls: what the registry listener serves, kept by registry-acme.sh (with the CA that
    # verifies it, for the activation's check).
    served_cert = tls_dir.host_path("registry.crt")
    served_key = tls_dir.host_path("registry.key")
    served_ca = tls_dir.host_path("registry-ca.crt")
    # Read per request by nginx's worker (the image's `nginx` group), so 0640 root:nginx.
    htpasswd = HostFile(
        "htpasswd",
        auth_dir.host_path("htpasswd"),
        0o640,
        values={"content": StackValue("htpasswd")},
        gid=versions.NGINX_WORKER_GID,
        secret=True,
    )
    nginx_conf = HostFile(
        "nginx_conf",
        nginx_conf_dir.host_path("nginx.conf"),
        0o644,
        template="nginx.conf",
        values={
            "listen_port": StackValue("port"),
            "registry_name": StackValue("registry_name"),
            "balancer_listener": _balancer_listener(layout) if spaces else "",
            "server_names": StackValue("server_names"),
            "registry_certificate": (
                render_template(
                    "nginx-registry-certificate.conf",
                    served_cert=tls_dir.in_container(served_cert),
                    served_key=tls_dir.in_container(served_key),
                )
                if public
                else ""
            ),
            "tls_metrics_location": (
                render_template(
                    "nginx-tls-metrics.conf",
                    tls_metrics_file=metrics_dir.in_container(tls_metrics_file),
                )
                if public
                else ""
            ),
            "acme_challenge_server": (
                render_template(
                    "nginx-acme-challenge.conf",
                    acme_http_port=layout.acme_http_port,
                    webroot=webroot.container_dir,
                )
                if public
                else ""
            ),
            "registry_upstream": f"unix:{layout.registry_socket}",
            "registry_debug_upstream": f"{layout.registry_service}:{layout.debug_port}",
            "health_path": layout.health_path,
            "server_cert": tls_dir.in_container(server_cert.path),
            "server_key": tls_dir.in_container(server_key.path),
            "htpasswd": auth_dir.in_container(htpasswd.path),
            "access_maps": StackValue("access_maps"),
            "metrics_port": layout.metrics_port,
            "registry_metrics_path": layout.registry_metrics_path,
            "metrics_user": StackValue("metrics_user"),
            "disk_metrics_file": metrics_dir.in_container(disk_metrics_file),
            "requests_socket": metrics_dir.in_container(requests_socket),
            "requests_metrics_file": metrics_dir.in_container(requests_metrics_file),
            "hub_cache_server": (
                Fragment(
                    "nginx-hub-cache.conf",
                    {
                        "hub_cache_upstream": f"unix:{layout.hub_cache_socket}",
                        "metrics_user": StackValue("metrics_user"),
                        "hub_cache_port": StackValue("hub_cache_port"),
                        "server_names": StackValue("server_names"),
                        "hub_cache_allow": StackValue("hub_cache_allow"),
                        "htpasswd": auth_dir.in_container(htpasswd.path),
                        "hub_cache_address": StackValue("hub_cache_address"),
                    },
                )
                if hub_cache
                else ""
            ),
        },
    )
    compose = HostFile(
        "compose",
        f"{layout.config_dir}/compose.yaml",
        0o644,
        template="compose.yaml",
        values={
            "compose_project": layout.compose_project,
            "registry_service": layout.registry_service,
            "registry_image": StackValue("registry_image"),
            "registry_env_file": registry_env.path,
            # The placed config.yml's sha256: changes with it, so `up -d` recreates the registry.
            "registry_config_sha256": StackValue("registry_config_sha256"),
            "registry_config_volume": registry_config_dir.volume,
            "data_volume": data_dir.volume,
            "registry_config_file": versions.REGISTRY_CONFIG_FILE,
            "socket_volume": layout.registry_socket_volume,
            "socket_dir": layout.registry_socket_dir,
            "nginx_gid": versions.NGINX_WORKER_GID,
            "debug_port": layout.debug_port,
            "nginx_service": layout.nginx_service,
            "nginx_image": StackValue("nginx_image"),
            "nginx_conf": nginx_conf_dir.in_container(nginx_conf.path),
            "port": StackValue("port"),
            "balancer_port_mapping": _balancer_port_mapping(layout) if spaces else "",
            "acme_port_mapping": (
                render_template("compose-acme-port.yaml", acme_http_port=layout.acme_http_port)
                if public
                else ""
            ),
            "acme_webroot_volume": (
                render_template("compose-acme-volume.yaml", webroot_volume=webroot.volume)
                if public
                else ""
            ),
            **(
                _hub_cache_compose_values(
                    layout, hub_cache_config_dir, hub_cache_env, hub_cache_data
                )
                if hub_cache
                else dict.fromkeys(_HUB_CACHE_COMPOSE_PLACEHOLDERS, "")
            ),
            "nginx_conf_volume": nginx_conf_dir.volume,
            "tls_volume": tls_dir.volume,
            "auth_volume": auth_dir.volume,
            "metrics_volume": metrics_dir.volume,
            "private_ip": StackValue("private_ip"),
            "metrics_port": layout.metrics_port,
            "log_max_size": layout.container_log_max_size,
            "log_max_files": layout.container_log_max_files,
        },
    )
    systemd_unit = HostFile(
        "systemd_unit",
        layout.unit_path,
        0o644,
        template="registry.service",
        values={
            "data_mount": layout.data_mount,
            "config_dir": layout.config_dir,
            "compose_file": compose.path,
            "registry_service": layout.registry_service,
            "nginx_service": layout.nginx_service,
            "nginx_conf": nginx_conf_dir.in_container(nginx_conf.path),
        },
    )
    registry_unit = PurePosixPath(layout.unit_path)
    gc_script = HostFile(
        "gc_script",
        f"{layout.config_dir}/registry-gc.sh",
        0o755,
        template="registry-gc.sh",
        values={
            "compose_file": compose.path,
            "data_dir": layout.data_dir,
            "data_mount": layout.data_mount,
            "registry_unit": registry_unit.name,
            "registry_service": layout.registry_service,
            "registry_config": versions.REGISTRY_CONFIG_FILE,
            "nginx_service": layout.nginx_service,
            "nginx_conf": nginx_conf_dir.in_container(nginx_conf.path),
            "gc_flags": StackValue("gc_flags"),
        },
    )
    gc_unit = registry_unit.with_name(f"{registry_unit.stem}-gc.service")
    gc_service = HostFile(
        "gc_service",
        str(gc_unit),
        0o644,
        template="registry-gc.service",
        values={
            "registry_unit": registry_unit.name,
            "data_mount": layout.data_mount,
            "gc_script": gc_script.path,
        },
    )
    gc_timer = HostFile(
        "gc_timer",
        str(gc_unit.with_suffix(".timer")),
        0o644,
        template="registry-gc.timer",
        values={"schedule": StackValue("gc_schedule")},
    )
    disk_script = HostFile(
        "disk_script",
        f"{layout.config_dir}/registry-disk.sh",
        0o755,
        template="registry-disk.sh",
        values={
            "data_mount": layout.data_mount,
            "metrics_file": disk_metrics_file,
            "threshold_percent": StackValue("disk_alert_percent"),
            "hub_cache_dir": layout.hub_cache_data_dir if hub_cache else "",
        },
    )
    disk_unit = registry_unit.with_name(f"{registry_unit.stem}-disk.service")
    disk_service = HostFile(
        "disk_service",
        str(disk_unit),
        0o644,
        template="registry-disk.service",
        values={"disk_script": disk_script.path},
    )
    disk_timer = HostFile(
        "disk_timer",
        str(disk_unit.with_suffix(".timer")),
        0o644,
        template="registry-disk.timer",
        values={"interval": layout.disk_check_interval},
    )
    requests_script = HostFile(
        "requests_script",
        f"{layout.config_dir}/registry-requests.py",
        0o755,
        template="registry-requests.py",
    )
    requests_service = HostFile(
        "requests_service",
        str(registry_unit.with_name(f"{registry_unit.stem}-requests.service")),
        0o644,
        template="registry-requests.service",
        values={
            "registry_unit": registry_unit.name,
            "script": requests_script.path,
            "socket": requests_socket,
            "output": requests_metrics_file,
            "nginx_gid": versions.NGINX_WORKER_GID,
            "interval_seconds": layout.request_metrics_interval_seconds,
        },
    )
    acme_script = HostFile(
        "acme_script",
        f"{layout.config_dir}/registry-acme.sh",
        0o755,
        template="registry-acme.sh",
        values={
            "public_name": StackValue("public_name"),
            "acme_directory": StackValue("acme_directory"),
            "acme_dir": layout.acme_dir,
            "webroot": webroot.host_dir,
            "private_cert": server_cert.path,
            "private_key": server_key.path,
            "private_ca": ca_cert.path,
            "served_cert": served_cert,
            "served_key": served_key,
            "served_ca": served_ca,
            "metrics_file": tls_metrics_file,
            "registry_unit": registry_unit.name,
        },
    )
    acme_unit = registry_unit.with_name(f"{registry_unit.stem}-acme.service")
    acme_service = HostFile(
        "acme_service",
        str(acme_unit),
        0o644,
        template="registry-acme.service",
        values={"registry_unit": registry_unit.name, "acme_script": acme_script.path},
    )
    acme_timer = HostFile(
        "acme_timer", str(acme_unit.with_suffix(".timer")), 0o644, template="registry-acme.timer"
    )
    public_only = (acme_script, acme_service, acme_timer) if public else ()
    # live-restore: a dockerd restart or upgrade leaves the registry's containers running.
    docker_daemon = HostFile(
        "docker_daemon", layout.docker_daemon_config, 0o644, template="docker-daemon.json"
    )
    # Collection and the disk check are for the data volume: spaces nodes have neither.
    volume_only = (
        () if spaces else (gc_script, gc_service, gc_timer, disk_script, disk_service, disk_timer)
    )
    files = (
        compose,
        registry_config,
        registry_env,
        nginx_conf,
        htpasswd,
        server_cert,
        server_key,
        ca_cert,
        systemd_unit,
        requests_script,
        requests_service,
        *volume_only,
        *public_only,
        docker_daemon,
        *((hub_cache_config, hub_cache_env) if hub_cache else ()),
    )
    install = HostScript(
        "install_packages",
        "install-packages.sh",
        (*versions.REGISTRY_HOST_PACKAGES, *(versions.ACME_CLIENT_PACKAGES if public else ())),
    )
    activate = HostScript(
        "activate",
        "activate-registry.sh",
        (
            # publicTls: the public name, the one name both the private and the ACME
            # certificate hold (the ACME one holds only it).
            StackValue("public_name" if public else "registry_name"),
            StackValue("port"),
            compose.path,
            # publicTls: the CA of whichever certificate registry-acme.sh serves.
            served_ca if public else ca_cert.path,
            # The units to enable and restart: the request counter, and the timers.
            PurePosixPath(requests_service.path).name,
            *(
                PurePosixPath(unit.path).name
                for unit in (*volume_only, *public_only)
                if unit.path.endswith(".timer")
            ),
        ),
    )
    if spaces:
        return HostManifest(files, (install, activate))
    # publicTls: nginx needs a certificate to start; the public one is asked for once it runs.
    serve_certificate = HostScript("serve_certificate", "serve-certificate.sh", (acme_script.path,))
    issue_certificate = HostScript(
        "issue_certificate",
        "issue-certificate.sh",
        (acme_unit.name, PurePosixPath(acme_timer.path).name),
    )
    scripts = (
        install,
        HostScript(
            "mount_data_volume",
            "mount-data-volume.sh",
            (StackValue("volume_name"), layout.data_mount, layout.data_dir),
        ),
        *((serve_certificate,) if public else ()),
        activate,
        *((issue_certificate,) if public else ()),
        # Run before the volume is detached (destroy, a replaced droplet or volume).
        HostScript("release_data_volume", "release-data-volume.sh", (layout.data_mount,)),
        # Run when hubCache is turned off (its command leaves the stack).
        *(
            (
                HostScript(
                    "remove_hub_cache",
                    "remove-hub-cache.sh",
                    (
                        layout.compose_project,
                        layout.hub_cache_service,
                        layout.hub_cache_socket_volume,
                        hub_cache_env.path,
                        hub_cache_config_dir.host_dir,
                        layout.hub_cache_data_dir,
                    ),
                ),
            )
            if hub_cache
            else ()
        ),
    )
    return HostManifest(files, scripts)


def client_host(
    layout: ClientHostLayout = ClientHostLayout(),
    hub_cache: bool = False,
) -> HostManifest:
    """A client host: the CA and the proof's password, then trust and proof scripts. With
    `hub_cache`: it also trusts the Docker Hub cache and uses it as dockerd's registry mirror."""
    ca_cert = HostFile(
        "ca_cert",
        f"{layout.client_dir}/ca.crt",
        0o644,
        values={"content": StackValue("ca_cert_pem")},
    )
    login_password = HostFile(
        "login_password",
        f"{layout.client_dir}/login-password",
        0o600,
        values={"content": StackValue("password")},
        secret=True,
    )
    scripts = (
        HostScript("install_packages", "install-packages.sh", versions.CLIENT_HOST_PACKAGES),
        HostScript(
            "trust_registry",
            "trust-registry.sh",
            (
                StackValue("registry_name"),
                StackValue("port"),
                ca_cert.path,
                StackValue("hosts_ip", optional=True),
            ),
        ),
        HostScript(
            "verify_registry",
            "verify-registry.sh",
            (StackValue("address"), StackValue("user"), login_password.path),
        ),
    )
    if not hub_cache:
        return HostManifest((ca_cert, login_password), scripts)
    docker_daemon = HostFile(
        "docker_daemon",
        layout.docker_daemon_config,
        0o644,
        template="docker-daemon-client.json",
        values={"hub_cache_address": StackValue("hub_cache_address")},
    )
    hub_cache_scripts = (
        HostScript(
            "trust_hub_cache",
            "trust-registry.sh",
            (
                StackValue("registry_name"),
                StackValue("hub_cache_port"),
                ca_cert.path,
                StackValue("hosts_ip", optional=True),
            ),
        ),
        HostScript("use_registry_mirror", "use-registry-mirror.sh", (StackValue("hub_cache_url"),)),
        # Run when hubCache is turned off (their commands leave the stack).
        HostScript(
            "drop_registry_mirror", "use-registry-mirror.sh", ("--none", docker_daemon.path)
        ),
        HostScript(
            "forget_hub_cache",
            "trust-registry.sh",
            ("--forget", StackValue("registry_name"), StackValue("hub_cache_port")),
        ),
    )
    return HostManifest((ca_cert, login_password, docker_daemon), (*scripts, *hub_cache_scripts))


REGISTRY_LAYOUT = RegistryHostLayout()
REGISTRY_HOST = registry_host(REGISTRY_LAYOUT)
REGISTRY_HOST_PUBLIC_TLS = registry_host(REGISTRY_LAYOUT, tls="public")
REGISTRY_HOST_SPACES = registry_host(REGISTRY_LAYOUT, storage="spaces")
REGISTRY_HOST_SPACES_VALKEY = registry_host(REGISTRY_LAYOUT, storage="spaces", cache="valkey")
REGISTRY_HOST_HUB_CACHE = registry_host(REGISTRY_LAYOUT, hub_cache=True)
REGISTRY_HOST_PUBLIC_TLS_HUB_CACHE = registry_host(REGISTRY_LAYOUT, tls="public", hub_cache=True)
CLIENT_HOST = client_host()
CLIENT_HOST_HUB_CACHE = client_host(hub_cache=True)
# Every host, when extra SSH public keys are configured (sshd reads authorized_keys2 too).
EXTRA_SSH_KEYS_FILE = HostFile(
    "extra_ssh_keys",
    "/root/.ssh/authorized_keys2",
    0o600,
    values={"content": StackValue("extra_ssh_keys")},
)
