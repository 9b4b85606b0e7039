"""Layer 3: the Docker Hub cache (hubCache) for real. The program's own files run in the host sim
(Debian's registry 2.8 as the cache, Debian's nginx in front); a stand-in for Docker Hub on the
simulated Internet (tests/realstack/dockerhub.py) holds the images, with its own TLS certificate
(trusted through the CA bundle the cache's container gets) and Docker Hub's kind of token auth.

What registry 2.8 cannot show: it ignores `proxy.ttl` (hard-coded 7 days; 3.x reads the key), so
the expiry test checks the scheduler's 7-day entries, then moves them into the past and watches
the registry delete the cached blobs itself."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.manifest import (
    CLIENT_HOST_HUB_CACHE,
    REGISTRY_HOST_HUB_CACHE,
    REGISTRY_LAYOUT,
    command_name,
)
from tests.harness import ProgramRun, run_program
from tests.polling import eventually
from tests.realstack.clients import with_private_state
from tests.realstack.dockerhub import HUB_NAME, DockerHubStandIn
from tests.realstack.hostsim import CURL_STATUS, LOG_FIELD, RegistryHostSim, sh
from tests.realstack.oci import OciImage, build_image, layout_digests
from tests.realstack.sandbox import Sandbox

pytestmark = pytest.mark.host

HUB_USER = "hubuser"
TOKEN = "dckr_pat_" + "Kx4" * 9
CACHE = REGISTRY_LAYOUT.hub_cache_service
REPOSITORY, TAG = "library/alpine", "3.20"


@dataclass
class Stack:
    program: ProgramRun
    sim: RegistryHostSim
    hub: DockerHubStandIn
    image: OciImage
    workdir: Path

    @property
    def cache_address(self) -> str:
        return str(self.program.outputs["hubCacheAddress"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    program = run_program(
        overrides={
            "hubCache": True,
            "hubCacheTtl": "1m",
            "users": ["ci", "viewer:pull:team/*"],
            "dockerHubUser": HUB_USER,
        },
        secrets={"dockerHubToken": TOKEN},
    )
    workdir = tmp_path_factory.mktemp("hubcache")
    sim = RegistryHostSim(program, workdir / "host", host_manifest=REGISTRY_HOST_HUB_CACHE)
    hub = DockerHubStandIn(sim, workdir / "hub", HUB_USER, TOKEN)
    # Docker Hub's name resolves to the stand-in, whose CA is the container's CA bundle.
    sim.service_etc = {
        CACHE: {
            "hosts": f"{sim.internet_ip} {HUB_NAME}\n",
            "ssl/certs/ca-certificates.crt": hub.ca_pem,
        }
    }
    client_root = workdir / "client-root"
    for entry in (
        CLIENT_HOST_HUB_CACHE.file("ca_cert"),
        CLIENT_HOST_HUB_CACHE.script("trust_registry"),
        CLIENT_HOST_HUB_CACHE.script("trust_hub_cache"),
    ):
        result = Sandbox(client_root).run_command(program.named(command_name("client-0", entry)))
        assert result.returncode == 0, result.stderr.decode()
    sim.set_client_etc(Sandbox(client_root).upper("/etc"))
    image = build_image(workdir / "image", TAG, [96 * 1024, 48 * 1024], seed="hub-cache")
    try:
        sim.start_network()
        sim.route_compose_network_to_the_internet()
        hub.start()
        push_to_hub(hub, image, workdir / "push")
        sim.start_services()
        yield Stack(program, sim, hub, image, workdir)
    finally:
        hub.stop()
        sim.stop()
    assert not sim.leftovers(), "left behind"


def push_to_hub(hub: DockerHubStandIn, image: OciImage, workdir: Path) -> None:
    """The image onto the stand-in, as its account (an auth file, not argv)."""
    workdir.mkdir(parents=True, exist_ok=True)
    authfile = workdir / "auth.json"
    secret = base64.b64encode(f"{hub.user}:{hub.token}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {hub.address: {"auth": secret}}}))
    argv = [
        "skopeo",
        "copy",
        "--quiet",
        "--dest-authfile",
        str(authfile),
        "--dest-cert-dir",
        str(hub.workdir / "certs"),
        image.reference,
        f"docker://{hub.address}/{REPOSITORY}:{TAG}",
    ]
    result = sh(*hub.sim.public_argv(with_private_state(workdir / "tmp", argv)), check=False)
    assert result.returncode == 0, result.stderr.decode()


def pull_through_cache(stack: Stack, name: str) -> tuple[str, tuple[str, ...]]:
    """Pull the image from the cache on the client droplet, anonymously (as Docker's
    registry-mirrors does), into a fresh layout; its verified digests."""
    destination = stack.workdir / "pulls" / name
    destination.parent.mkdir(exist_ok=True)
    argv = [
        "skopeo",
        "copy",
        "--quiet",
        f"docker://{stack.cache_address}/{REPOSITORY}:{TAG}",
        f"oci:{destination}:{TAG}",
    ]
    stack.sim.client(*with_private_state(stack.workdir / "tmp", argv))
    return layout_digests(destination, TAG)


def config_digest(stack: Stack) -> str:
    blobs = stack.image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / stack.image.manifest_digest.split(":", 1)[1]).read_text())
    return str(manifest["config"]["digest"])


def cached_blob_files(stack: Stack) -> list[Path]:
    blobs = stack.sim.data_path(f"{REGISTRY_LAYOUT.hub_cache_data_dir}/docker/registry/v2/blobs")
    return sorted(blobs.rglob("data")) if blobs.exists() else []


def status(stack: Stack, side: str, method: str, path: str, user: str | None = None) -> str:
    """The cache's answer to a request from the client droplet (`client`) or from somewhere on
    the Internet (`internet`), with a registry user's password or none."""
    sim = stack.sim
    ip = sim.registry_ip if side == "client" else sim.public_ip
    name, port = stack.cache_address.rsplit(":", 1)
    argv = [
        *CURL_STATUS,
        "--max-time",
        "10",
        # Registry 2.8 answers an OCI manifest only to a client that accepts one.
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        "-X",
        method,
        "--cacert",
        str(sim.ca_file),
        "--resolve",
        f"{name}:{port}:{ip}",
        f"https://{stack.cache_address}{path}",
    ]
    if user is not None:
        password = (
            stack.program.outputs["metricsPassword"]
            if user == "metrics"
            else sim.passwords.get(user, "wrong-password-0123456789")
        )
        argv[1:1] = ["-u", f"{user}:{password}"]
    if side == "client":
        return sim.client(*argv, trusted=False, check=False).stdout.decode()
    return sh(*sim.public_argv(argv), check=False).stdout.decode()


