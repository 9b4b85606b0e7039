"""The Docker Hub cache (hubCache, issue 20) as the program declares it: under mocks (`program`)
and its rendered files checked by the real nginx, Compose and shellcheck (`files`).

The cache running for real (pull-through, expiry, access) is `test_hub_cache_stack.py`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.manifest import (
    CLIENT_HOST_HUB_CACHE,
    REGISTRY_HOST,
    REGISTRY_HOST_HUB_CACHE,
    REGISTRY_LAYOUT,
    command_name,
)
from tests.harness import ProgramRun, run_program
from tests.realstack.hostsim import (
    REGISTRY_HOST_NAME,
    container_view,
    nginx_conf_path,
    with_image_nginx_user,
)
from tests.realstack.sandbox import Sandbox, mapped_accounts
from tests.remote_commands import PlacedFile, commands_placing_secret, place_file_commands
from tests.test_lifecycle import DATA_PATH, Deployed, up
from tests.test_rendered_files import compose_config, debian_tool

TOKEN = "dckr_pat_" + "Zq7" * 9  # a Docker Hub access token's shape
HUB_CACHE = {
    "hubCache": True,
    "dockerHubUser": "acmeci",
    "allowedCidrs": ["203.0.113.0/24"],
}
CACHE, NGINX = REGISTRY_LAYOUT.hub_cache_service, REGISTRY_LAYOUT.nginx_service
# The commands that undo the cache when it is turned off (they run on delete only).
UNDO = {"registry-remove-hub-cache", "client-0-drop-registry-mirror", "client-0-forget-hub-cache"}
FIREWALL = "digitalocean:index/firewall:Firewall"


@pytest.fixture(scope="module")
def cache_run() -> ProgramRun:
    return run_program(overrides=HUB_CACHE, secrets={"dockerHubToken": TOKEN})


def host_files(run: ProgramRun) -> dict[str, str]:
    """Host path -> content of every file the run places on the registry host."""
    names = {
        command_name(REGISTRY_HOST_NAME, host_file) for host_file in REGISTRY_HOST_HUB_CACHE.files
    }
    return {
        path: command.inputs["stdin"]
        for path, command in place_file_commands(run).items()
        if command.name in names
    }


def cache_server_block(nginx_conf: str) -> str:
    start = nginx_conf.index(f"listen {HUB_CACHE_PORT} ssl")
    return nginx_conf[start : nginx_conf.index("\n    }\n", start)]


HUB_CACHE_PORT = 5044


def server_firewall(run: ProgramRun) -> dict[str, Any]:
    (firewall,) = [r for r in run.of_type(FIREWALL) if r.name == "network-server-firewall"]
    return firewall.inputs


# -- settings reach the program --------------------------------------------------------------


@pytest.mark.program
def test_off_by_default_nothing_of_the_cache_is_declared(program_run: ProgramRun) -> None:
    names = {r.name for r in program_run.resources.values()}
    assert not [name for name in names if "hub-cache" in name or "mirror" in name]
    files = {
        path: command.inputs["stdin"] for path, command in place_file_commands(program_run).items()
    }
    assert not [path for path in files if "hub-cache" in path]
    for path in (REGISTRY_HOST.file("nginx_conf").path, REGISTRY_HOST.file("compose").path):
        assert "hub" not in files[path].lower() and "5044" not in files[path]
    ports = [rule["portRange"] for rule in server_firewall(program_run)["inboundRules"]]
    assert str(HUB_CACHE_PORT) not in ports
    assert "hubCacheAddress" not in program_run.outputs


@pytest.mark.program
def test_the_cache_port_is_open_to_the_clients_and_allowed_cidrs_only(
    cache_run: ProgramRun,
) -> None:
    rules = [
        rule
        for rule in server_firewall(cache_run)["inboundRules"]
        if rule["portRange"] == str(HUB_CACHE_PORT)
    ]
    assert len(rules) == 1
    assert rules[0]["sourceAddresses"] == ["203.0.113.0/24"]
    assert rules[0]["sourceTags"] == ["registry-dev-client"]
    assert "0.0.0.0/0" not in json.dumps(rules)


@pytest.mark.program
def test_the_cache_is_distribution_in_proxy_mode_for_docker_hub_on_its_own_socket_and_dir(
    cache_run: ProgramRun,
) -> None:
    files = host_files(cache_run)
    config = yaml.safe_load(files[REGISTRY_HOST_HUB_CACHE.file("hub_cache_config").path])
    assert config["proxy"] == {"remoteurl": "https://registry-1.docker.io", "ttl": "168h"}
    assert config["http"]["net"] == "unix"
    assert config["http"]["addr"] == REGISTRY_LAYOUT.hub_cache_socket
    assert config["storage"]["filesystem"]["rootdirectory"] == REGISTRY_LAYOUT.registry_storage
    compose = yaml.safe_load(files[REGISTRY_HOST.file("compose").path])
    cache = compose["services"][CACHE]
    assert (
        f"{REGISTRY_LAYOUT.hub_cache_data_dir}:{REGISTRY_LAYOUT.registry_storage}"
        in (cache["volumes"])
    )
    assert REGISTRY_LAYOUT.hub_cache_data_dir != REGISTRY_LAYOUT.data_dir
    assert "ports" not in cache  # reached through nginx only
    # nginx starts without it: the cache cannot start while Docker Hub is unreachable.
    assert CACHE not in compose["services"][NGINX]["depends_on"]
    # The main registry is untouched: no proxy section in its config.
    assert "proxy" not in yaml.safe_load(files[REGISTRY_HOST.file("registry_config").path])


@pytest.mark.program
def test_a_short_ttl_reaches_the_cache_config(run_with: Any) -> None:
    run = run_with({**HUB_CACHE, "dockerHubUser": "", "hubCacheTtl": "30m"})
    config = yaml.safe_load(host_files(run)[REGISTRY_HOST_HUB_CACHE.file("hub_cache_config").path])
    assert config["proxy"]["ttl"] == "30m"


@pytest.mark.program
def test_the_docker_hub_token_reaches_the_host_only_in_the_cache_env_file(
    cache_run: ProgramRun,
) -> None:
    placed = commands_placing_secret(cache_run, TOKEN)
    assert placed == {
        "registry-file-hub-cache-env": PlacedFile(
            REGISTRY_HOST_HUB_CACHE.file("hub_cache_env").path, "0:0", "0600"
        )
    }
    env = host_files(cache_run)[REGISTRY_HOST_HUB_CACHE.file("hub_cache_env").path]
    assert f"REGISTRY_PROXY_USERNAME=acmeci\nREGISTRY_PROXY_PASSWORD={TOKEN}\n" in env
    # Wherever else it is an input (none but the env file should be), it is a secret.
    for registration in cache_run.resources.values():
        for key, value in registration.inputs.items():
            if TOKEN in json.dumps(value):
                assert registration.is_secret_input(key), f"{registration.name}.{key}"
    for name, value in cache_run.outputs.items():
        assert TOKEN not in json.dumps(value), name


@pytest.mark.program
def test_anonymous_pulls_are_admitted_from_the_client_droplets_and_allowed_cidrs_only(
    cache_run: ProgramRun,
) -> None:
    conf = host_files(cache_run)[REGISTRY_HOST.file("nginx_conf").path]
    block = cache_server_block(conf)
    allowed = re.findall(r"^\s+allow (\S+);$", block, re.MULTILINE)
    clients = [*cache_run.outputs["clientPrivateIps"], *cache_run.outputs["clientPublicIps"]]
    assert sorted(allowed) == sorted([*clients, "203.0.113.0/24"])
    assert "        deny all;\n" in block and "satisfy any;" in block
    assert "auth_basic_user_file" in block
    # The registry's own server still asks every client for a password.
    registry_block = conf[conf.index("listen 5043 ssl") : conf.index(f"listen {HUB_CACHE_PORT}")]
    assert "satisfy any" not in registry_block and "allow " not in registry_block


@pytest.mark.program
def test_client_droplets_trust_the_cache_and_use_it_as_their_docker_mirror(
    cache_run: ProgramRun,
) -> None:
    daemon = cache_run.named("client-0-file-docker-daemon")
    assert json.loads(daemon.inputs["stdin"]) == {
        "registry-mirrors": ["https://registry.internal:5044"]
    }
    assert CLIENT_HOST_HUB_CACHE.file("docker_daemon").path == "/etc/docker/daemon.json"
    trust = cache_run.named("client-0-trust-hub-cache").inputs["create"]
    assert "registry.internal 5044 /etc/private-registry/ca.crt" in trust
    use = cache_run.named("client-0-use-registry-mirror")
    assert "https://registry.internal:5044" in use.inputs["create"]
    activate = cache_run.named("registry-activate")
    assert activate.urn in use.dependencies


@pytest.mark.program
def test_outputs_give_the_cache_address_and_a_containerd_hosts_toml(
    cache_run: ProgramRun,
) -> None:
    assert cache_run.outputs["hubCacheAddress"] == "registry.internal:5044"
    toml = cache_run.outputs["hubCacheContainerdHostsToml"]
    assert 'server = "https://registry-1.docker.io"' in toml
    assert '[host."https://registry.internal:5044"]' in toml
    assert 'capabilities = ["pull", "resolve"]' in toml


# -- every change a user can make ------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_without_cache() -> Deployed:
    return up(None)[0]


@pytest.fixture(scope="module")
def deployed_with_cache(deployed_without_cache: Deployed) -> Deployed:
    return up(deployed_without_cache, {"hubCache": True})[0]


@pytest.mark.program
def test_turning_the_cache_on_adds_files_and_a_firewall_rule_and_keeps_the_data_path(
    deployed_without_cache: Deployed,
) -> None:
    _, plan = up(deployed_without_cache, {"hubCache": True})
    assert plan.names("create") == {
        "registry-file-hub-cache-config",
        "registry-file-hub-cache-env",
        "client-0-file-docker-daemon",
        "client-0-trust-hub-cache",
        "client-0-use-registry-mirror",
        *UNDO,
    }
    # Created, they run nothing.
    assert not {name for name, _, _ in plan.host_commands()} & UNDO
    assert {"network-server-firewall", "registry-file-nginx-conf", "registry-file-compose"} <= (
        plan.names("update")
    )
    assert "registry-activate" in plan.names("replace")
    assert plan.names("delete") == set()
    assert not {step.name for step in plan.steps} & DATA_PATH


@pytest.mark.program
def test_turning_the_cache_off_removes_it_from_both_hosts_and_keeps_the_data_path(
    deployed_with_cache: Deployed,
) -> None:
    _, plan = up(deployed_with_cache, {"hubCache": False})
    assert plan.names("delete") == {
        "registry-file-hub-cache-config",
        "registry-file-hub-cache-env",
        "client-0-file-docker-daemon",
        "client-0-trust-hub-cache",
        "client-0-use-registry-mirror",
        *UNDO,
    }
    assert "registry-activate" in plan.names("replace")
    assert not {step.name for step in plan.steps} & DATA_PATH
    ran = {name: command for name, action, command in plan.host_commands() if action == "delete"}
    assert set(ran) == UNDO
    # After the activation that took the service out of compose.yaml (and its container with
    # `--remove-orphans`): its container, socket volume, env file, config and content go.
    assert plan.index("registry-activate", "replace") < plan.index("registry-remove-hub-cache")
    layout = REGISTRY_LAYOUT
    assert ran["registry-remove-hub-cache"].split()[3:] == [
        layout.compose_project,
        CACHE,
        layout.hub_cache_socket_volume,
        REGISTRY_HOST_HUB_CACHE.file("hub_cache_env").path,
        f"{layout.config_dir}/hub-cache",
        layout.hub_cache_data_dir,
    ]
    # The client's dockerd drops the mirror (the file goes) and the cache port's trust goes.
    daemon = CLIENT_HOST_HUB_CACHE.file("docker_daemon").path
    assert ran["client-0-drop-registry-mirror"].endswith(f"--none {daemon}")
    assert ran["client-0-forget-hub-cache"].endswith("--forget registry.internal 5044")


@pytest.mark.program
@pytest.mark.parametrize(
    ("change", "updated"),
    [
        ({"hubCacheTtl": "24h"}, {"registry-file-hub-cache-config", "registry-file-compose"}),
        (
            {"hubCachePort": 5045},
            {
                "network-server-firewall",
                "registry-file-nginx-conf",
                "registry-file-compose",
                "client-0-file-docker-daemon",
            },
        ),
    ],
    ids=["ttl", "port"],
)
def test_changing_the_cache_settings_updates_files_in_place(
    deployed_with_cache: Deployed, change: dict[str, Any], updated: set[str]
) -> None:
    _, plan = up(deployed_with_cache, {"hubCache": True, **change})
    assert updated <= plan.names("update"), plan.summary()
    assert plan.names("delete") == set()
    assert not {name for name, _, _ in plan.host_commands()} & UNDO
    assert not {step.name for step in plan.steps} & DATA_PATH
    assert "registry-activate" in plan.names("replace")


# -- the rendered files, by the real tools ---------------------------------------------------


@pytest.mark.files
def test_nginx_accepts_the_config_with_the_cache_server(
    cache_run: ProgramRun, tmp_path: Path
) -> None:
    files = host_files(cache_run)
    compose = yaml.safe_load(files[REGISTRY_HOST.file("compose").path])
    view = container_view(compose, NGINX, files)
    config = nginx_conf_path(compose)
    result = Sandbox(tmp_path).run(
        f"{debian_tool('nginx', 'nginx')} -t -c {config} -e stderr",
        files={
            **view,
            **mapped_accounts(with_image_nginx_user()),
            "/etc/hosts": f"127.0.0.1 localhost\n127.0.0.2 {REGISTRY_LAYOUT.registry_service}\n",
        },
        directories={"/var/cache/nginx": 0o755},
    )
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.files
def test_compose_runs_the_cache_as_its_own_service_published_through_nginx_only(
    cache_run: ProgramRun, tmp_path: Path
) -> None:
    files = host_files(cache_run)
    result = compose_config(files, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    services = json.loads(result.stdout)["services"]
    assert set(services) == {REGISTRY_LAYOUT.registry_service, NGINX, CACHE}
    published = [port["published"] for port in services[NGINX]["ports"]]
    assert published[:2] == ["5043", str(HUB_CACHE_PORT)]
    assert "ports" not in services[CACHE]
    # Its env file was read: the credentials reach the process environment only.
    assert services[CACHE]["environment"]["REGISTRY_PROXY_PASSWORD"] == TOKEN
    assert TOKEN not in json.dumps(services[CACHE]["command"])
    sockets = {
        service: [m["target"] for m in services[service]["volumes"] if m["type"] == "volume"]
        for service in (CACHE, NGINX)
    }
    assert sockets[CACHE] == [REGISTRY_LAYOUT.hub_cache_socket_dir]
    assert REGISTRY_LAYOUT.hub_cache_socket_dir in sockets[NGINX]


@pytest.mark.files
def test_the_disk_check_with_the_cache_passes_shellcheck(
    cache_run: ProgramRun, tmp_path: Path
) -> None:
    script = tmp_path / "registry-disk.sh"
    script.write_text(host_files(cache_run)[REGISTRY_HOST.file("disk_script").path])
    result = subprocess.run(
        [debian_tool("shellcheck", "shellcheck"), str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
