"""Layer 4, the droplet twin: `pulumi up` and `pulumi destroy` of the example stack with every
remote command run over SSH on droplet-like hosts (systemd, sshd, cloud-init, the Docker Engine
from the package names the host scripts install), nothing stood in for (tests/twin/).

The tests share one stack, as a user's day does: first `up`, a no-op `up`, a user added and the
passwords rotated, reboots, a dockerd restart under a pull loop, the timers' services, destroy.
Each test starts from the state the one before left, so they run in this order, as one module.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from components.manifest import (
    CLIENT_HOST_HUB_CACHE,
    REGISTRY_HOST_HUB_CACHE,
    REGISTRY_HOST_PUBLIC_TLS,
    REGISTRY_LAYOUT,
)
from tests.harness import ProgramRun, run_program
from tests.lifecycle.planner import plan_destroy, plan_up
from tests.mocks import ProviderMocks
from tests.polling import eventually
from tests.realstack.hostsim import LOG_FIELD
from tests.twin.acme import DIRECTORY, DNS_IP, Acme
from tests.twin.cache import cached_build
from tests.twin.droplets import PUBLIC_GATEWAY, Droplet, Twin
from tests.twin.engine import CommandRun, Engine
from tests.twin.firewalls import PROBE
from tests.twin.hub import IMAGES, Hub

pytestmark = pytest.mark.twin

REGISTRY = "registry-droplet"
CLIENT = "client-0-droplet"
# Debian's docker.service allows 3 starts a minute: tests restarting dockerd clear the count first.
RESTART_DOCKER = "systemctl reset-failed docker.service docker.socket && systemctl restart docker"
USERS = ["ci", "alice"]


def _twin_can_run() -> str | None:
    """Why the twin cannot run here, or None."""
    if os.geteuid() != 0:
        return "the twin needs root"
    for tool in (
        "unshare",
        "nsenter",
        "losetup",
        "mkfs.ext4",
        "ssh",
        "docker-registry",
        "curl",
        "nft",
    ):
        if shutil.which(tool) is None:
            return f"{tool} is missing (tests/run installs it as root)"
    return None


@dataclass
class Stack:
    """The example stack on the twin: the engine state after the last `up`."""

    mocks: ProviderMocks
    run: ProgramRun
    engine: Engine
    twin: Twin
    config: dict[str, Any]
    first_up: list[CommandRun]

    def up(self, overrides: Mapping[str, Any]) -> list[CommandRun]:
        """`pulumi up` with the config changed by `overrides`: the remote commands it ran."""
        self.config = {**self.config, **overrides}
        run = run_program(mocks=self.mocks, overrides=self.config)
        ran = self.engine.apply(plan_up(self.run, run, now=self.mocks.now), run)
        self.run = run
        return ran

    def droplet(self, resource_name: str) -> Droplet:
        return self.twin.droplets[self.run.named(resource_name).id]

    def ssh(self, resource_name: str, command: str, stdin: bytes = b"") -> str:
        """Run `command` on the droplet over SSH as the deployer; fail with its output."""
        done = self.engine.ssh(self.connection(resource_name), command, stdin=stdin, timeout=300)
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, f"{command} on {resource_name} failed: {output}"
        return done.stdout.decode()

    def ssh_argv(self, resource_name: str, command: str) -> list[str]:
        return self.engine.ssh_argv(self.connection(resource_name), command)

    def connection(self, resource_name: str) -> dict[str, Any]:
        """How the program's commands reach the droplet (its address, user and key)."""
        droplet = self.run.named(resource_name)
        connection: dict[str, Any] = next(
            command.inputs["connection"]
            for command in self.run.commands()
            if command.inputs["connection"]["host"] == droplet.outputs["ipv4Address"]
        )
        return connection

    def password(self, user: str) -> str:
        password: str = self.run.outputs["passwords"][user]
        return password

    def registry_status(self, user: str, password: str) -> int:
        """The status of an authenticated `GET /v2/` from the client, through nginx (0: no
        answer)."""
        address = self.run.outputs["registryAddress"]
        out = self.ssh(
            CLIENT,
            f"curl -s -o /dev/null -w '%{{http_code}}' -K - https://{address}/v2/ || true",
            stdin=f'user = "{user}:{password}"\n'.encode(),
        )
        return int(out)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Twin, Hub, Path]]:
    reason = _twin_can_run()
    if reason:
        pytest.fail(f"the droplet twin cannot run: {reason}")
    build = cached_build()
    directory = tmp_path_factory.mktemp("twin")
    world = Twin(build, directory)
    try:
        world.start()
        hub = Hub(world, directory / "hub")
        yield world, hub, directory
    finally:
        world.close()