# -- pull-through ----------------------------------------------------------------------------


def test_a_pull_fetches_from_docker_hub_once_and_the_second_comes_from_the_cache(
    stack: Stack,
) -> None:
    expected = (stack.image.manifest_digest, stack.image.layer_digests)
    assert stack.hub.blob_gets(stack.sim.container_ip) == []
    # The config and both layers. Registry 2.8 fetches a missing blob twice (one GET serves the
    # client, a second, in a goroutine after the client is served, stores it: v2.8.2
    # proxyblobstore.go ServeBlob); 3.x once, teeing both.
    wanted = {
        f"/v2/{REPOSITORY}/blobs/{digest}"
        for digest in (*stack.image.layer_digests, config_digest(stack))
    }
    assert pull_through_cache(stack, "first")[1] == expected[1]
    eventually(
        lambda: len(cached_blob_files(stack)) >= len(wanted), "every fetched blob stored", 30
    )
    first = stack.hub.blob_gets(stack.sim.container_ip)
    assert set(first) == wanted and len(first) <= 2 * len(wanted), stack.hub.requests()
    assert pull_through_cache(stack, "second")[1] == expected[1]
    assert stack.hub.blob_gets(stack.sim.container_ip) == first, (
        "the second pull fetched blobs from Docker Hub again"
    )


def test_the_docker_hub_credentials_are_sent_upstream_and_appear_nowhere_else(
    stack: Stack,
) -> None:
    pull_through_cache(stack, "credentials")
    asked = [r for r in stack.hub.token_requests() if r["client"] == stack.sim.container_ip]
    assert asked and all(r["matched"] for r in asked), stack.hub.token_requests()
    # Not in a log, not on a command line of anything running on the host, not in a file but
    # the cache's env file (0600).
    for log in stack.sim.logs.glob("*.log"):
        assert TOKEN not in log.read_text(errors="replace"), log.name
    assert TOKEN not in stack.hub.registry_log.read_text()
    for ns in (stack.sim.ns_host, stack.sim.ns_container):
        for pid in sh("ip", "netns", "pids", ns).stdout.split():
            cmdline = Path(f"/proc/{int(pid)}/cmdline")
            if cmdline.exists():
                assert TOKEN.encode() not in cmdline.read_bytes(), pid
    env_file = REGISTRY_HOST_HUB_CACHE.file("hub_cache_env").path
    holding = [
        host_file.path
        for host_file in REGISTRY_HOST_HUB_CACHE.files
        if TOKEN in stack.sim.files.host_path(host_file.path).read_text()
    ]
    assert holding == [env_file]
    assert stack.sim.files.host_path(env_file).stat().st_mode & 0o777 == 0o600


# -- access ----------------------------------------------------------------------------------


