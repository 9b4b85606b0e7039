"""Layer 3, storage `spaces`: three registry nodes (the program's own files, Debian's nginx and
docker-registry with the rendered s3 config) on one S3 store (moto) behind an L4 balancer
(haproxy, health-checking /healthz), used by real clients. See tests/realstack/cluster.py.

The nodes share a cache (`spacesCache: valkey`, Debian's redis-server as the stand-in): the
per-node `memory` cache renders the same files but for the cache lines (tests/test_shared_cache.py)
and runs for real in the single-node tests."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.manifest import REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Podman, Skopeo
from tests.realstack.cluster import SpacesClusterSim
from tests.realstack.hostsim import RegistryHostSim, running
from tests.realstack.oci import build_image

pytestmark = pytest.mark.host

MiB = 1 << 20
NODES = 3


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(
        overrides={
            "storage": "spaces",
            "registryCount": NODES,
            "region": "fra1",
            "users": ["ci"],
            "spacesCache": "valkey",
        }
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def cluster(program: ProgramRun, workdir: Path) -> Iterator[SpacesClusterSim]:
    with running(SpacesClusterSim(program, workdir / "sim")) as sim:
        yield sim


@pytest.fixture(scope="module")
def skopeo(cluster: SpacesClusterSim, workdir: Path) -> Skopeo:
    return Skopeo.logged_in(cluster, workdir / "skopeo")  # type: ignore[arg-type]


def upload_requests(cluster: SpacesClusterSim, repository: str) -> dict[int, list[str]]:
    """Node -> the methods of the blob upload requests its nginx logged for `repository`."""
    prefix = f"/v2/{repository}/blobs/uploads/"
    return {
        index: [
            method
            for method, uri in cluster.node_requests(index)
            if uri.startswith(prefix) and method in ("POST", "PATCH", "PUT")
        ]
        for index in range(NODES)
    }


def test_skopeo_and_podman_push_and_pull_through_the_balancer_intact(
    cluster: SpacesClusterSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(
        workdir / "app", "v1", [2 * MiB, 1 * MiB, 512 * 1024, 256 * 1024], seed="cluster-app"
    )
    assert skopeo.push(image, "team/app", "ci") == image.manifest_digest
    # Every pull is new connections, which the balancer sends round robin: each node serves.
    for attempt in range(NODES):
        pulled = skopeo.pull("team/app", "v1", "ci", workdir / f"app-pulled-{attempt}")
        assert pulled == (image.manifest_digest, image.layer_digests)
    podman = Podman(cluster, workdir / "podman")  # type: ignore[arg-type]
    try:
        podman.login("ci")
        reference = f"{cluster.address}/team/app:v1"
        podman("pull", "--quiet", "--authfile", str(podman.authfile), reference)
        podman("tag", reference, f"{cluster.address}/team/copy:v1")
        digest_file = workdir / "podman-digest"
        podman("push", "--quiet", "--authfile", str(podman.authfile), "--digestfile",
               str(digest_file), f"{cluster.address}/team/copy:v1")  # fmt: skip
    finally:
        podman.close()
    # podman stores layers uncompressed and compresses them again on push: new digests, each
    # verified by the pull.
    copied = skopeo.pull("team/copy", "v1", "ci", workdir / "copy-pulled")
    assert copied[0] == digest_file.read_text().strip()
    assert len(copied[1]) == len(image.layer_digests)
    served = [
        index
        for index in range(NODES)
        if any(uri.startswith("/v2/team/app/") for _, uri in cluster.node_requests(index))
    ]
    assert served == list(range(NODES))


def test_every_node_keeps_blob_descriptors_in_the_one_shared_cache(
    cluster: SpacesClusterSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "cached", "v1", [256 * 1024, 128 * 1024], seed="cluster-cache")
    assert skopeo.push(image, "team/cached", "ci") == image.manifest_digest
    for attempt in range(NODES):
        pulled = skopeo.pull("team/cached", "v1", "ci", workdir / f"cached-pulled-{attempt}")
        assert pulled == (image.manifest_digest, image.layer_digests)
    # Registry 2.8's keys: blobs::<digest> (a descriptor), repository::<name>::blobs (a set).
    for digest in image.layer_digests:
        assert cluster.cache_command("EXISTS", f"blobs::{digest}") == "1", digest
    assert cluster.cache_command("SISMEMBER", "repository::team/cached::blobs", digest) == "1"
    for node in cluster.nodes:
        log = (node.logs / f"{REGISTRY_LAYOUT.registry_service}.log").read_text(errors="replace")
        assert "using redis blob descriptor cache" in log
        assert "error connecting to redis" not in log


# -- one upload over several nodes -------------------------------------------------------------
class Upload:
    """A blob upload by hand, each request its own connection (`curl`), so the balancer sends
    consecutive requests to different nodes. Credentials go to curl on stdin (`-K -`)."""

    def __init__(self, cluster: SpacesClusterSim, repository: str, user: str = "ci") -> None:
        self.cluster = cluster
        self.repository = repository
        self.config = f'user = "{user}:{cluster.passwords[user]}"\n'.encode()
        self.base = f"https://{cluster.address}/v2/{repository}"

    def request(self, *args: str, limit_rate: str | None = None) -> tuple[int, dict[str, str]]:
        """(status, headers) of one request."""
        rate = ("--limit-rate", limit_rate) if limit_rate else ()
        result = self.cluster.client(
            "curl", "-sS", "-K", "-", "-o", "/dev/null", "-D", "-", "--max-time", "60",
            "-H", "Expect:", *rate,
            *args, input=self.config,
        )  # fmt: skip
        lines = result.stdout.decode().splitlines()
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if ":" in line)
        }
        return status, headers

    def start(self) -> str:
        status, headers = self.request("-X", "POST", f"{self.base}/blobs/uploads/")
        assert status == 202, status
        return headers["location"]

    def patch(self, location: str, data: Path, limit_rate: str | None = None) -> tuple[int, str]:
        status, headers = self.request(
            "-X", "PATCH", "-H", "Content-Type: application/octet-stream",
            "--data-binary", f"@{data}", location, limit_rate=limit_rate,
        )  # fmt: skip
        return status, headers.get("location", "")

    def finish(self, location: str, digest: str) -> int:
        separator = "&" if "?" in location else "?"
        status, _ = self.request("-X", "PUT", f"{location}{separator}digest={digest}")
        return status

    def blob_digest(self, digest: str) -> str:
        result = self.cluster.client(
            "bash", "-c", 'curl -sSf -K - -L "$1" | sha256sum', "get",
            f"{self.base}/blobs/{digest}", input=self.config,
        )  # fmt: skip
        return "sha256:" + result.stdout.decode().split()[0]


def blob(path: Path, size: int, seed: bytes) -> tuple[Path, str]:
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def test_one_upload_spreads_over_the_nodes_and_stays_intact(
    cluster: SpacesClusterSim, workdir: Path
) -> None:
    data, digest = blob(workdir / "spread.bin", 3 * MiB, b"spread")
    upload = Upload(cluster, "team/spread")
    location = upload.start()
    status, location = upload.patch(location, data)
    assert status == 202
    assert upload.finish(location, digest) == 201
    requests = upload_requests(cluster, "team/spread")
    # POST, PATCH and PUT, each on another node.
    assert sorted(len(methods) for methods in requests.values()) == [1, 1, 1], requests
    assert upload.blob_digest(digest) == digest


def test_control_with_a_secret_per_node_the_same_upload_fails(
    cluster: SpacesClusterSim, workdir: Path
) -> None:
    data, _ = blob(workdir / "control.bin", 1 * MiB, b"control")
    try:
        for index in range(NODES):
            cluster.restart_registry(index, {"REGISTRY_HTTP_SECRET": f"node-{index}-own-secret"})
        cluster.wait_servers({f"node{index}": "UP" for index in range(NODES)})
        upload = Upload(cluster, "team/control")
        location = upload.start()
        status, _ = upload.patch(location, data)
        # The next node cannot read the upload's state: "blob upload invalid".
        assert status == 404, status
    finally:
        for index in range(NODES):
            cluster.restart_registry(index, {})
        cluster.wait_servers({f"node{index}": "UP" for index in range(NODES)})
    assert "invalid secret" in "".join(
        node.logs.joinpath("registry.log").read_text(errors="replace") for node in cluster.nodes
    )


# -- a node fails, comes back; a node restarts ---------------------------------------------
def test_a_killed_node_is_dropped_pulls_continue_and_it_serves_again(
    cluster: SpacesClusterSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "loop", "v1", [1 * MiB, 256 * 1024], seed="pull-loop")
    assert skopeo.push(image, "team/loop", "ci") == image.manifest_digest
    results: list[tuple[float, bool]] = []  # (finished at, intact)
    stop = threading.Event()

    def pull_loop() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            destination = workdir / f"loop-pulled-{count}"
            try:
                intact = skopeo.pull("team/loop", "v1", "ci", destination) == (
                    image.manifest_digest,
                    image.layer_digests,
                )
            except AssertionError:
                intact = False
            results.append((time.monotonic(), intact))

    puller = threading.Thread(target=pull_loop)
    puller.start()
    try:
        while len(results) < 2:
            time.sleep(0.05)
        killed_at = time.monotonic()
        cluster.kill_node(1)
        dropped_after = cluster.wait_servers({"node1": "DOWN"})
        dropped_at = time.monotonic()
        while len([r for r in results if r[0] > dropped_at]) < 4:
            time.sleep(0.05)
    finally:
        stop.set()
        puller.join()
    after_drop = [intact for finished, intact in results if finished > dropped_at]
    during = [intact for finished, intact in results if killed_at < finished <= dropped_at]
    assert all(after_drop), results
    assert during.count(False) <= 1, results  # at most the pull the kill interrupted
    assert dropped_after < 3 * 1.0 + 1, dropped_after  # fall 2 x inter 1 s, and a margin

    served_before = len(cluster.node_requests(1))
    cluster.nodes[1].start_services()
    cluster.wait_servers({"node1": "UP"})
    for attempt in range(NODES):
        pulled = skopeo.pull("team/loop", "v1", "ci", workdir / f"back-pulled-{attempt}")
        assert pulled == (image.manifest_digest, image.layer_digests)
    assert len(cluster.node_requests(1)) > served_before


def test_a_node_restart_leaves_uploads_on_other_nodes_undisturbed(
    cluster: SpacesClusterSim, workdir: Path
) -> None:
    data, digest = blob(workdir / "slow.bin", 6 * MiB, b"slow upload")
    upload = Upload(cluster, "team/slow")
    location = upload.start()
    outcome: dict[str, tuple[int, str]] = {}
    # About 3 s on the wire: long enough to restart another node meanwhile.
    patching = threading.Thread(
        target=lambda: outcome.update(patch=upload.patch(location, data, limit_rate="2M"))
    )
    patching.start()
    try:
        busy: set[int] = set()
        deadline = time.monotonic() + 2
        while len(busy) != 1 and time.monotonic() < deadline:
            busy = cluster.busy_nodes()
        assert len(busy) == 1, busy
        other = next(index for index in range(NODES) if index not in busy)
        cluster.restart_node(other)
        assert patching.is_alive(), "the upload ended before the restart: slow it down"
    finally:
        patching.join()
    status, location = outcome["patch"]
    assert status == 202
    cluster.wait_servers({f"node{index}": "UP" for index in range(NODES)})
    assert upload.finish(location, digest) == 201
    assert upload.blob_digest(digest) == digest


def test_a_node_whose_registry_stops_is_dropped_though_its_nginx_answers(
    cluster: SpacesClusterSim,
) -> None:
    """What /healthz adds to a TCP check: nginx still accepts connections, the node is out."""
    node = cluster.nodes[2]
    node.stop_service(REGISTRY_LAYOUT.registry_service)
    try:
        dropped_after = cluster.wait_servers({"node2": "DOWN"}, timeout=10)
    finally:
        node.start_service(REGISTRY_LAYOUT.registry_service)
        node.wait_registry()
    assert dropped_after < 3 * 1.0 + 1, dropped_after
    cluster.wait_servers({"node2": "UP"})


def test_nodes_log_the_clients_address_not_the_balancers(cluster: SpacesClusterSim) -> None:
    """The balancer opens each connection with a PROXY protocol line: nginx logs the client's
    address and passes it to the registry, which logs it too."""
    probe = Upload(cluster, "team/addresses")
    for _ in range(NODES):  # round robin: one request per node
        status, _ = probe.request(f"https://{cluster.address}/v2/")
        assert status == 200

    def nginx_addresses(node: RegistryHostSim) -> set[str]:
        return {entry["remote_addr"] for entry in node.access_log() if entry["uri"] == "/v2/"}

    for index, node in enumerate(cluster.nodes):
        registry_addresses = {
            fields["http.request.remoteaddr"]
            for fields in node.registry_requests()
            # Requests through nginx (not the sim's readiness probe on the socket).
            if fields["http.request.host"] == cluster.address
            and fields["http.request.uri"] == "/v2/"
        }
        assert registry_addresses == {cluster.client_ip}, (index, registry_addresses)
        # nginx's access log is buffered (flush=5s).
        deadline = time.monotonic() + 15
        while not nginx_addresses(node) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert nginx_addresses(node) == {cluster.client_ip}, index