@pytest.fixture(scope="module")
def stack(twin: tuple[Twin, Hub, Path]) -> Stack:
    """The first `pulumi up` of the example stack (registry + one client), on the twin."""
    world, hub, directory = twin
    engine = Engine(world, hub, directory)
    mocks = ProviderMocks()
    config: dict[str, Any] = {**hub.image_config()}
    run = run_program(mocks=mocks, overrides=config)
    first_up = engine.apply(plan_up(None, run, now=mocks.now), run)
    return Stack(mocks, run, engine, world, config, first_up)


def serving_again(stack: Stack, after: str, timeout: float) -> None:
    """Wait until the registry answers the `ci` user with 200 again."""
    eventually(
        lambda: stack.registry_status("ci", stack.password("ci")) == 200,
        f"the registry serving again {after}",
        timeout,
        interval=1,
    )


def container_started(stack: Stack, service: str) -> str:
    """When the registry host's container of `service` started (its id and start time)."""
    out = stack.ssh(
        REGISTRY,
        "docker inspect --format '{{.Id}} {{.State.StartedAt}}' "
        f"$(docker compose --project-name registry ps --quiet {shlex.quote(service)})",
    )
    return out.strip()


def test_first_up_runs_every_command_and_the_client_proves_login_push_pull(stack: Stack) -> None:
    planned = plan_up(None, stack.run).host_commands()
    assert [(run.name, run.action) for run in stack.first_up] == [
        (name, action) for name, action, _ in planned
    ]
    assert "client-0-verify-registry" in {run.name for run in stack.first_up}
    # The stack output's login command, as a user runs it on the client (the `pulumi` CLI
    # answering from the stack's outputs: the passwords arrive on stdin, never in argv).
    login = stack.run.outputs["dockerLoginCommand"]
    passwords = json.dumps(stack.run.outputs["passwords"])
    stack.ssh(
        CLIENT,
        "read -r passwords; pulumi() { printf '%s\\n' \"$passwords\"; }; docker logout "
        f"{stack.run.outputs['registryAddress']} >/dev/null; {login}",
        stdin=f"{passwords}\n".encode(),
    )
    proof = f"{stack.run.outputs['registryAddress']}/private-registry/proof:registry-dev-client-0"
    stack.ssh(CLIENT, f"docker image rm {proof} >/dev/null && docker pull -q {proof}")


def test_noop_up_runs_nothing_and_a_new_user_reloads_nginx_only(stack: Stack) -> None:
    assert stack.up({}) == []
    registry_before = container_started(stack, "registry")
    nginx_before = container_started(stack, "nginx")

    ran = stack.up({"users": [*USERS, "bob"]})

    assert "registry-activate" in {run.name for run in ran}
    assert container_started(stack, "registry") == registry_before
    assert container_started(stack, "nginx") == nginx_before
    assert stack.registry_status("bob", stack.password("bob")) == 200


def test_rotated_passwords_work_and_the_old_ones_get_401(stack: Stack) -> None:
    old = stack.password("ci")
    registry_before = container_started(stack, "registry")

    ran = stack.up({"passwordRotation": 1})

    assert stack.password("ci") != old
    assert "client-0-verify-registry" in {run.name for run in ran}
    assert stack.registry_status("ci", stack.password("ci")) == 200
    assert stack.registry_status("ci", old) == 401
    assert container_started(stack, "registry") == registry_before


