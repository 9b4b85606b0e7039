"""publicTls under mocks and by the real tools: what the program asks for (a port-80 rule, the
ACME files and scripts in order, certbot) and that the rendered files pass shellcheck and
systemd's verifier. The ACME flow itself runs for real in test_acme_flow.py."""

from __future__ import annotations

import datetime
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components import versions
from components.manifest import (
    REGISTRY_HOST,
    REGISTRY_HOST_PUBLIC_TLS,
    REGISTRY_LAYOUT,
    command_name,
)
from components.rendering.templates import SCRIPTS_DIR
from tests.harness import ProgramRun, Registration, run_program
from tests.lifecycle.planner import plan_up
from tests.mocks import ProviderMocks
from tests.realstack.sandbox import Sandbox
from tests.test_host_scripts import verify_offline

PUBLIC = {"domain": "example.com", "publicTls": True}
FIREWALL = "digitalocean:index/firewall:Firewall"
UPTIME_ALERT = "digitalocean:index/uptimeAlert:UptimeAlert"
ACME_PORT = REGISTRY_LAYOUT.acme_http_port
HOST = "registry"


@pytest.fixture(scope="module")
def public_run(run_with: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return run_with(PUBLIC)


def server_rules(run: ProgramRun) -> list[dict[str, Any]]:
    (firewall,) = [r for r in run.of_type(FIREWALL) if r.name == "network-server-firewall"]
    rules: list[dict[str, Any]] = firewall.inputs["inboundRules"]
    return rules


def script_args(registration: Registration) -> list[str]:
    argv = shlex.split(registration.inputs["create"])
    assert argv[:3] == ["bash", "-s", "--"], argv
    return argv[3:]


def placed_text(run: ProgramRun, role: str) -> str:
    text: str = run.named(command_name(HOST, REGISTRY_HOST_PUBLIC_TLS.file(role))).inputs["stdin"]
    return text


@pytest.mark.program
def test_public_tls_opens_port_80_to_the_internet_and_private_tls_does_not(
    public_run: ProgramRun, program_run: ProgramRun
) -> None:
    acme_rules = [rule for rule in server_rules(public_run) if rule["portRange"] == str(ACME_PORT)]
    assert acme_rules == [
        {"protocol": "tcp", "portRange": str(ACME_PORT), "sourceAddresses": ["0.0.0.0/0", "::/0"]}
    ]
    assert [r for r in server_rules(program_run) if r["portRange"] == str(ACME_PORT)] == []


@pytest.mark.program
def test_public_tls_serves_a_certificate_before_activation_and_asks_for_one_after(
    public_run: ProgramRun,
) -> None:
    serve = public_run.named(f"{HOST}-serve-certificate")
    activate = public_run.named(f"{HOST}-activate")
    issue = public_run.named(f"{HOST}-issue-certificate")
    placed = {command_name(HOST, f) for f in REGISTRY_HOST_PUBLIC_TLS.files}
    names = {urn: public_run.by_urn(urn).name for urn in public_run.resources}
    assert placed <= {names[urn] for urn in serve.dependencies}
    assert serve.urn in activate.dependencies
    assert activate.urn in issue.dependencies
    # The CA resolves the name: its A record exists first.
    assert public_run.named(f"{HOST}-dns").urn in issue.dependencies
    acme_script = REGISTRY_HOST_PUBLIC_TLS.file("acme_script").path
    assert script_args(serve) == [acme_script]
    assert script_args(issue) == ["registry-acme.service", "registry-acme.timer"]
    # Switching publicTls off deletes this command: the renewals stop.
    assert issue.inputs["delete"] == "systemctl disable --now registry-acme.timer"
    activate_args = script_args(activate)
    # Activation verifies the served certificate for the name the ACME certificate holds.
    assert f"\nname={activate_args[0]}\n" in placed_text(public_run, "acme_script")
    assert activate_args[3] == "/etc/registry/tls/registry-ca.crt"
    assert "registry-acme.timer" in activate_args[4:]
    install = script_args(public_run.named(f"{HOST}-install-packages"))
    assert install == [*versions.REGISTRY_HOST_PACKAGES, *versions.ACME_CLIENT_PACKAGES]


@pytest.mark.program
def test_a_changed_file_re_asks_for_the_certificate_and_leaves_the_renewal_timer_enabled() -> None:
    """A new user changes a placed file, which replaces the issuing command. Its delete
    (disabling the timer) must run before the new command, which enables the timer again;
    run after it, as a create-before-delete replacement does, it would stop the renewals."""
    mocks = ProviderMocks()
    before = run_program(mocks=mocks, overrides=PUBLIC)
    plan = plan_up(before, run_program(mocks=mocks, overrides={**PUBLIC, "users": ["carol"]}))
    issue = f"{HOST}-issue-certificate"
    assert plan.index(f"{HOST}-activate", "replace") < plan.index(issue, "delete-replaced")
    assert plan.index(issue, "delete-replaced") < plan.index(issue, "replace"), plan.summary()


@pytest.mark.program
def test_public_tls_asks_the_acme_directory_for_the_dns_name_only(public_run: ProgramRun) -> None:
    script = placed_text(public_run, "acme_script")
    assert "\nname=registry.example.com\n" in script
    assert "\ndirectory=https://acme-v02.api.letsencrypt.org/directory\n" in script
    conf = placed_text(public_run, "nginx_conf")
    assert "ssl_certificate /etc/nginx/tls/registry.crt;" in conf
    assert f"listen {ACME_PORT} default_server;" in conf


@pytest.mark.program
def test_private_tls_places_and_runs_nothing_of_acme(program_run: ProgramRun) -> None:
    names = {r.name for r in program_run.resources.values()}
    assert not any("acme" in name or "certificate" in name for name in names), names
    install = script_args(program_run.named(f"{HOST}-install-packages"))
    assert "certbot" not in install
    conf = program_run.named(command_name(HOST, REGISTRY_HOST.file("nginx_conf"))).inputs["stdin"]
    assert "registry.crt" not in conf and "acme" not in conf


@pytest.mark.files
def test_rendered_acme_script_passes_shellcheck(public_run: ProgramRun, tmp_path: Path) -> None:
    script = tmp_path / "registry-acme.sh"
    script.write_text(placed_text(public_run, "acme_script"))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.files
def test_acme_service_and_timer_are_valid_units(public_run: ProgramRun, tmp_path: Path) -> None:
    service = REGISTRY_HOST_PUBLIC_TLS.file("acme_service")
    timer = REGISTRY_HOST_PUBLIC_TLS.file("acme_timer")
    script = REGISTRY_HOST_PUBLIC_TLS.file("acme_script")
    verify_offline(
        tmp_path,
        timer.path,
        {
            service.path: (placed_text(public_run, "acme_service"), 0o644),
            timer.path: (placed_text(public_run, "acme_timer"), 0o644),
            script.path: (placed_text(public_run, "acme_script"), 0o755),
        },
    )


@pytest.mark.program
def test_the_certificate_alert_fires_only_once_renewals_have_failed_and_names_the_unit(
    run_with: Callable[[Mapping[str, Any]], ProgramRun],
) -> None:
    run = run_with({**PUBLIC, "alertEmails": ["ops@example.com"]})
    (alert,) = [r for r in run.of_type(UPTIME_ALERT) if r.name == "monitoring-certificate"]
    # Let's Encrypt's shortest announced lifetime (45 days, from 2028-02-16) is renewed with a
    # third left: the alert's threshold lies below that, so a healthy renewal never fires it.
    assert alert.inputs["threshold"] < 45 / 3
    assert "journalctl -u registry-acme.service" in alert.inputs["name"]


@pytest.mark.files
@pytest.mark.parametrize("unit_status", [0, 1], ids=["issued", "failed"])
def test_asking_for_the_certificate_never_fails_pulumi_up(unit_status: int, tmp_path: Path) -> None:
    """issue-certificate.sh as the remote command runs it (`bash -s`), with `systemctl` and
    `journalctl` stood in for: a failed unit is reported with its log, and the command
    succeeds, since the registry keeps serving and the timer (enabled first) retries."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >>{tmp_path}/calls\n[ "$1" != start ] || exit {unit_status}\n'
    )
    (bin_dir / "journalctl").write_text("#!/bin/sh\necho 'registry-acme: ERROR: what to fix'\n")
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    result = subprocess.run(
        ["bash", "-s", "--", "registry-acme.service", "registry-acme.timer"],
        input=(SCRIPTS_DIR / "issue-certificate.sh").read_text(),
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text() == (
        "enable --now --quiet registry-acme.timer\nstart registry-acme.service\n"
    )
    if unit_status:
        assert "WARNING: registry-acme.service failed" in result.stderr
        assert "registry-acme: ERROR: what to fix" in result.stderr
    else:
        assert "registry-acme.service: done" in result.stdout and result.stderr == ""


def self_signed(name: str, not_before: datetime.datetime, not_after: datetime.datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.files
@pytest.mark.parametrize(
    ("lifetime_days", "days_left", "due"),
    [
        (45, 14, True),
        (45, 16, False),
        (64, 21, True),
        (64, 22, False),
        (90, 29, True),
        (90, 31, False),
    ],
)
def test_renewal_is_due_with_a_third_of_the_lifetime_left(
    public_run: ProgramRun, tmp_path: Path, lifetime_days: int, days_left: int, due: bool
) -> None:
    """The placed registry-acme.sh, `renew`, over an issued certificate of Let's Encrypt's
    lifetimes (90, 64, 45 days) with a day more or less than a third left; certbot and
    systemctl stood in for (recorded)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(days=lifetime_days - days_left)
    issued = self_signed("registry.example.com", start, now + datetime.timedelta(days=days_left))
    private = self_signed("registry.example.com", now, now + datetime.timedelta(days=365))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("certbot", "systemctl"):
        (bin_dir / command).write_text(f'#!/bin/sh\necho "{command} $*" >>{tmp_path}/calls\n')
        (bin_dir / command).chmod(0o755)
    live = f"{REGISTRY_LAYOUT.acme_dir}/config/live/registry"
    script = REGISTRY_HOST_PUBLIC_TLS.file("acme_script").path
    result = Sandbox(tmp_path / "host").run(
        f"PATH={bin_dir}:$PATH bash {script} renew",
        files={
            script: placed_text(public_run, "acme_script"),
            f"{live}/fullchain.pem": issued,
            f"{live}/privkey.pem": "key\n",
            f"{live}/chain.pem": issued,
            REGISTRY_HOST_PUBLIC_TLS.file("server_cert").path: private,
            REGISTRY_HOST_PUBLIC_TLS.file("server_key").path: "private key\n",
            REGISTRY_HOST_PUBLIC_TLS.file("ca_cert").path: private,
        },
    )
    assert result.returncode == 0, result.stderr.decode()
    calls = (tmp_path / "calls").read_text().splitlines()
    certbot = [call for call in calls if call.startswith("certbot ")]
    assert len(certbot) == (1 if due else 0), calls
    if due:
        assert " certonly " in certbot[0] and "--force-renewal" in certbot[0]
        assert "--webroot" in certbot[0] and "--domain registry.example.com" in certbot[0]
