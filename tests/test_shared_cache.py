"""Storage `spaces` under mocks: the shared Valkey cache (`spacesCache: valkey`) and the load
balancer's firewall.

The cache: a Managed Valkey cluster evicting allkeys-lru, a database firewall that admits the
registry droplets alone, the registry config's `redis` section (TLS, no password) only in this
mode, and the password reaching the hosts only in registry.env, as a secret on stdin. The
balancer: its firewall admits the client droplets and `allowedCidrs`, nothing else."""

from __future__ import annotations

import json

import pytest
import yaml

from components import versions
from components.manifest import REGISTRY_HOST_SPACES_VALKEY, redis_section
from components.rendering.templates import sha256_hex
from tests.harness import ProgramRun, Registration, run_program
from tests.remote_commands import PlacedFile, commands_placing_secret

pytestmark = pytest.mark.program

CLUSTER = "digitalocean:index/databaseCluster:DatabaseCluster"
DATABASE_FIREWALL = "digitalocean:index/databaseFirewall:DatabaseFirewall"
DROPLET = "digitalocean:index/droplet:Droplet"
LOAD_BALANCER = "digitalocean:index/loadBalancer:LoadBalancer"
NODES = ("registry-0", "registry-1", "registry-2")
SPACES = {"storage": "spaces", "registryCount": 3, "region": "fra1"}
VALKEY = {**SPACES, "spacesCache": "valkey", "clientCount": 2}


@pytest.fixture(scope="module")
def valkey_run() -> ProgramRun:
    return run_program(overrides=VALKEY)


@pytest.fixture(scope="module")
def memory_run() -> ProgramRun:
    return run_program(overrides={**VALKEY, "spacesCache": "memory"})


def only(run: ProgramRun, type_token: str) -> Registration:
    found = run.of_type(type_token)
    assert len(found) == 1, f"{type_token}: {[r.name for r in found]}"
    return found[0]


def file_text(run: ProgramRun, node: str, role: str) -> str:
    text: str = run.named(f"{node}-file-{role.replace('_', '-')}").inputs["stdin"]
    return text


def test_valkey_cluster_evicts_allkeys_lru_in_the_droplets_region(valkey_run: ProgramRun) -> None:
    cluster = only(valkey_run, CLUSTER).inputs
    assert (cluster["engine"], cluster["region"], cluster["nodeCount"]) == ("valkey", "fra1", 1)
    # DigitalOcean's default, noeviction, fails the registry's writes once memory is full.
    assert cluster["evictionPolicy"] == "allkeys_lru"
    assert cluster["name"] == "registry-dev-cache"


def test_cache_firewall_admits_the_registry_droplets_only(valkey_run: ProgramRun) -> None:
    firewall = only(valkey_run, DATABASE_FIREWALL)
    assert firewall.inputs["clusterId"] == only(valkey_run, CLUSTER).id
    node_ids = {valkey_run.named(f"{node}-droplet").id for node in NODES}
    rules = firewall.inputs["rules"]
    assert {rule["type"] for rule in rules} == {"droplet"}
    assert {rule["value"] for rule in rules} == node_ids and len(rules) == len(NODES)
    client_ids = {r.id for r in valkey_run.of_type(DROPLET)} - node_ids
    assert len(client_ids) == 2 and not client_ids & {rule["value"] for rule in rules}
    # The clients' proof runs once the nodes can reach the cache.
    assert firewall.urn in valkey_run.named("client-0-verify-registry").dependencies


def test_cache_password_reaches_the_hosts_only_as_a_secret_file(valkey_run: ProgramRun) -> None:
    password = only(valkey_run, CLUSTER).outputs["password"]
    env_file = PlacedFile(REGISTRY_HOST_SPACES_VALKEY.file("registry_env").path, "0:0", "0600")
    assert commands_placing_secret(valkey_run, password) == {
        f"{node}-file-registry-env": env_file for node in NODES
    }
    env = dict(
        line.split("=", 1)
        for line in file_text(valkey_run, "registry-0", "registry_env").splitlines()
    )
    assert env["REGISTRY_REDIS_PASSWORD"] == password
    assert not any(password in json.dumps(value) for value in valkey_run.outputs.values())


