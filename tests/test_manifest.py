"""The host manifests: one table per host kind, coherent on its own, and the only place a path,
a port or a service name is stated (moving a directory changes nothing else)."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
import yaml

from components import manifest
from components.manifest import (
    ClientHostLayout,
    HostFile,
    HostManifest,
    HostScript,
    RegistryHostLayout,
    StackValue,
    client_host,
    command_name,
    registry_host,
)
from components.rendering.templates import SCRIPTS_DIR
from components.versions import REGISTRY_CONFIG_FILE
from tests.harness import ProgramRun, run_program
from tests.mocks import ProviderMocks
from tests.realstack.hostsim import container_view, nginx_conf_path

pytestmark = pytest.mark.program

MOVED_REGISTRY = RegistryHostLayout(
    config_dir="/opt/moved-config",
    data_mount="/mnt/moved-data",
    unit_path="/usr/lib/systemd/system/moved.service",
    registry_service="moved-backend",
    nginx_service="moved-front",
    registry_socket_volume="moved-socket",
    registry_socket_dir="/moved-run/api",
    debug_port=7001,
    metrics_port=7443,
    balancer_port=7444,
    metrics_dir="/mnt/moved-metrics",
    registry_storage="/moved-storage",
    nginx_dir="/moved-nginx",
    acme_dir="/mnt/moved-acme",
)
MOVED_CLIENT = ClientHostLayout(client_dir="/opt/moved-client")
# What the defaults say, which a moved layout must say nowhere.
DEFAULT_FACTS = [
    "/etc/registry",
    "/srv/registry",
    "registry.service",
    "/var/lib/registry",
    "/etc/nginx",
    "registry-api",
    "/run/registry-api",
    ":5001",
    ":9443",
    "9444",
    " 9443 ",
    "/etc/private-registry",
]


def sample_stack_values(host_manifest: HostManifest) -> dict[str, object]:
    """A value for every stack value, each naming itself (so it says none of DEFAULT_FACTS)."""
    return {name: f"<{name}>" for name in sorted(host_manifest.stack_values)}


def everything_said(host_manifest: HostManifest) -> dict[str, str]:
    """Every text the host receives or runs, comments left out: rendered files, paths, script
    arguments."""
    stack = sample_stack_values(host_manifest)
    said = {}
    for host_file in host_manifest.files:
        said[host_file.role] = "".join(
            line
            for line in host_file.render(stack).splitlines(keepends=True)
            if not line.lstrip().startswith("#")
        )
        said[f"{host_file.role} path"] = host_file.path
    for script in host_manifest.scripts:
        said[f"{script.role} arguments"] = json.dumps(script.arguments(stack))
    return said


@pytest.mark.parametrize(
    "host_manifest",
    [
        manifest.REGISTRY_HOST,
        manifest.REGISTRY_HOST_SPACES,
        manifest.REGISTRY_HOST_PUBLIC_TLS,
        manifest.CLIENT_HOST,
    ],
    ids=["registry", "registry-spaces", "registry-public-tls", "client"],
)
def test_every_file_renders_with_exactly_its_values_and_no_placeholder_left(
    host_manifest: HostManifest,
) -> None:
    for role, text in everything_said(host_manifest).items():
        assert "{{" not in text and "}}" not in text, role


def test_moving_every_directory_port_and_service_leaves_no_old_fact_anywhere() -> None:
    for host_manifest in (
        registry_host(MOVED_REGISTRY),
        registry_host(MOVED_REGISTRY, storage="spaces"),
        registry_host(MOVED_REGISTRY, tls="public"),
        client_host(MOVED_CLIENT),
    ):
        for role, text in everything_said(host_manifest).items():
            stale = [fact for fact in DEFAULT_FACTS if fact in text]
            assert not stale, f"{role} still says {stale}:\n{text}"


def test_a_moved_layout_stays_coherent_between_compose_nginx_and_the_unit() -> None:
    moved = registry_host(MOVED_REGISTRY)
    stack = sample_stack_values(moved)
    compose = yaml.safe_load(moved.file("compose").render(stack))
    backend, front = MOVED_REGISTRY.registry_service, MOVED_REGISTRY.nginx_service
    assert set(compose["services"]) == {backend, front}
    assert set(compose["services"][front]["depends_on"]) == {backend}
    paths = {host_file.path: host_file.path for host_file in moved.files}
    nginx_view = container_view(compose, front, paths)
    nginx_conf = nginx_conf_path(compose, front)
    assert nginx_view[nginx_conf] == moved.file("nginx_conf").path
    conf = moved.file("nginx_conf").render(stack)
    for directive, role in (
        ("ssl_certificate", "server_cert"),
        ("ssl_certificate_key", "server_key"),
        ("auth_basic_user_file", "htpasswd"),
    ):
        read = [
            line.split()[1].rstrip(";")
            for line in conf.splitlines()
            if line.split()[:1] == [directive]
        ]
        assert read and {nginx_view[path] for path in read} == {moved.file(role).path}, directive
    assert f"server unix:{MOVED_REGISTRY.registry_socket};" in conf
    assert f"server {backend}:{MOVED_REGISTRY.debug_port};" in conf
    socket_mount = f"{MOVED_REGISTRY.registry_socket_volume}:{MOVED_REGISTRY.registry_socket_dir}"
    for service in (backend, front):
        assert socket_mount in compose["services"][service]["volumes"], service
    assert set(compose["volumes"]) == {MOVED_REGISTRY.registry_socket_volume}
    registry_view = container_view(compose, backend, paths)
    assert registry_view[REGISTRY_CONFIG_FILE] == moved.file("registry_config").path
    assert compose["services"][backend]["env_file"] == [moved.file("registry_env").path]
    assert (
        f"{MOVED_REGISTRY.data_dir}:{MOVED_REGISTRY.registry_storage}"
        in compose["services"][backend]["volumes"]
    )
    registry_config = yaml.safe_load(moved.file("registry_config").render(stack))
    assert registry_config["http"]["net"] == "unix"
    assert registry_config["http"]["addr"] == MOVED_REGISTRY.registry_socket
    assert registry_config["http"]["debug"]["addr"] == f":{MOVED_REGISTRY.debug_port}"
    assert (
        registry_config["storage"]["filesystem"]["rootdirectory"] == MOVED_REGISTRY.registry_storage
    )
    unit = moved.file("systemd_unit").render(stack)
    assert f"RequiresMountsFor={MOVED_REGISTRY.data_mount}\n" in unit
    assert f"--file {moved.file('compose').path} " in unit
    assert f"exec -T {front} nginx -c {nginx_conf} -s reload" in unit
    assert moved.script("activate").arguments(stack) == [
        "<registry_name>",
        "<port>",
        moved.file("compose").path,
        moved.file("ca_cert").path,
        # the units the host gets, named after the moved unit
        PurePosixPath(moved.file("requests_service").path).name,
        PurePosixPath(moved.file("gc_timer").path).name,
        PurePosixPath(moved.file("disk_timer").path).name,
    ]


def test_the_program_places_and_runs_only_the_moved_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "REGISTRY_HOST", registry_host(MOVED_REGISTRY))
    monkeypatch.setattr(manifest, "CLIENT_HOST", client_host(MOVED_CLIENT))
    run: ProgramRun = run_program(ProviderMocks())
    commands = run.commands()
    assert len(commands) >= 15
    for registration in commands:
        for field in ("create", "update", "delete", "stdin"):
            text = str(registration.inputs.get(field, ""))
            stale = [
                fact
                for fact in ("/etc/registry", "/srv/registry", "/etc/private-registry")
                if fact in text
            ]
            assert not stale, f"{registration.name}.{field} still says {stale}"
    placed = "\n".join(str(c.inputs.get("create", "")) for c in commands)
    released = run.named("registry-release-data-volume").inputs["delete"]
    assert released.endswith(f" {MOVED_REGISTRY.data_mount}")
    assert f'mv -f "$tmp" {MOVED_REGISTRY.config_dir}/compose.yaml' in placed
    assert f'mv -f "$tmp" {MOVED_CLIENT.client_dir}/ca.crt' in placed


def test_stack_values_must_be_exactly_the_ones_the_manifest_uses() -> None:
    needed = manifest.CLIENT_HOST.stack_values
    manifest.CLIENT_HOST.check_stack_values(set(needed))
    with pytest.raises(ValueError, match=r"missing \['user'\], unused \[\]"):
        manifest.CLIENT_HOST.check_stack_values(needed - {"user"})
    with pytest.raises(ValueError, match=r"missing \[\], unused \['extra'\]"):
        manifest.CLIENT_HOST.check_stack_values(needed | {"extra"})


def test_an_empty_optional_argument_is_left_out_and_a_missing_one_is_an_error() -> None:
    script = HostScript(
        "trust", "trust-registry.sh", ("fixed", StackValue("name"), StackValue("ip", optional=True))
    )
    assert script.arguments({"name": "n", "ip": "10.0.0.2"}) == ["fixed", "n", "10.0.0.2"]
    assert script.arguments({"name": "n", "ip": None}) == ["fixed", "n"]
    assert script.arguments({"name": "n", "ip": ""}) == ["fixed", "n"]
    with pytest.raises(ValueError, match="no value"):
        script.arguments({"name": None, "ip": ""})


def test_resource_names_follow_one_rule() -> None:
    host_file = HostFile("server_cert", "/x/server.crt", 0o644, {"content": "pem"})
    script = HostScript("mount_data_volume", "mount-data-volume.sh", ())
    assert command_name("registry", host_file) == "registry-file-server-cert"
    assert command_name("client-0", script) == "client-0-mount-data-volume"


def test_roles_are_unique_and_every_script_exists() -> None:
    for host_manifest in (manifest.REGISTRY_HOST, manifest.CLIENT_HOST):
        roles = [entry.role for entry in (*host_manifest.files, *host_manifest.scripts)]
        assert len(roles) == len(set(roles))
        for script in host_manifest.scripts:
            assert (SCRIPTS_DIR / script.script).is_file(), script.script