def refused_during(stack: Stack, action: str) -> tuple[float, int, int]:
    """Run `action` on the registry host while the client polls `GET /v2/` every 20 ms: how
    long new connections were refused (first to last failed poll), how many of how many."""
    address = stack.run.outputs["registryAddress"]
    poll = (
        "end=$(( $(date +%s) + 12 )); while (( $(date +%s) < end )); do "
        "printf '%s ' \"$(date +%s.%N)\"; curl -s -o /dev/null -w '%{http_code}\\n' "
        f"--max-time 2 https://{address}/v2/ || true; sleep 0.02; done"
    )
    polling = subprocess.Popen(
        stack.ssh_argv(CLIENT, poll), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    time.sleep(4)
    stack.ssh(REGISTRY, action)
    out, _ = polling.communicate(timeout=60)
    samples = [line.split() for line in out.decode().splitlines() if line.strip()]
    assert len(samples) > 100, out.decode()[-2000:]
    codes = {code for _, code in samples}
    assert codes <= {"401", "000"}, codes
    refused = [float(at) for at, code in samples if code != "401"]
    gap = (max(refused) - min(refused)) if refused else 0.0
    return gap, len(refused), len(samples)


def test_dockerd_restart_keeps_the_containers_and_refuses_connections_only_briefly(
    stack: Stack,
) -> None:
    """`systemctl restart docker` (what finishes a docker.io upgrade) with the client
    polling `GET /v2/` every 20 ms: live-restore keeps the containers (same start time), and
    new connections are refused only while dockerd restarts its docker-proxy processes."""
    registry_before = container_started(stack, "registry")
    nginx_before = container_started(stack, "nginx")
    gap, refused, polls = refused_during(stack, RESTART_DOCKER)
    print(f"dockerd restart: {refused} of {polls} polls refused over {gap:.2f} s")
    assert gap < 2.0, f"connections refused for {gap:.2f} s"
    assert container_started(stack, "registry") == registry_before
    assert container_started(stack, "nginx") == nginx_before
    proof = f"{stack.run.outputs['registryAddress']}/private-registry/proof:registry-dev-client-0"
    stack.ssh(CLIENT, f"docker image rm {proof} >/dev/null && docker pull -q {proof}")


def test_garbage_collection_and_disk_check_run_through_their_timers_services(
    stack: Stack,
) -> None:
    for timer in ("registry-gc.timer", "registry-disk.timer"):
        stack.ssh(REGISTRY, f"systemctl is-active --quiet {timer}")
        stack.ssh(REGISTRY, f"systemctl start $(systemctl show --value --property Unit {timer})")
    # Read-write again after the collection: the client's proof (a push) passes again.
    verify = stack.run.named("client-0-verify-registry")
    stack.ssh(CLIENT, verify.inputs["create"], stdin=str(verify.inputs["stdin"]).encode())


Probes = Mapping[tuple[str, int], str]


def reachable(*groups: tuple[list[str], Probes]) -> None:
    """Probe every (address, port) of each group at once from where its command prefix runs
    (the deployer's network, a droplet, a bystander), and compare with the expected "open",
    "refused" or "dropped" (filtered)."""
    started = time.monotonic()
    probes = [
        (
            list(targets),
            subprocess.Popen(
                [*argv, "python3", "-c", PROBE, json.dumps(list(targets)), "1.5"],
                stdout=subprocess.PIPE,
                text=True,
            ),
        )
        for argv, targets in groups
    ]
    seen = [dict(zip(wanted, json.loads(probe.communicate(timeout=30)[0]), strict=True))
            for wanted, probe in probes]  # fmt: skip
    print(f"probed in {time.monotonic() - started:.1f} s: {seen}")
    assert seen == [dict(targets) for _, targets in groups]


def test_cloud_firewalls_admit_only_what_the_readme_promises(stack: Stack) -> None:
    """The program's firewalls, as nftables on the twin's router, against real connections:
    from the Internet only SSH (adminCidrs) reaches either droplet; the registry port only from
    the client droplets (public or VPC address); the metrics listener only from a droplet with
    the scraper tag. "dropped" on a port nothing listens on shows the filter, not the host."""
    registry, client = stack.droplet(REGISTRY), stack.droplet(CLIENT)
    port = int(stack.config.get("port") or 5043)
    metrics = REGISTRY_LAYOUT.metrics_port
    scraper = stack.twin.add_bystander("10.110.0.200", (stack.run.outputs["metricsScraperTag"],))
    outsider = stack.twin.add_bystander("10.110.0.201", ())
    reachable(
        (
            stack.twin.deployer(),
            {
                (registry.public_ip, 22): "open",
                (registry.public_ip, port): "dropped",
                (registry.public_ip, 80): "dropped",
                (client.public_ip, 22): "open",
                (client.public_ip, port): "dropped",
            },
        ),
        (
            ["nsenter", "-t", str(client.pid1()), "-n"],
            {
                (registry.public_ip, port): "open",
                (registry.private_ip, port): "open",
                (registry.private_ip, metrics): "dropped",
                (registry.private_ip, 80): "dropped",
            },
        ),
        (
            scraper.run(),
            {
                (registry.private_ip, metrics): "open",
                (registry.private_ip, port): "dropped",
                (client.private_ip, 22): "open",
            },
        ),
        (outsider.run(), {(registry.private_ip, metrics): "dropped"}),
    )


def test_an_allowed_cidrs_change_opens_the_registry_port_at_the_next_up(stack: Stack) -> None:
    registry = stack.droplet(REGISTRY)
    port = int(stack.config.get("port") or 5043)
    deployer = f"{PUBLIC_GATEWAY}/32"

    stack.up({"allowedCidrs": [deployer]})
    reachable((stack.twin.deployer(), {(registry.public_ip, port): "open"}))
    status = subprocess.run(
        stack.twin.deployer(
            "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
            f"https://{registry.public_ip}:{port}/v2/",
        ),
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    assert status == "401"

    stack.up({"allowedCidrs": []})
    reachable((stack.twin.deployer(), {(registry.public_ip, port): "dropped"}))


# -- The Docker Hub cache (hubCache), turned on and off on day 2 ------------------------------
# The twin's hub is Docker Hub by name for the cache (tests/twin/hub.py).
HUB_CACHE_PORT = 5044


def hub_requests_from(stack: Stack, lines_before: int) -> list[tuple[str, str]]:
    """(client address, URI) of each request the hub answered after its first `lines_before`
    log lines."""
    lines = stack.engine.hub.log.read_text(errors="replace").splitlines()[lines_before:]
    fields = [dict(LOG_FIELD.findall(line)) for line in lines if "response completed" in line]
    return [
        (
            field["http.request.remoteaddr"].strip('"').rsplit(":", 1)[0],
            field["http.request.uri"].strip('"'),
        )
        for field in fields
    ]


def cache_status_from_the_client(stack: Stack) -> str:
    """The cache's answer to the client's anonymous `GET /v2/` (000: no answer)."""
    address = f"{stack.run.outputs['registryAddress'].split(':')[0]}:{HUB_CACHE_PORT}"
    return stack.ssh(
        CLIENT,
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 https://{address}/v2/ || true",
    )


def test_hub_cache_turned_on_the_clients_plain_docker_pull_goes_through_it(stack: Stack) -> None:
    started = time.monotonic()
    ran = stack.up({"hubCache": True, "hubCachePort": HUB_CACHE_PORT})
    assert {"registry-activate", "client-0-use-registry-mirror"} <= {run.name for run in ran}
    image = IMAGES["registryImage"]
    lines_before = len(stack.engine.hub.log.read_text(errors="replace").splitlines())
    stack.ssh(CLIENT, f"docker pull -q docker.io/{image.repository}:{image.tag}")
    requests = hub_requests_from(stack, lines_before)
    # Docker Hub saw the cache (the registry droplet's address) fetch the tag and its blobs,
    # and nothing from the client: its dockerd went to the mirror.
    registry, client = stack.droplet(REGISTRY), stack.droplet(CLIENT)
    fetched = [uri for source, uri in requests if source == registry.public_ip]
    assert f"/v2/{image.repository}/manifests/{image.tag}" in fetched, requests
    assert [uri for uri in fetched if "/blobs/" in uri], requests
    assert not [r for r in requests if r[0] in (client.public_ip, client.private_ip)], requests
    print(f"hubCache on and a pull through it: {time.monotonic() - started:.1f} s")


def test_hub_cache_a_docker_hub_outage_at_start_keeps_the_registry_up(stack: Stack) -> None:
    """registry.service (re)started while Docker Hub refuses connections: the cache cannot
    start (distribution asks Docker Hub for its auth at start), the registry serves and the
    unit is active; once Docker Hub is back the cache comes up by itself."""
    started = time.monotonic()
    cache = REGISTRY_LAYOUT.hub_cache_service
    project = REGISTRY_LAYOUT.compose_project
    with stack.engine.hub.docker_hub_down():
        stack.ssh(REGISTRY, "systemctl restart registry.service")
        stack.ssh(REGISTRY, "systemctl is-active --quiet registry.service")
        assert stack.registry_status("ci", stack.password("ci")) == 200
        restarts = (
            "docker inspect --format '{{.RestartCount}}' "
            f"$(docker compose --project-name {project} ps --all --quiet {cache})"
        )
        eventually(
            lambda: int(stack.ssh(REGISTRY, restarts)) >= 1,
            "the cache restarted while Docker Hub was down",
            30,
            interval=1,
        )
        assert cache_status_from_the_client(stack) != "200"
    eventually(
        lambda: cache_status_from_the_client(stack) == "200",
        "the cache up after Docker Hub",
        120,
        interval=2,
    )
    print(f"Docker Hub outage at start and back: {time.monotonic() - started:.1f} s")


def test_hub_cache_turned_off_leaves_nothing_on_either_droplet(stack: Stack) -> None:
    started = time.monotonic()
    ran = {run.name for run in stack.up({"hubCache": False})}
    assert {
        "registry-remove-hub-cache",
        "client-0-drop-registry-mirror",
        "client-0-forget-hub-cache",
        "client-0-verify-registry",
    } <= ran
    layout, cache_port = REGISTRY_LAYOUT, HUB_CACHE_PORT
    labels = f"--filter label=com.docker.compose.project={layout.compose_project}"
    config = REGISTRY_HOST_HUB_CACHE.file("hub_cache_config").path
    left = stack.ssh(
        REGISTRY,
        f"docker ps --all --quiet {labels} "
        f"--filter label=com.docker.compose.service={layout.hub_cache_service}; "
        f"docker volume ls --quiet {labels} "
        f"--filter label=com.docker.compose.volume={layout.hub_cache_socket_volume}; "
        f"ls -d {REGISTRY_HOST_HUB_CACHE.file('hub_cache_env').path} "
        f"{PurePosixPath(config).parent} {layout.hub_cache_data_dir} 2>/dev/null || true",
    )
    assert left == "", left
    assert stack.registry_status("ci", stack.password("ci")) == 200
    assert cache_status_from_the_client(stack) == "000"
    registry_name = stack.run.outputs["registryAddress"].split(":")[0]
    left = stack.ssh(
        CLIENT,
        f"docker info --format '{{{{json .RegistryConfig.Mirrors}}}}'; "
        f"ls -d {CLIENT_HOST_HUB_CACHE.file('docker_daemon').path} "
        f"/etc/docker/certs.d/{registry_name}:{cache_port} "
        f"/etc/containers/certs.d/{registry_name}:{cache_port} 2>/dev/null || true",
    )
    assert left.strip() in ("[]", "null"), left
    print(f"hubCache off: {time.monotonic() - started:.1f} s")


# publicTls (#19), a day-2 switch and back on the shared stack: the ACME CA is pebble and the
# Internet's DNS pebble-challtestsrv (tests/twin/acme.py), both on the public network. Stand-ins,
# each by the twin's own hand: the DNS answers the A record the program made (DigitalOcean DNS's
# part); the client droplet resolves through it (DigitalOcean's resolvers' part); the registry
# droplet trusts the ACME API's certificate (Let's Encrypt's API is publicly trusted); the client
# trusts pebble's root in its system store (where Ubuntu's ca-certificates has Let's Encrypt's).
DOMAIN = "example.com"
PUBLIC_NAME = f"registry.{DOMAIN}"
PEBBLE_ROOT = "/usr/local/share/ca-certificates/twin-acme-root.crt"
ACME_UNIT = "registry-acme.service"
ACME_SCRIPT = REGISTRY_HOST_PUBLIC_TLS.file("acme_script").path


@pytest.fixture(scope="module")
def acme(twin: tuple[Twin, Hub, Path], stack: Stack) -> Acme:
    world, _, directory = twin
    server = Acme(world, directory / "acme")
    registry, client = stack.droplet(REGISTRY), stack.droplet(CLIENT)
    server.add_a(PUBLIC_NAME, registry.public_ip)
    registry.inside(
        f"printf '%s' {shlex.quote(server.api_ca_pem)}"
        " >/usr/local/share/ca-certificates/twin-acme-api.crt && update-ca-certificates"
    )
    # dockerd reads the system store once, at its start.
    client.inside(
        f"cp /etc/resolv.conf /etc/resolv.conf.twin && echo 'nameserver {DNS_IP}' >/etc/resolv.conf"
        f" && printf '%s' {shlex.quote(server.root)} >{PEBBLE_ROOT}"
        " && update-ca-certificates >/dev/null && systemctl restart docker"
    )
    return server


def served_issuer(stack: Stack) -> str:
    """The issuer of the certificate the registry serves to the client (no verification)."""
    address = stack.run.outputs["registryAddress"]
    return stack.ssh(
        CLIENT,
        f"openssl s_client -connect {address} -servername {address.split(':')[0]} </dev/null "
        "2>/dev/null | openssl x509 -noout -issuer -fingerprint -sha256",
    )


def test_switching_to_public_tls_issues_through_the_unit_and_docker_trusts_only_the_acme_root(
    stack: Stack, acme: Acme
) -> None:
    started = time.monotonic()
    ran = stack.up({"domain": DOMAIN, "publicTls": True, "acmeDirectory": DIRECTORY})
    assert "registry-issue-certificate" in {run.name for run in ran}
    assert stack.run.outputs["registryAddress"].startswith(f"{PUBLIC_NAME}:")
    # The record the program made is the one the twin's DNS answers.
    record = stack.run.of_type("digitalocean:index/dnsRecord:DnsRecord")[0].inputs
    assert (record["name"], record["domain"], record["value"]) == (
        "registry",
        DOMAIN,
        stack.droplet(REGISTRY).public_ip,
    )
    # Issued by the real unit (issue-certificate.sh starts it), which the timer also starts.
    stack.ssh(
        REGISTRY,
        "systemctl is-active --quiet registry-acme.timer"
        " && systemctl is-enabled --quiet registry-acme.timer",
    )
    assert (
        stack.ssh(REGISTRY, "systemctl show --value --property Unit registry-acme.timer").strip()
        == ACME_UNIT
    )
    journal = stack.ssh(
        REGISTRY,
        f"journalctl --unit {ACME_UNIT} --unit registry.service --no-pager --output short-precise",
    )
    assert "issued: notAfter=" in journal, journal
    result = stack.ssh(REGISTRY, f"systemctl show --value --property Result {ACME_UNIT}")
    assert result.strip() == "success", journal
    assert "Pebble" in served_issuer(stack)
    # The client as a laptop: no trust in the stack's private CA anywhere (Docker's certs.d, the
    # system store), only pebble's root (and Debian's) in the system store.
    stack.droplet(CLIENT).inside(
        "rm -rf /etc/docker/certs.d/registry* /etc/containers/certs.d/registry* "
        "/usr/local/share/ca-certificates/private-registry-*.crt"
        " && update-ca-certificates --fresh >/dev/null && systemctl restart docker"
    )
    # The check that the private CA is not trusted: the private server certificate (which the
    # metrics listener still serves, behind the firewall) fails verification against the
    # system store, the bundle Docker's Go TLS reads.
    private_cert = stack.ssh(REGISTRY, f"cat {REGISTRY_HOST_PUBLIC_TLS.file('server_cert').path}")
    refused = stack.ssh(
        CLIENT,
        "openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt /dev/stdin; echo $?",
        stdin=private_cert.encode(),
    )
    assert refused.strip().splitlines()[-1] == "2", refused
    address = stack.run.outputs["registryAddress"]
    image = f"{address}/team/acme-twin:v1"
    stack.ssh(
        CLIENT,
        f"docker logout {address} >/dev/null;"
        f" docker login --username ci --password-stdin {address}"
        f" && docker tag {address}/private-registry/proof:registry-dev-client-0 {image}"
        f" && docker push -q {image} && docker image rm {image} >/dev/null"
        f" && docker pull -q {image}",
        stdin=stack.password("ci").encode(),
    )
    print(f"public TLS switch, issuance and the client's proof: {time.monotonic() - started:.1f} s")


def test_a_forced_renewal_through_the_unit_reloads_nginx_under_a_pull_loop(
    stack: Stack, acme: Acme
) -> None:
    started = time.monotonic()
    nginx_before = container_started(stack, "nginx")
    before = served_issuer(stack)
    # An image of its own (one 4 MiB layer): every pull downloads the layer again.
    image = f"{stack.run.outputs['registryAddress']}/team/acme-renewal:v1"
    stack.ssh(
        CLIENT,
        "head -c 4194304 /dev/urandom >/tmp/acme-layer && tar -C /tmp -c acme-layer"
        f" | docker import - {image} >/dev/null && rm /tmp/acme-layer"
        f" && docker push -q {image} >/dev/null",
    )
    loop = (
        "rm -f /tmp/acme-stop; while [ ! -e /tmp/acme-stop ]; do"
        f" docker image rm -f {image} >/dev/null 2>&1;"
        f" docker pull -q {image} >/dev/null 2>&1 && echo ok || echo failed; done"
    )
    pulling = subprocess.Popen(
        stack.ssh_argv(CLIENT, loop), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    time.sleep(1)
    # `renew force` in place of the unit's `renew` (not due: pebble issues for five years), as
    # `systemctl edit --runtime` would: the same unit, environment and reload path.
    stack.ssh(
        REGISTRY,
        f"mkdir -p /run/systemd/system/{ACME_UNIT}.d && printf '%s\n' '[Service]' 'ExecStart='"
        f" 'ExecStart={ACME_SCRIPT} renew force'"
        f" >/run/systemd/system/{ACME_UNIT}.d/force.conf && systemctl daemon-reload"
        f" && systemctl start {ACME_UNIT}; status=$?; rm -r /run/systemd/system/{ACME_UNIT}.d"
        " && systemctl daemon-reload && exit $status",
    )
    time.sleep(3)
    stack.ssh(CLIENT, "touch /tmp/acme-stop")
    out, _ = pulling.communicate(timeout=120)
    results = out.decode().split()
    after = served_issuer(stack)
    print(
        f"forced renewal: {len(results)} pulls, {results.count('failed')} failed,"
        f" {time.monotonic() - started:.1f} s"
    )
    assert "Pebble" in after and after != before
    assert results.count("ok") >= 2 and "failed" not in results, out.decode()
    assert container_started(stack, "nginx") == nginx_before
    assert "reloading nginx" in stack.ssh(
        REGISTRY, f"journalctl --unit {ACME_UNIT} --no-pager --output cat"
    )


def test_a_user_added_under_public_tls_keeps_the_renewal_timer_enabled(
    stack: Stack, acme: Acme
) -> None:
    """A changed file replaces the issuing command, whose delete disables the timer: the old
    command's delete must run before the new one enables it again."""
    started = time.monotonic()
    ran = stack.up({"users": [*stack.config["users"], "carol"]})
    assert "registry-issue-certificate" in {run.name for run in ran}
    state = stack.ssh(
        REGISTRY,
        "systemctl is-enabled registry-acme.timer; systemctl is-active registry-acme.timer || true",
    )
    assert state.split() == ["enabled", "active"], state
    assert "Pebble" in served_issuer(stack)
    assert stack.registry_status("carol", stack.password("carol")) == 200
    print(f"a user added under public TLS: {time.monotonic() - started:.1f} s")


def test_switching_back_to_private_tls_stops_the_renewals_and_the_client_works_again(
    stack: Stack, acme: Acme
) -> None:
    started = time.monotonic()
    # The laptop's trust undone; the program's trust step puts the private CA's back.
    stack.droplet(CLIENT).inside(f"rm {PEBBLE_ROOT} && update-ca-certificates --fresh >/dev/null")
    stack.up({"publicTls": False, "domain": ""})
    stack.droplet(CLIENT).inside("mv /etc/resolv.conf.twin /etc/resolv.conf")
    assert "Pebble" not in served_issuer(stack)
    assert (
        stack.ssh(REGISTRY, "systemctl is-enabled registry-acme.timer || true").strip() != "enabled"
    )
    assert stack.registry_status("ci", stack.password("ci")) == 200
    proof = f"{stack.run.outputs['registryAddress']}/private-registry/proof:registry-dev-client-0"
    stack.ssh(CLIENT, f"docker image rm {proof} >/dev/null && docker pull -q {proof}")
    print(f"switch back to private TLS: {time.monotonic() - started:.1f} s")


def test_a_registry_droplet_replacement_moves_the_volume_and_keeps_the_images(
    stack: Stack,
) -> None:
    """An `image` change replaces the droplets (a force-new input; the program gives every host
    the same image): the old registry host releases the volume before its detach (the twin
    refuses a detach while mounted), the new one mounts it, and the image the old client pushed
    pulls by digest on the new client, which resolves the registry's new address."""
    address = stack.run.outputs["registryAddress"]
    proof = f"{address}/private-registry/proof:registry-dev-client-0"
    pushed = stack.ssh(
        CLIENT, f"docker image inspect --format '{{{{index .RepoDigests 0}}}}' {proof}"
    ).strip()
    old_registry = stack.droplet(REGISTRY)
    started = time.monotonic()

    ran = stack.up({"image": "ubuntu-22-04-x64"})

    print(f"replacement up: {time.monotonic() - started:.1f} s")
    order = [(run.name, run.action) for run in ran]
    release = order.index(("registry-release-data-volume", "delete-replaced"))
    mount = order.index(("registry-mount-data-volume", "replace"))
    assert release < mount, order
    new_registry = stack.droplet(REGISTRY)
    assert new_registry.droplet_id != old_registry.droplet_id
    assert old_registry.droplet_id not in stack.twin.droplets
    assert list(new_registry.volumes) == [stack.run.named("registry-data").inputs["name"]]
    resolved = stack.ssh(CLIENT, f"getent hosts {address.split(':')[0]}").split()[0]
    assert resolved in (new_registry.public_ip, new_registry.private_ip), resolved
    stack.ssh(CLIENT, f"docker pull -q {pushed}")


def test_after_a_reboot_of_each_droplet_the_client_resolves_and_pulls(stack: Stack) -> None:
    stack.droplet(REGISTRY).reboot()
    stack.droplet(CLIENT).reboot()
    address = stack.run.outputs["registryAddress"]
    proof = f"{address}/private-registry/proof:registry-dev-client-0"
    # No `up`: the registry unit is enabled, its volume mounted from fstab at boot.
    serving_again(stack, "after its reboot", 90)
    stack.ssh(CLIENT, f"getent hosts {address.split(':')[0]}")
    stack.ssh(CLIENT, f"docker image rm {proof} >/dev/null && docker pull -q {proof}")


def test_a_docker_io_upgrade_keeps_the_containers_and_a_control_without_live_restore_does_not(
    stack: Stack,
) -> None:
    """A newer `docker.io` in the droplet's apt repository (the same package rebuilt with a
    higher version), upgraded as unattended-upgrades does, then dockerd restarted onto the new
    binary, with the client polling: live-restore keeps both containers (same start time) and
    the refused gap stays small. The control: with live-restore off in the daemon.json the
    program placed, the same restart stops or restarts them."""
    registry = stack.droplet(REGISTRY)
    started = time.monotonic()
    # The twin's own hand: a release appears in the droplet's package repository.
    registry.inside(
        "set -e; work=$(mktemp -d); dpkg-deb --raw-extract /srv/apt/docker.io_*.deb $work/pkg; "
        "sed -i 's/^Version: .*/&+twinupgrade1/' $work/pkg/DEBIAN/control; "
        "dpkg-deb -Zgzip -z1 --build $work/pkg /srv/apt/ >/dev/null; rm -rf $work; "
        "cd /srv/apt && apt-ftparchive packages . >Packages",
        timeout=120,
    )
    print(f"docker.io repackaged in {time.monotonic() - started:.1f} s")
    before = {service: container_started(stack, service) for service in ("registry", "nginx")}
    old_version = stack.ssh(REGISTRY, "dpkg-query -W -f '${Version}' docker.io")

    gap, refused, polls = refused_during(
        stack,
        "apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q install -y "
        "--only-upgrade docker.io >/dev/null"
        # The package leaves the running dockerd alone (Debian's postinst only starts it;
        # Ubuntu's restarts it when debconf's docker.io/restart says so, not unattended): it
        # runs the replaced binary until the restart that follows.
        " && readlink /proc/$(pidof dockerd)/exe | grep -q '(deleted)'"
        f" && {RESTART_DOCKER}",
    )

    print(f"docker.io upgrade: {refused} of {polls} polls refused over {gap:.2f} s")
    assert stack.ssh(REGISTRY, "dpkg-query -W -f '${Version}' docker.io") == (
        old_version + "+twinupgrade1"
    )
    assert "deleted" not in stack.ssh(REGISTRY, "readlink /proc/$(pidof dockerd)/exe")
    assert gap < 2.0, f"connections refused for {gap:.2f} s"
    assert {s: container_started(stack, s) for s in before} == before

    # The control: the same restart without live-restore stops the containers (their restart
    # policy may start them again: a new start time).
    daemon = "/etc/docker/daemon.json"
    ids = " ".join(started_at.split()[0] for started_at in before.values())
    stack.ssh(
        REGISTRY,
        f"cp {daemon} {daemon}.twin && printf '{{}}\\n' >{daemon} && {RESTART_DOCKER}",
    )
    inspect = "'{{.Id}} {{.State.StartedAt}} {{.State.Running}}'"
    after = dict(
        line.rsplit(" ", 1)
        for line in stack.ssh(REGISTRY, f"docker inspect --format {inspect} {ids}").splitlines()
    )
    print(f"without live-restore: {after}")
    stack.ssh(
        REGISTRY,
        f"mv {daemon}.twin {daemon} && {RESTART_DOCKER} && "
        f"systemctl restart {Path(REGISTRY_LAYOUT.unit_path).name}",
    )
    kept = [c for c, running in after.items() if running == "true" and c in before.values()]
    assert not kept, f"still running since before the restart: {kept}"
    serving_again(stack, "after the control", 60)
    print(f"upgrade and control: {time.monotonic() - started:.1f} s")


def test_destroy_releases_the_volume_before_detaching_and_stops_every_droplet(
    stack: Stack,
) -> None:
    plan = plan_destroy(stack.run)
    # The twin's detach fails while the volume is mounted; a droplet that does not shut down
    # by itself fails the delete.
    ran = stack.engine.apply(plan, stack.run)
    assert "registry-release-data-volume" in {run.name for run in ran}
    assert stack.twin.droplets == {}
    leftover = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(stack.twin.directory) not in leftover
