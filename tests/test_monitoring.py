"""Layer 3: what the registry host says about itself, on the real stack (the program's own files
run by Debian's nginx and registry in namespaces, tests/realstack/hostsim.py): nginx's JSON
access log, the metrics listener (VPC only, the metrics user only) and the disk check."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from components.access import METRICS_USER
from components.manifest import REGISTRY_HOST, REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Skopeo
from tests.realstack.hostsim import RegistryHostSim, running, sh, trusting_client_etc
from tests.realstack.oci import build_image

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(overrides={"users": ["ci", "viewer:pull"], "clientCount": 1})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitoring")


@pytest.fixture(scope="module")
def sim(program: ProgramRun, workdir: Path) -> Iterator[RegistryHostSim]:
    host = RegistryHostSim(program, workdir / "host")
    host.set_client_etc(trusting_client_etc(program, workdir / "client-root"))
    with running(host):
        yield host


@pytest.fixture(scope="module")
def skopeo(sim: RegistryHostSim, workdir: Path) -> Skopeo:
    return Skopeo.logged_in(sim, workdir / "skopeo")


def access_log_entries(
    sim: RegistryHostSim, until: Callable[[list[Any]], bool], timeout: float = 20
) -> list[Any]:
    """nginx's access log lines (its stdout, which dockerd keeps), parsed as JSON, once they
    satisfy `until` (each worker flushes its own log buffer every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = sim.access_log()
        if until(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_access_log_lines_are_json_with_user_repository_status_bytes_and_times(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "logged", "v1", [256 * 1024], seed="logged")
    skopeo.push(image, "team/logged", "ci")
    skopeo(
        "inspect",
        "--authfile",
        str(skopeo.authfile("viewer")),
        f"docker://{sim.address}/team/logged:v1",
    )

    def pushes(entries: list[Any]) -> list[Any]:
        return [
            entry
            for entry in entries
            if entry["method"] == "PUT" and entry["uri"] == "/v2/team/logged/manifests/v1"
        ]

    def blob_uploads(entries: list[Any]) -> list[Any]:
        return [
            entry
            for entry in entries
            if entry["method"] == "PATCH" and entry["repository"] == "team/logged"
        ]

    def reads(entries: list[Any]) -> list[Any]:
        return [
            entry
            for entry in entries
            if entry["user"] == "viewer" and entry["repository"] == "team/logged"
        ]

    entries = access_log_entries(
        sim, lambda found: all((pushes(found), len(blob_uploads(found)) == 2, reads(found)))
    )
    assert len(pushes(entries)) == 1, entries[-20:]
    push = pushes(entries)[0]
    assert (push["user"], push["repository"], push["status"]) == ("ci", "team/logged", 201)
    assert push["request_bytes"] > 0 and isinstance(push["body_bytes_sent"], int)
    assert isinstance(push["request_time"], float)
    assert float(push["upstream_time"]) >= 0  # the registry answered it
    assert push["time"].startswith(time.strftime("%Y-"))
    # The config and the layer; the layer's bytes are counted as they stream through.
    assert max(entry["request_bytes"] for entry in blob_uploads(entries)) > 256 * 1024
    assert reads(entries) and all(entry["status"] == 200 for entry in reads(entries))


# -- metrics ---------------------------------------------------------------------------------
METRICS_PORT = REGISTRY_LAYOUT.metrics_port


def curl_config(user: str | None, password: str | None) -> bytes:
    """curl's config on stdin (`-K -`): the credentials never appear on a command line."""
    return b"" if user is None else f'user = "{user}:{password}"\n'.encode()


def fetch(
    sim: RegistryHostSim,
    url: str,
    user: str | None = None,
    password: str | None = None,
    side: str = "vpc",
    method: str = "GET",
) -> tuple[str, str]:
    """(HTTP status or curl's failure, body) of a request (a GET unless `method`) from the
    client in the VPC or from the Internet side, verifying TLS against the stack's CA."""
    curl = ["curl", "-sS", "--max-time", "5", "--cacert", str(sim.ca_file), "-K", "-"]
    curl += ["-X", method]
    argv = [*curl, "-w", "\n%{http_code}", url]
    command = sim.client_argv(argv, trusted=False) if side == "vpc" else sim.public_argv(argv)
    result = sh(*command, input=curl_config(user, password), check=False)
    if result.returncode != 0:
        return f"curl exit {result.returncode}", result.stderr.decode()
    body, _, status = result.stdout.decode().rpartition("\n")
    return status, body


def metrics_url(sim: RegistryHostSim, name: str, address: str | None = None) -> str:
    return f"https://{address or sim.registry_ip}:{METRICS_PORT}/metrics/{name}"


@pytest.fixture(scope="module")
def metrics_password(program: ProgramRun) -> str:
    return str(program.outputs["metricsPassword"])


def test_metrics_user_reads_registry_and_nginx_metrics_from_the_vpc(
    sim: RegistryHostSim, skopeo: Skopeo, metrics_password: str
) -> None:
    assert skopeo.login("ci").returncode == 0  # the registry has answered requests
    status, body = fetch(sim, metrics_url(sim, "registry"), METRICS_USER, metrics_password)
    assert status == "200", body
    # The registry's own Prometheus series: requests by handler, method and status code.
    assert "# TYPE registry_http_requests_total counter" in body
    assert 'registry_http_requests_total{code="200",handler="base",method="get"}' in body
    status, body = fetch(sim, metrics_url(sim, "nginx"), METRICS_USER, metrics_password)
    assert status == "200", body
    active = [line for line in body.splitlines() if line.startswith("nginx_connections_active ")]
    assert len(active) == 1 and int(active[0].split()[1]) >= 1, body


def test_metrics_are_refused_without_credentials_and_to_registry_users(
    sim: RegistryHostSim, metrics_password: str
) -> None:
    url = metrics_url(sim, "registry")
    assert fetch(sim, url)[0] == "401"
    assert fetch(sim, url, METRICS_USER, metrics_password + "x")[0] == "401"
    status, body = fetch(sim, url, "ci", sim.passwords["ci"])
    assert status == "403", body
    assert "registry_http" not in body


def test_metrics_listener_is_not_reachable_from_the_public_side(
    sim: RegistryHostSim, metrics_password: str
) -> None:
    # The positive control: the Internet side reaches the registry's public address and port.
    registry_url = f"https://{sim.public_ip}:{sim.port}/v2/"
    assert fetch(sim, registry_url, side="public")[0] == "401"
    status, error = fetch(
        sim, metrics_url(sim, "registry", sim.public_ip), METRICS_USER, metrics_password, "public"
    )
    assert status == "curl exit 7", (status, error)  # connection refused: nothing listens there


def test_the_metrics_user_can_do_nothing_on_the_registry_api(
    sim: RegistryHostSim, skopeo: Skopeo, metrics_password: str, workdir: Path
) -> None:
    base = f"https://{sim.registry_ip}:{sim.port}/v2"
    image = build_image(workdir / "guarded", "v1", [1024], seed="guarded")
    skopeo.push(image, "team/guarded", "ci")
    for path in ("/", "/_catalog", "/team/guarded/tags/list", "/team/guarded/manifests/v1"):
        status, body = fetch(sim, base + path, METRICS_USER, metrics_password)
        assert status == "403", (path, body)
        assert "DENIED" in body
    result = skopeo.login(METRICS_USER, metrics_password, check=False)
    assert result.returncode != 0


# -- disk pressure ---------------------------------------------------------------------------
def run_disk_check(sim: RegistryHostSim, fill_kib: int, mounted: bool = True) -> str:
    """Run the placed registry-disk.sh on the simulated host, with a 1 MiB tmpfs as the data
    volume holding `fill_kib` KiB (or nothing mounted there); return its output (the journal)."""
    mount = REGISTRY_LAYOUT.data_mount
    volume = (
        f"mount -t tmpfs -o size=1m tmpfs {mount} && "
        f"head -c {fill_kib * 1024} /dev/zero >{mount}/filler"
        if mounted
        else ""
    )
    result = sim.run_disk_check(volume)
    output = result.stdout.decode() + result.stderr.decode()
    assert (result.returncode == 0) == mounted, output
    return output


def disk_metrics(sim: RegistryHostSim, metrics_password: str) -> dict[str, float]:
    status, body = fetch(sim, metrics_url(sim, "disk"), METRICS_USER, metrics_password)
    assert status == "200", body
    return {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def test_disk_check_warns_in_the_journal_above_the_threshold_and_serves_usage_as_metrics(
    sim: RegistryHostSim, metrics_password: str
) -> None:
    threshold = 80  # Pulumi.yaml's default diskAlertPercent
    low = run_disk_check(sim, fill_kib=256)
    assert "WARNING" not in low
    assert "registry-disk: data volume /srv/registry: 25% used" in low
    assert disk_metrics(sim, metrics_password)["registry_data_volume_used_percent"] == 25

    high = run_disk_check(sim, fill_kib=900)
    assert (
        "registry-disk: WARNING: data volume /srv/registry is 88% full (threshold 80%)" in high
    ), high
    metrics = disk_metrics(sim, metrics_password)
    assert metrics["registry_data_volume_used_percent"] == 88
    assert metrics["registry_data_volume_threshold_percent"] == threshold
    assert metrics["registry_data_volume_mounted"] == 1
    assert metrics["registry_data_volume_size_bytes"] == 1 << 20

    unmounted = run_disk_check(sim, fill_kib=0, mounted=False)
    assert "ERROR: no volume is mounted at /srv/registry" in unmounted
    assert disk_metrics(sim, metrics_password) == {"registry_data_volume_mounted": 0}


def test_the_placed_disk_check_passes_shellcheck(sim: RegistryHostSim) -> None:
    script = sim.files.host_path(REGISTRY_HOST.file("disk_script").path)
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- request metrics -------------------------------------------------------------------------
def start_request_counter(sim: RegistryHostSim) -> subprocess.Popen[bytes]:
    """registry-requests.service's ExecStart, with the host's paths mapped to the simulated
    host's (its interval shortened to 0.2 s)."""
    unit = sim.files.host_path(REGISTRY_HOST.file("requests_service").path).read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    python, script, socket, output, group, _ = exec_start.removeprefix("ExecStart=").split()
    host = sim.files.host_path
    counter = subprocess.Popen(
        [python, str(host(script)), str(host(socket)), str(host(output)), group, "0.2"]
    )
    deadline = time.monotonic() + 10
    while not host(socket).exists():
        assert counter.poll() is None and time.monotonic() < deadline, "no socket"
        time.sleep(0.05)
    return counter


def samples(body: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def test_request_metrics_count_nginxs_requests_by_status_method_and_verified_user(
    sim: RegistryHostSim, metrics_password: str
) -> None:
    counter = start_request_counter(sim)
    try:
        base = f"https://{sim.registry_ip}:{sim.port}/v2"
        assert fetch(sim, base + "/", "ci", sim.passwords["ci"])[0] == "200"
        # A name nobody verified: counted without it (it would make labels without bound).
        assert fetch(sim, base + "/", "intruder-9f3c", "guess")[0] == "401"
        assert fetch(sim, base + "/_catalog", "viewer", sim.passwords["viewer"])[0] == "403"
        # Methods are few: any other counts as "other" (no label per made-up method).
        assert fetch(sim, base + "/", method="BREW")[0] == "401"
        wanted = (
            'registry_nginx_requests_total{status="401",method="other",user=""}',
            'registry_nginx_requests_total{status="200",method="GET",user="ci"}',
            'registry_nginx_requests_total{status="401",method="GET",user=""}',
            'registry_nginx_requests_total{status="403",method="GET",user="viewer"}',
        )
        deadline = time.monotonic() + 15
        while True:
            status, body = fetch(sim, metrics_url(sim, "requests"), METRICS_USER, metrics_password)
            if status == "200" and all(name in body for name in wanted):
                break
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.3)
    finally:
        counter.terminate()
        assert counter.wait(timeout=10) == 0
    found = samples(body)
    assert all(found[name] >= 1 for name in wanted), body
    assert "intruder" not in body and "BREW" not in body
    requests = sum(value for name, value in found.items() if "_requests_total{" in name)
    assert found["registry_nginx_request_duration_seconds_count"] == requests
    assert found['registry_nginx_request_duration_seconds_bucket{le="+Inf"}'] == requests
    assert found['registry_nginx_response_bytes_total{user="ci"}'] >= 2  # the body "{}"
    socket = REGISTRY_HOST.file("requests_service").values["socket"]
    assert not sim.files.host_path(str(socket)).exists()  # removed when the service stops
