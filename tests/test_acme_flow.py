"""Layer 3, publicTls for real: the placed registry-acme.sh runs certbot (Debian's, as Ubuntu's
archive gives the droplet) against pebble, Let's Encrypt's test CA (Debian's `pebble`, with
`pebble-challtestsrv` as the Internet's DNS), on the Internet side of the simulated registry
host (tests/realstack/hostsim.py). Pebble validates HTTP-01 by fetching the challenge file from
the registry's public IP on port 80, from the nginx the program configured. The clients trust
pebble's root alone, as a laptop trusts Let's Encrypt's: never the stack's private CA.

Only what systemd does is stood in for: the timer's `registry-acme.service` is the script run
by hand, and its `systemctl reload registry.service` is recorded, then done as the unit's
ExecReload does (`nginx -s reload`, `RegistryHostSim.reload_nginx`).
"""

from __future__ import annotations

import calendar
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.manifest import REGISTRY_HOST_PUBLIC_TLS, REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Podman, Skopeo
from tests.realstack.hostsim import CURL_STATUS, RegistryHostSim, running, sh
from tests.realstack.oci import build_image
from tests.test_real_stack import podman_roundtrip

pytestmark = pytest.mark.host

PEBBLE_NAME = "pebble.test"  # the ACME CA's host name, on the Internet side
DIRECTORY = f"https://{PEBBLE_NAME}:14000/dir"
ACME_SCRIPT = REGISTRY_HOST_PUBLIC_TLS.file("acme_script").path
SERVED_CERT = "/etc/registry/tls/registry.crt"
SERVED_KEY = "/etc/registry/tls/registry.key"
SERVED_CA = "/etc/registry/tls/registry-ca.crt"
TLS_METRICS = f"{REGISTRY_LAYOUT.metrics_dir}/tls.prom"
RELOAD_LOG = "reloads.log"


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(
        overrides={
            "users": ["ci", "alice"],
            "clientCount": 1,
            "domain": "example.com",
            "publicTls": True,
            "acmeDirectory": DIRECTORY,
        }
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("acme")


class Pebble:
    """pebble and pebble-challtestsrv in the sim's public (Internet) namespace."""

    def __init__(self, sim: RegistryHostSim, workdir: Path) -> None:
        self.sim = sim
        self.workdir = workdir
        self.ip = sim.internet_ip
        self.processes: list[subprocess.Popen[bytes]] = []
        key, self.tls_cert = workdir / "pebble.key", workdir / "pebble.crt"
        sh(
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-subj", f"/CN={PEBBLE_NAME}", "-addext",
            f"subjectAltName=DNS:{PEBBLE_NAME}", "-days", "2", "-keyout", str(key),
            "-out", str(self.tls_cert),
        )  # fmt: skip
        config = workdir / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{self.ip}:14000",
                        "managementListenAddress": f"{self.ip}:15000",
                        "certificate": str(self.tls_cert),
                        "privateKey": str(key),
                        # HTTP-01 is validated on port 80, as Let's Encrypt does.
                        "httpPort": REGISTRY_LAYOUT.acme_http_port,
                        "tlsPort": 5001,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        self.log = workdir / "pebble.log"
        log = self.log.open("ab")
        # The Internet's DNS: every name is the registry's public IP until told otherwise.
        self._start(
            ["pebble-challtestsrv", "-defaultIPv4", sim.public_ip, "-defaultIPv6", "",
             "-dns01", f"{self.ip}:8053", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"{self.ip}:8055"],
            {}, log,
        )  # fmt: skip
        # No nonce rejections or sleeps, and (but 1 time in 100) no reused authorizations.
        self._start(
            ["pebble", "-config", str(config), "-dnsserver", f"{self.ip}:8053"],
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
            log,
        )
        log.close()
        self.root = workdir / "pebble-root.pem"
        self._wait(lambda: self.root.write_text(self.management("/roots/0")) is not None)

    def _start(self, argv: list[str], env: dict[str, str], log: object) -> None:
        self.processes.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.sim.ns_public, *argv],
                stdout=log,  # type: ignore[arg-type]
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", **env},
            )
        )

    def _wait(self, attempt: object) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                attempt()  # type: ignore[operator]
                return
            except (OSError, subprocess.CalledProcessError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def management(self, path: str) -> str:
        """GET from pebble's management API (its own TLS certificate; from the Internet side)."""
        return sh(*self.sim.public_argv(
            ["curl", "-sSf", "--cacert", str(self.tls_cert), "--resolve",
             f"{PEBBLE_NAME}:15000:{self.ip}", f"https://{PEBBLE_NAME}:15000{path}"]
        )).stdout.decode()  # fmt: skip

    def validations(self) -> int:
        """How many challenge validations pebble has attempted so far."""
        return self.log.read_text().count("Attempting to validate")

    def point_names_at(self, ip: str) -> None:
        """challtestsrv's DNS answers every A query with `ip` from now on."""
        sh(*self.sim.public_argv(
            ["curl", "-sSf", "-d", json.dumps({"ip": ip}), f"http://{self.ip}:8055/set-default-ipv4"]
        ))  # fmt: skip

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def sim(program: ProgramRun, workdir: Path) -> Iterator[RegistryHostSim]:
    host = RegistryHostSim(program, workdir / "host", host_manifest=REGISTRY_HOST_PUBLIC_TLS)
    # What serve-certificate.sh does before activation: nginx starts with the private one.
    result = acme_script(host, workdir, "serve")
    assert result.returncode == 0, result.stderr.decode()
    with running(host):
        yield host


@pytest.fixture(scope="module")
def pebble(sim: RegistryHostSim, workdir: Path) -> Iterator[Pebble]:
    server = Pebble(sim, workdir)
    try:
        yield server
    finally:
        server.stop()


def acme_script(
    sim: RegistryHostSim, workdir: Path, *args: str, reload_exit: int = 0
) -> subprocess.CompletedProcess[bytes]:
    """The placed registry-acme.sh on the host (its files, its network namespace), trusting
    pebble's TLS certificate for the ACME API, with `systemctl` recorded."""
    stand_ins = workdir / "bin"
    stand_ins.mkdir(exist_ok=True)
    (stand_ins / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >>{workdir / RELOAD_LOG}\nexit {reload_exit}\n'
    )
    (stand_ins / "systemctl").chmod(0o755)
    return sim.files.sandbox.run(
        f"PATH={stand_ins}:$PATH REQUESTS_CA_BUNDLE={workdir / 'pebble.crt'} "
        f"{ACME_SCRIPT} {' '.join(args)}",
        files={"/etc/hosts": f"127.0.0.1 localhost\n{sim.internet_ip} {PEBBLE_NAME}\n"},
        netns=sim.ns_host if args[0] != "serve" else None,
        timeout=180,
    )


def reloads(workdir: Path) -> list[str]:
    path = workdir / RELOAD_LOG
    return path.read_text().splitlines() if path.exists() else []


def host_file(sim: RegistryHostSim, path: str) -> Path:
    return sim.files.sandbox.upper(path)


def metrics(sim: RegistryHostSim) -> dict[str, float]:
    text = host_file(sim, TLS_METRICS).read_text()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def pebble_trust(sim: RegistryHostSim, pebble: Pebble, workdir: Path) -> Path:
    """A client /etc whose only trusted root is pebble's, and where the public name resolves
    (DNS on a droplet; here the client's hosts file) to the registry."""
    etc = workdir / "client-etc"
    (etc / "ssl/certs").mkdir(parents=True)
    (etc / "ssl/certs/ca-certificates.crt").write_text(pebble.root.read_text())
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{sim.registry_ip} {sim.registry_name}\n")
    (etc / "containers").mkdir()
    sim.set_client_etc(etc)
    return etc


def fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint of the first certificate in `pem` (text around it is skipped)."""
    return sh("openssl", "x509", "-noout", "-fingerprint", "-sha256", input=pem).stdout.decode()


def curl_status(sim: RegistryHostSim, url: str) -> str:
    return sim.client(*CURL_STATUS, "--max-time", "10", url, check=False).stdout.decode()


@pytest.fixture(scope="module")
def issued(sim: RegistryHostSim, pebble: Pebble, pebble_trust: Path, workdir: Path) -> str:
    """The first issuance, as issue-certificate.sh starts it, after a first attempt whose
    challenge cannot be fetched; returns the served certificate."""
    v2 = f"https://{sim.address}/v2/"
    # Before: the private certificate is served, which a client of pebble's root refuses.
    assert curl_status(sim, v2) == "000"
    private = host_file(sim, SERVED_CERT).read_text()
    pebble.point_names_at(pebble.ip)
    try:
        refused = acme_script(sim, workdir, "renew")
    finally:
        pebble.point_names_at(sim.public_ip)
    assert refused.returncode == 1 and b"ERROR: no certificate from" in refused.stdout
    assert host_file(sim, SERVED_CERT).read_text() == private and reloads(workdir) == []
    assert metrics(sim)["registry_tls_certificate_public"] == 0
    assert metrics(sim)["registry_tls_renewal_failed"] == 1
    # The registry still serves, with the private certificate.
    assert sim.verify_tls(sim.registry_name).returncode == 0
    result = acme_script(sim, workdir, "renew")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert reloads(workdir) == ["reload registry.service"]
    sim.reload_nginx()
    return host_file(sim, SERVED_CERT).read_text()


def test_issuance_serves_the_acme_certificate_to_clients_trusting_only_its_root(
    sim: RegistryHostSim, issued: str
) -> None:
    assert curl_status(sim, f"https://{sim.address}/v2/") == "401"
    issuer = sh("openssl", "x509", "-noout", "-issuer", input=issued.encode()).stdout.decode()
    assert "Pebble" in issuer, issuer
    names = sh("openssl", "x509", "-noout", "-ext", "subjectAltName", input=issued.encode())
    assert "DNS:registry.example.com" in names.stdout.decode()
    assert metrics(sim)["registry_tls_certificate_public"] == 1
    assert metrics(sim)["registry_tls_renewal_failed"] == 0


def test_the_served_ca_file_verifies_the_served_certificate_for_the_activation_check(
    sim: RegistryHostSim, issued: str
) -> None:
    """activate-registry.sh checks /v2/ with curl --cacert on this file: the issuer of the
    public certificate (curl accepts a partial chain) once it is served."""
    result = sim.client(
        *CURL_STATUS, "--max-time", "10", "--resolve",
        f"{sim.registry_name}:{sim.port}:{sim.registry_ip}", "--cacert",
        str(host_file(sim, SERVED_CA)), f"https://{sim.address}/v2/",
        trusted=False, check=False,
    )  # fmt: skip
    assert result.stdout.decode() == "401", result.stderr.decode()


def test_skopeo_and_podman_push_and_pull_trusting_only_the_acme_root(
    sim: RegistryHostSim, issued: str, workdir: Path
) -> None:
    skopeo = Skopeo.logged_in(sim, workdir / "skopeo")
    image = build_image(workdir / "img", "v1", [256 * 1024], seed="acme")
    assert skopeo.push(image, "team/acme", "ci") == image.manifest_digest
    assert skopeo.raw_manifest_digest("team/acme", "v1", "alice") == image.manifest_digest
    podman = Podman(sim, workdir / "podman")
    try:
        podman_roundtrip(podman, sim, workdir)
    finally:
        podman.close()


def test_the_metrics_listener_keeps_the_private_certificate_and_shows_days_left(
    sim: RegistryHostSim, program: ProgramRun, issued: str
) -> None:
    url = f"https://{sim.registry_ip}:{REGISTRY_LAYOUT.metrics_port}/metrics/tls"
    result = sim.client(
        "curl", "-sS", "--max-time", "10", "--cacert", str(sim.ca_file), "-u",
        f"metrics:{program.outputs['metricsPassword']}", url, trusted=False,
    )  # fmt: skip
    served = metrics(sim)
    assert "registry_tls_certificate_public 1\n" in result.stdout.decode()
    end = sh("openssl", "x509", "-noout", "-enddate", input=issued.encode()).stdout.decode()
    expiry = calendar.timegm(time.strptime(end.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))
    assert abs(served["registry_tls_certificate_expiry_timestamp_seconds"] - expiry) < 86400
    assert served["registry_tls_certificate_days_left"] > 1


def test_port_80_answers_the_challenge_path_only(sim: RegistryHostSim, issued: str) -> None:
    webroot = host_file(sim, f"{REGISTRY_LAYOUT.acme_dir}/webroot/.well-known/acme-challenge")
    webroot.mkdir(parents=True, exist_ok=True)
    (webroot / "probe-token").write_text("probe-token.thumbprint")
    base = f"http://{sim.public_ip}"

    def status(path: str, *args: str) -> str:
        return sh(*sim.public_argv([*CURL_STATUS, "--max-time", "5", *args, base + path]),
                  check=False).stdout.decode()  # fmt: skip

    assert status("/.well-known/acme-challenge/probe-token") == "200"
    assert status("/.well-known/acme-challenge/other") == "404"
    # Anything else: the connection is closed unanswered (curl's 000).
    for path in ("/", "/v2/", "/healthz", "/metrics/tls", "/.well-known/other"):
        assert status(path) == "000", path
    assert status("/.well-known/acme-challenge/probe-token", "-X", "DELETE") == "403"
    (webroot / "probe-token").unlink()


def test_forced_renewal_replaces_the_certificate_with_no_failed_pull(
    sim: RegistryHostSim, issued: str, workdir: Path
) -> None:
    skopeo = Skopeo.logged_in(sim, workdir / "skopeo-loop")
    image = build_image(workdir / "loop-img", "v1", [4 << 20], seed="renewal")
    skopeo.push(image, "team/renewal", "ci")
    failures: list[str] = []
    pulls = 0
    stop = threading.Event()

    def pull_loop() -> None:
        nonlocal pulls
        while not stop.is_set():
            result = skopeo(
                "copy", "--quiet", "--src-authfile", str(skopeo.authfile("alice")),
                f"docker://{sim.address}/team/renewal:v1", f"oci:{workdir / 'loop-out'}:v1",
                check=False,
            )  # fmt: skip
            pulls += 1
            if result.returncode != 0:
                failures.append(result.stderr.decode()[-500:])

    before = reloads(workdir)
    thread = threading.Thread(target=pull_loop)
    thread.start()
    try:
        result = acme_script(sim, workdir, "renew", "force")
        assert result.returncode == 0, result.stderr.decode()
        assert reloads(workdir) == [*before, "reload registry.service"]
        sim.reload_nginx()
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    renewed = host_file(sim, SERVED_CERT).read_text()
    assert renewed != issued
    assert curl_status(sim, f"https://{sim.address}/v2/") == "401"
    served = sim.client(
        "openssl", "s_client", "-connect", f"{sim.registry_ip}:{sim.port}", "-servername",
        sim.registry_name, input=b"", trusted=False,
    ).stdout  # fmt: skip
    assert fingerprint(served) == fingerprint(renewed.encode())
    assert pulls >= 2 and failures == [], failures


def test_a_renewal_that_is_not_due_asks_nothing_and_reloads_nothing(
    sim: RegistryHostSim, issued: str, workdir: Path
) -> None:
    before, served = reloads(workdir), host_file(sim, SERVED_CERT).read_text()
    result = acme_script(sim, workdir, "renew")
    assert result.returncode == 0
    assert b"requesting" not in result.stdout
    assert reloads(workdir) == before and host_file(sim, SERVED_CERT).read_text() == served


def test_a_failed_renewal_keeps_serving_logs_what_to_check_and_shows_in_metrics(
    sim: RegistryHostSim, pebble: Pebble, issued: str, workdir: Path
) -> None:
    for _attempt in range(3):
        served, before, validated = (
            host_file(sim, SERVED_CERT).read_text(),
            reloads(workdir),
            pebble.validations(),
        )
        # The name no longer leads to this host: the challenge cannot be fetched.
        pebble.point_names_at(pebble.ip)
        try:
            result = acme_script(sim, workdir, "renew", "force")
        finally:
            pebble.point_names_at(sim.public_ip)
        # pebble 2.4 reuses a valid authorization 1 time in 100 even at PEBBLE_AUTHZREUSE=0
        # (wfe.go: `rand.Intn(100) > wfe.authzReusePercent`): then no challenge was asked
        # for, the attempt proved nothing, and it is asked again.
        if pebble.validations() > validated:
            break
    assert result.returncode == 1
    message = result.stdout.decode()
    assert "ERROR: no certificate from" in message and "port 80 is open" in message
    # The CA's own words (pebble's, as Let's Encrypt's would read).
    assert f"dial tcp {pebble.ip}:80: connect: connection refused" in message
    assert host_file(sim, SERVED_CERT).read_text() == served
    assert reloads(workdir) == before
    assert metrics(sim)["registry_tls_renewal_failed"] == 1
    assert metrics(sim)["registry_tls_certificate_public"] == 1
    assert curl_status(sim, f"https://{sim.address}/v2/") == "401"


def test_private_keys_stay_private_and_no_log_holds_one(sim: RegistryHostSim, issued: str) -> None:
    assert host_file(sim, SERVED_KEY).stat().st_mode & 0o777 == 0o600
    logs = host_file(sim, f"{REGISTRY_LAYOUT.acme_dir}/logs")
    texts = [path.read_text(errors="replace") for path in logs.rglob("*.log*") if path.is_file()]
    assert texts and not any("PRIVATE KEY" in text for text in texts)


def test_a_failed_reload_stays_owed_and_the_next_run_reloads_though_nothing_changed(
    sim: RegistryHostSim, issued: str, workdir: Path
) -> None:
    """Without the owed reload, the next run finds the served files unchanged and reloads
    nothing: nginx would serve the previous certificate until it expires."""
    before = reloads(workdir)
    failed = acme_script(sim, workdir, "renew", "force", reload_exit=1)
    assert failed.returncode == 1
    assert b"ERROR: reloading registry.service failed" in failed.stdout, failed.stdout
    assert metrics(sim)["registry_tls_renewal_failed"] == 1
    retried = acme_script(sim, workdir, "renew")
    assert retried.returncode == 0 and b"requesting" not in retried.stdout
    assert reloads(workdir) == [*before, *["reload registry.service"] * 2]
    assert metrics(sim)["registry_tls_renewal_failed"] == 0
    # Paid: the run after reloads nothing.
    assert acme_script(sim, workdir, "renew").returncode == 0
    assert reloads(workdir) == [*before, *["reload registry.service"] * 2]
    sim.reload_nginx()
    assert curl_status(sim, f"https://{sim.address}/v2/") == "401"