def test_registry_config_uses_the_shared_cache_over_tls_without_its_password(
    valkey_run: ProgramRun,
) -> None:
    cluster = only(valkey_run, CLUSTER).outputs
    text = file_text(valkey_run, "registry-0", "registry_config")
    config = yaml.safe_load(text)
    assert config["storage"]["cache"] == {"blobdescriptor": "redis"}
    assert config["redis"] == {
        "addrs": [f"{cluster['privateHost']}:25061"],
        # Registry 3.1 turns TLS on only when a redis.tls key is set.
        "tls": {"rootcas": [versions.REGISTRY_CA_BUNDLE]},
    }
    assert cluster["password"] not in text
    for node in NODES:
        assert file_text(valkey_run, node, "registry_config") == text
    compose = yaml.safe_load(file_text(valkey_run, "registry-0", "compose"))
    label = compose["services"]["registry"]["labels"]["io.private-registry.config-sha256"]
    assert label == sha256_hex(text)


def test_memory_cache_config_differs_from_valkey_only_by_the_cache(
    valkey_run: ProgramRun, memory_run: ProgramRun
) -> None:
    memory = file_text(memory_run, "registry-0", "registry_config")
    assert "redis" not in memory
    assert yaml.safe_load(memory)["storage"]["cache"] == {"blobdescriptor": "inmemory"}
    address = f"{only(valkey_run, CLUSTER).outputs['privateHost']}:25061"
    valkey = file_text(valkey_run, "registry-0", "registry_config")
    assert valkey.endswith(redis_section(address))
    unshared = valkey.removesuffix(redis_section(address))
    # Each run made its own bucket name (random hex): compare with the names taken out.
    buckets = {
        run_name: only(run, "digitalocean:index/spacesBucket:SpacesBucket").inputs["name"]
        for run_name, run in (("valkey", valkey_run), ("memory", memory_run))
    }
    assert unshared.replace("blobdescriptor: redis", "blobdescriptor: inmemory").replace(
        buckets["valkey"], "<bucket>"
    ) == memory.replace(buckets["memory"], "<bucket>")
    env = file_text(memory_run, "registry-0", "registry_env")
    assert "REDIS" not in env and len(env.splitlines()) == 3


@pytest.mark.parametrize("overrides", [{}, SPACES], ids=["volume", "spaces-memory"])
def test_without_valkey_there_is_no_cache_cluster_and_no_redis_config(
    overrides: dict[str, object], program_run: ProgramRun
) -> None:
    run = run_program(overrides=overrides) if overrides else program_run
    assert run.of_type(CLUSTER) == [] and run.of_type(DATABASE_FIREWALL) == []
    node = "registry" if not overrides else "registry-0"
    config = file_text(run, node, "registry_config")
    assert "redis" not in config
    assert yaml.safe_load(config)["storage"]["cache"] == {"blobdescriptor": "inmemory"}


# -- the balancer's firewall ---------------------------------------------------------------


def test_balancer_admits_the_client_droplets_and_allowed_cidrs_only() -> None:
    run = run_program(
        overrides={**SPACES, "clientCount": 2, "allowedCidrs": ["198.51.100.0/24", "2001:db8::/48"]}
    )
    balancer = only(run, LOAD_BALANCER)
    client_ips = run.outputs["clientPublicIps"]
    assert len(client_ips) == 2
    # The balancer listens on IPv4 only: an IPv6 block could not reach it.
    assert balancer.inputs["firewall"] == {
        "allows": [f"ip:{ip}" for ip in client_ips] + ["cidr:198.51.100.0/24"]
    }
    # The engine knows the balancer waits for the clients' addresses (no cycle: the clients'
    # droplets need nothing of the balancer's).
    client_droplets = {run.named(f"client-{index}-droplet").urn for index in range(2)}
    assert client_droplets <= set(balancer.property_dependencies["firewall"])


def test_balancer_with_nobody_to_admit_denies_everyone() -> None:
    run = run_program(overrides={**SPACES, "clientCount": 0, "allowedCidrs": []})
    assert only(run, LOAD_BALANCER).inputs["firewall"] == {"denies": ["cidr:0.0.0.0/0"]}