def test_pulls_without_credentials_only_from_the_clients_and_pushes_never(stack: Stack) -> None:
    manifest = f"/v2/{REPOSITORY}/manifests/{TAG}"
    upload = f"/v2/{REPOSITORY}/blobs/uploads/"
    assert status(stack, "client", "GET", "/v2/") == "200"
    assert status(stack, "client", "GET", manifest) == "200"
    assert status(stack, "client", "POST", upload) == "403"
    # From the Internet: a password, any registry user (a pull user scoped to team/*) pulls.
    assert status(stack, "internet", "GET", manifest) == "401"
    assert status(stack, "internet", "GET", manifest, "nobody") == "401"
    assert status(stack, "internet", "GET", manifest, "viewer") == "200"
    assert status(stack, "internet", "POST", upload, "ci") == "403"
    assert status(stack, "internet", "POST", upload) == "401"
    assert status(stack, "internet", "GET", manifest, "metrics") == "403"
    assert status(stack, "internet", "DELETE", manifest, "ci") == "403"


def test_a_refused_push_gets_a_registry_style_error(stack: Stack) -> None:
    result = stack.sim.client(
        "curl",
        "-s",
        "-X",
        "POST",
        "--cacert",
        str(stack.sim.ca_file),
        f"https://{stack.cache_address}/v2/{REPOSITORY}/blobs/uploads/",
        trusted=True,
        check=False,
    )
    body = json.loads(result.stdout)
    assert body["errors"][0]["code"] == "DENIED"


# -- Docker Hub down, and expiry -------------------------------------------------------------


def test_cached_images_still_pull_while_docker_hub_is_down(stack: Stack) -> None:
    pull_through_cache(stack, "warm")
    stack.hub.stop()
    try:
        assert pull_through_cache(stack, "hub-down")[1] == stack.image.layer_digests
    finally:
        stack.hub.start()


def test_expired_blobs_are_deleted_by_the_registry_and_fetched_again(stack: Stack) -> None:
    pull_through_cache(stack, "before-expiry")
    state_file = stack.sim.data_path(f"{REGISTRY_LAYOUT.hub_cache_data_dir}/scheduler-state.json")
    deadline = time.monotonic() + 20  # the scheduler saves its state every 5 s
    while not state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    entries = json.loads(state_file.read_text())
    assert entries, "the cache scheduled nothing for expiry"
    now = datetime.datetime.now(datetime.timezone.utc)
    expiries = [
        datetime.datetime.fromisoformat(entry["ExpiryData"].replace("Z", "+00:00"))
        for entry in entries.values()
    ]
    # Registry 2.8 ignores proxy.ttl (1m here): its fixed 7 days. 3.x takes the setting.
    assert all(expiry > now + datetime.timedelta(hours=167) for expiry in expiries)
    before = len(stack.hub.blob_gets(stack.sim.container_ip))
    stack.sim.stop_service(CACHE)
    past = (now - datetime.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    state_file.write_text(
        json.dumps({key: {**entry, "ExpiryData": past} for key, entry in entries.items()})
    )
    stack.sim.start_hub_cache()
    # The layers and the config go (the vacuum deletes their data); of the manifest the
    # registry deletes the revision, its bytes stay until garbage collection.
    expiring = {
        digest.split(":", 1)[1] for digest in (*stack.image.layer_digests, config_digest(stack))
    }

    def kept() -> set[str]:
        return {path.parent.name for path in cached_blob_files(stack)} & expiring

    deadline = time.monotonic() + 30
    while kept() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert kept() == set(), "the registry kept expired blobs"
    assert pull_through_cache(stack, "after-expiry")[1] == stack.image.layer_digests
    assert len(stack.hub.blob_gets(stack.sim.container_ip)) > before, (
        "expired blobs were not fetched again"
    )


def test_the_cache_sees_the_host_and_address_nginx_states_not_the_clients(stack: Stack) -> None:
    """Issue 17's lesson: the cache reads only what nginx checked and states, whatever the
    client sent (its Host, X-Forwarded-*, Forwarded, a form body)."""
    forged = ["Host: evil.example", "X-Forwarded-Host: evil.example", "X-Forwarded-For: 192.0.2.9"]
    forged += ["Forwarded: for=192.0.2.9;host=evil.example", "X-Real-IP: 192.0.2.9"]
    headers = [arg for header in forged for arg in ("-H", header)]
    result = stack.sim.client(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        *headers,
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-binary",
        "mount=sha256:0&from=other",
        "-X",
        "GET",
        "--cacert",
        str(stack.sim.ca_file),
        f"https://{stack.cache_address}/v2/",
        check=False,
    )
    assert result.stdout.decode() == "200"
    log = stack.sim.service_log(CACHE)
    last = [line for line in log.splitlines() if 'msg="response completed"' in line][-1]
    fields = {key: value.strip('"') for key, value in LOG_FIELD.findall(last)}
    assert fields["http.request.uri"] == "/v2/"
    assert fields["http.request.host"] == stack.cache_address
    assert fields["http.request.remoteaddr"] == stack.sim.client_ip
