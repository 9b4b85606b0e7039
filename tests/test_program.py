"""The real program under provider-like mocks: what it asks DigitalOcean, tls, random and the
hosts for, with every value resolved first (no assertion sits in an `apply`).

Runs: the dev stack (shared), a variant with a domain, three clients, port 443, RSA keys,
narrowed CIDRs, a retained volume and an extra SSH key, one with no client, and three second
`pulumi up`s of the dev stack on its engine state (unchanged, rotated passwords, added user).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import tomllib
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from components.access import METRICS_USER
from components.manifest import CLIENT_HOST, REGISTRY_HOST, REGISTRY_LAYOUT, command_name
from components.versions import NGINX_WORKER_GID
from tests.harness import ROOT, ProgramRun, Registration
from tests.remote_commands import PlacedFile, placed_file

if TYPE_CHECKING:
    from tests.conftest import DevStack

pytestmark = pytest.mark.program

COMMAND = "command:remote:Command"
DROPLET = "digitalocean:index/droplet:Droplet"
FIREWALL = "digitalocean:index/firewall:Firewall"
SSH_KEY = "digitalocean:index/sshKey:SshKey"
VPC = "digitalocean:index/vpc:Vpc"
RELEASE = "registry-release-data-volume"
TAG = "digitalocean:index/tag:Tag"
VOLUME = "digitalocean:index/volume:Volume"
ATTACHMENT = "digitalocean:index/volumeAttachment:VolumeAttachment"
DNS_RECORD = "digitalocean:index/dnsRecord:DnsRecord"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
CREDENTIALS = "private-registry:index:Credentials"
CA = "private-registry:index:CertificateAuthority"
NETWORK = "private-registry:index:Network"
SERVER = "private-registry:index:RegistryServer"
SERVER_CERT = "private-registry:index:ServerCertificate"
CLIENT = "private-registry:index:RegistryClient"
STACK = "(stack)"

EVERYWHERE = ["0.0.0.0/0", "::/0"]
CLIENT_CA_FILE = CLIENT_HOST.file("ca_cert").path
CLIENT_PASSWORD_FILE = CLIENT_HOST.file("login_password").path
EXTRA_SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfDS+k8D2XPRGm1Z0liQ0SlrtlHltoCNwj2ia7m/rvV me@laptop"
)
VARIANT = {
    "domain": "example.com",
    "clientCount": 3,
    "port": 443,
    "tlsKeyAlgorithm": "RSA",
    "retainVolumeOnDestroy": True,
    "adminCidrs": ["203.0.113.7/32"],
    "allowedCidrs": ["198.51.100.0/24"],
    "sshPublicKeys": [EXTRA_SSH_KEY],
}
# Every file the registry's service reads, placed by one command each.
REGISTRY_FILE_COMMANDS = {command_name("registry", host_file) for host_file in REGISTRY_HOST.files}


# -- runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_run(run_with: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return run_with(VARIANT)


@pytest.fixture(scope="module")
def no_client_run(run_with: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return run_with({"clientCount": 0})


@pytest.fixture(scope="module")
def unchanged_rerun(update_dev_stack: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return update_dev_stack({})


@pytest.fixture(scope="module")
def rotated_run(update_dev_stack: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return update_dev_stack({"passwordRotation": 1})


@pytest.fixture(scope="module")
def added_user_run(update_dev_stack: Callable[[Mapping[str, Any]], ProgramRun]) -> ProgramRun:
    return update_dev_stack({"users": ["ci", "alice", "bob"]})


# -- extraction helpers ----------------------------------------------------------------------


def resource(run: ProgramRun, type_token: str, name: str) -> Registration:
    matches = [r for r in run.of_type(type_token) if r.name == name]
    assert len(matches) == 1, f"expected one {type_token} named {name}, found {len(matches)}"
    return matches[0]


def command(run: ProgramRun, name: str) -> Registration:
    return resource(run, COMMAND, name)


def parent_name(run: ProgramRun, registration: Registration) -> str:
    if registration.parent in run.resources:
        return run.by_urn(registration.parent).name
    assert registration.parent.split("::")[-2].endswith("pulumi:pulumi:Stack"), registration.parent
    return STACK


def dependency_names(run: ProgramRun, registration: Registration) -> set[str]:
    return {run.by_urn(urn).name for urn in registration.dependencies}


def component_of(run: ProgramRun, registration: Registration) -> Registration:
    """The RegistryServer or RegistryClient a command belongs to."""
    parent = run.by_urn(registration.parent)
    assert parent.type in (SERVER, CLIENT), f"{registration.name} is a child of {parent.name}"
    return parent


def droplet_of(run: ProgramRun, registration: Registration) -> Registration:
    component = component_of(run, registration)
    return resource(run, DROPLET, f"{component.name}-droplet")


def certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def server_certificate(run: ProgramRun) -> x509.Certificate:
    """The certificate as the registry host receives it."""
    return certificate(command(run, "registry-file-server-cert").inputs["stdin"])


def ca_certificate(run: ProgramRun) -> x509.Certificate:
    return certificate(run.outputs["caCertificatePem"])


def htpasswd_lines(run: ProgramRun) -> dict[str, str]:
    """user -> hash, from the htpasswd file as the registry host receives it."""
    text = command(run, "registry-file-htpasswd").inputs["stdin"]
    assert text.endswith("\n")
    return dict(line.split(":", 1) for line in text.splitlines())


def ssha_matches(password: str, hashed: str) -> bool:
    """nginx's `{SSHA}` scheme: base64(SHA1(password + salt) + salt), checked independently."""
    assert hashed.startswith("{SSHA}"), hashed
    decoded = base64.b64decode(hashed.removeprefix("{SSHA}"), validate=True)
    digest, salt = decoded[:20], decoded[20:]
    return len(salt) >= 8 and hashlib.sha1(password.encode() + salt).digest() == digest


def env_file_value(text: str, name: str) -> str:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return values[name]


def script_command(*args: str) -> str:
    return " ".join(["bash", "-s", "--", *args])


def secret_needles(run: ProgramRun) -> dict[str, list[str]]:
    """Every secret of the stack -> texts whose presence anywhere would leak it.

    PEM keys are searched line by line, so a re-wrapped or partial copy is found too.
    """
    secrets: dict[str, str] = {
        f"password of {user}": password for user, password in run.outputs["passwords"].items()
    }
    secrets["admin SSH private key"] = run.outputs["sshPrivateKey"]
    secrets["server private key"] = command(run, "registry-file-server-key").inputs["stdin"]
    secrets["CA private key"] = resource(run, SIGNED_CERT, "registry-tls-cert").inputs[
        "caPrivateKeyPem"
    ]
    secrets["registry http secret"] = env_file_value(
        command(run, "registry-file-registry-env").inputs["stdin"], "REGISTRY_HTTP_SECRET"
    )
    for user, hashed in htpasswd_lines(run).items():
        secrets[f"htpasswd hash of {user}"] = hashed
    needles: dict[str, list[str]] = {}
    for label, text in secrets.items():
        if "-----BEGIN" in text:
            needles[label] = [
                line
                for line in text.splitlines()
                if len(line) >= 40 and not line.startswith("-----")
            ]
        else:
            needles[label] = [text]
        assert needles[label] and all(len(needle) >= 16 for needle in needles[label]), label
    return needles


def leaked_secrets(text: str, needles: Mapping[str, list[str]]) -> list[str]:
    return [label for label, parts in needles.items() if any(part in text for part in parts)]


# -- every resource, with its parent ---------------------------------------------------------


def expected_resources(users: list[str], client_count: int) -> set[tuple[str, str, str]]:
    """(type, name, parent name) of everything the program makes without optional extras."""
    expected = {
        (CREDENTIALS, "credentials", STACK),
        (CA, "ca", STACK),
        (NETWORK, "network", STACK),
        (SERVER, "registry", STACK),
        (PASSWORD, "credentials-registry-http-secret", "credentials"),
        (PRIVATE_KEY, "ca-key", "ca"),
        (SELF_SIGNED, "ca-cert", "ca"),
        (PRIVATE_KEY, "network-admin-ssh-key", "network"),
        (SSH_KEY, "network-admin-ssh-key", "network"),
        (TAG, "network-server-tag", "network"),
        (TAG, "network-client-tag", "network"),
        (FIREWALL, "network-server-firewall", "network"),
        (FIREWALL, "network-client-firewall", "network"),
        (TAG, "network-metrics-tag", "network"),
        ("private-registry:index:Monitoring", "monitoring", STACK),
        ("digitalocean:index/uptimeCheck:UptimeCheck", "monitoring-uptime", "monitoring"),
        ("digitalocean:index/project:Project", "monitoring-project", "monitoring"),
        (DROPLET, "registry-droplet", "registry"),
        (VOLUME, "registry-data", "registry"),
        (ATTACHMENT, "registry-data-attachment", "registry"),
        (SERVER_CERT, "registry-tls", "registry"),
        (PRIVATE_KEY, "registry-tls-key", "registry-tls"),
        (CERT_REQUEST, "registry-tls-csr", "registry-tls"),
        (SIGNED_CERT, "registry-tls-cert", "registry-tls"),
        (COMMAND, "registry-install-packages", "registry"),
        (COMMAND, "registry-mount-data-volume", "registry"),
        (COMMAND, "registry-activate", "registry"),
        (COMMAND, RELEASE, "registry"),
        (COMMAND, "registry-extra-ssh-keys", "registry"),
        *((COMMAND, name, "registry") for name in REGISTRY_FILE_COMMANDS),
    }
    for user in [*users, METRICS_USER]:
        expected |= {
            (PASSWORD, f"credentials-{user}-password", "credentials"),
            (RANDOM_BYTES, f"credentials-{user}-salt", "credentials"),
        }
    for index in range(client_count):
        client = f"client-{index}"
        expected |= {
            (CLIENT, client, STACK),
            (DROPLET, f"{client}-droplet", client),
            *(
                (COMMAND, f"{client}-{step}", client)
                for step in (
                    "install-packages",
                    "file-ca-cert",
                    "file-login-password",
                    "trust-registry",
                    "verify-registry",
                    "extra-ssh-keys",
                )
            ),
        }
    return expected


def inventory(run: ProgramRun) -> set[tuple[str, str, str]]:
    return {(r.type, r.name, parent_name(run, r)) for r in run.resources.values()}


def test_dev_stack_makes_every_resource_with_its_parent(program_run: ProgramRun) -> None:
    assert inventory(program_run) == expected_resources(["ci", "alice"], client_count=1)


def test_zero_clients_makes_no_client_and_everything_else(no_client_run: ProgramRun) -> None:
    assert inventory(no_client_run) == expected_resources(["ci", "alice"], client_count=0)
    assert no_client_run.outputs["clientPublicIps"] == []
    assert no_client_run.outputs["clientPrivateIps"] == []


def test_three_clients_make_three_client_hosts(variant_run: ProgramRun) -> None:
    optional = {(DNS_RECORD, "registry-dns", "registry")}
    assert inventory(variant_run) == expected_resources(["ci", "alice"], client_count=3) | optional
    public_ips = variant_run.outputs["clientPublicIps"]
    assert len(public_ips) == 3 and len(set(public_ips)) == 3
    assert len(set(variant_run.outputs["clientPrivateIps"])) == 3


# -- droplets, volume, DNS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("droplet_name", "size", "tag"),
    [
        ("registry-droplet", "s-1vcpu-2gb", "network-server-tag"),
        ("client-0-droplet", "s-1vcpu-1gb", "network-client-tag"),
    ],
)
def test_droplets_run_in_the_default_vpc_with_monitoring_and_the_admin_ssh_key(
    dev_stack: DevStack, droplet_name: str, size: str, tag: str
) -> None:
    program_run = dev_stack.run
    droplet = resource(program_run, DROPLET, droplet_name)
    ssh_key = resource(program_run, SSH_KEY, "network-admin-ssh-key")
    inputs = droplet.inputs
    assert (inputs["region"], inputs["size"], inputs["image"]) == ("fra1", size, "ubuntu-24-04-x64")
    assert inputs["monitoring"] is True
    assert "vpcUuid" not in inputs  # the region's default VPC, which DigitalOcean owns
    # The fingerprint DigitalOcean returned for the admin key.
    assert inputs["sshKeys"] == [
        dev_stack.mocks.provided(SSH_KEY, "network-admin-ssh-key")[1]["fingerprint"]
    ]
    assert droplet.property_dependencies["sshKeys"] == [ssh_key.urn]
    assert inputs["tags"] == [resource(program_run, TAG, tag).inputs["name"]]
    assert "privateNetworking" not in inputs  # deprecated: vpc_uuid places it


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_no_vpc_that_destroy_could_not_delete(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    assert run.of_type(VPC) == []


def test_admin_ssh_key_output_is_the_ed25519_key_registered_with_digitalocean(
    program_run: ProgramRun,
) -> None:
    private_key = serialization.load_ssh_private_key(
        program_run.outputs["sshPrivateKey"].encode(), password=None
    )
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    public = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    registered = resource(program_run, SSH_KEY, "network-admin-ssh-key").inputs["publicKey"]
    assert registered.strip() == public


def test_data_volume_is_attached_to_the_registry_by_numeric_droplet_id(
    program_run: ProgramRun,
) -> None:
    attachment = resource(program_run, ATTACHMENT, "registry-data-attachment")
    droplet_id = attachment.inputs["dropletId"]
    assert isinstance(droplet_id, (int, float)) and not isinstance(droplet_id, bool)
    assert droplet_id == int(droplet_id) > 0
    assert attachment.property_dependencies["dropletId"] == [
        resource(program_run, DROPLET, "registry-droplet").urn
    ]
    assert attachment.property_dependencies["volumeId"] == [
        resource(program_run, VOLUME, "registry-data").urn
    ]


def test_data_volume_is_deleted_on_destroy_by_default(program_run: ProgramRun) -> None:
    volume = resource(program_run, VOLUME, "registry-data")
    assert (volume.inputs["size"], volume.inputs["region"]) == (20, "fra1")
    assert volume.retain_on_delete is False


def test_data_volume_is_retained_on_destroy_when_configured(variant_run: ProgramRun) -> None:
    assert resource(variant_run, VOLUME, "registry-data").retain_on_delete is True


def test_no_dns_record_without_a_domain(program_run: ProgramRun) -> None:
    assert program_run.of_type(DNS_RECORD) == []


def test_domain_points_an_a_record_at_the_registry(variant_run: ProgramRun) -> None:
    record = resource(variant_run, DNS_RECORD, "registry-dns")
    assert parent_name(variant_run, record) == "registry"
    assert {key: record.inputs[key] for key in ("domain", "name", "type", "value")} == {
        "domain": "example.com",
        "name": "registry",
        "type": "A",
        "value": variant_run.outputs["registryPublicIp"],
    }


def test_clients_map_the_registry_name_to_its_private_ip_without_a_domain(
    program_run: ProgramRun,
) -> None:
    private_ip = program_run.outputs["registryPrivateIp"]
    assert command(program_run, "client-0-trust-registry").inputs["create"] == script_command(
        "registry.internal", "5043", CLIENT_CA_FILE, private_ip
    )
    assert command(program_run, "client-0-verify-registry").inputs["create"] == script_command(
        "registry.internal:5043", "ci", CLIENT_PASSWORD_FILE
    )


def test_clients_use_the_dns_name_and_no_hosts_entry_with_a_domain(variant_run: ProgramRun) -> None:
    for index in range(3):
        assert command(variant_run, f"client-{index}-trust-registry").inputs[
            "create"
        ] == script_command("registry.example.com", "443", CLIENT_CA_FILE)
        assert command(variant_run, f"client-{index}-verify-registry").inputs[
            "create"
        ] == script_command("registry.example.com:443", "ci", CLIENT_PASSWORD_FILE)
    assert variant_run.outputs["registryAddress"] == "registry.example.com:443"
    assert "/etc/hosts" not in variant_run.outputs["trustCaSteps"]


# -- PKI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_fixture", "names"),
    [
        ("program_run", ["registry.internal"]),
        ("variant_run", ["registry.internal", "registry.example.com"]),
    ],
)
def test_server_certificate_verifies_against_the_ca_for_every_name_and_ip(
    request: pytest.FixtureRequest, run_fixture: str, names: list[str]
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    cert, ca = server_certificate(run), ca_certificate(run)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
    ips = [run.outputs["registryPublicIp"], run.outputs["registryPrivateIp"]]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == names
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ips
    # What a Go or rustls client does: chain to the CA, then match the name or IP it dialled.
    store = Store([ca])
    subjects = [DNSName(name) for name in names] + [
        IPAddress(ipaddress.ip_address(ip)) for ip in ips
    ]
    for subject in subjects:
        PolicyBuilder().store(store).build_server_verifier(subject).verify(cert, [])


def test_server_certificate_is_a_tls_server_leaf_not_a_ca(program_run: ProgramRun) -> None:
    cert = server_certificate(program_run)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    inputs = resource(program_run, SIGNED_CERT, "registry-tls-cert").inputs
    assert (inputs["validityPeriodHours"], inputs["earlyRenewalHours"]) == (8760, 720)


def test_server_key_matches_the_server_certificate(program_run: ProgramRun) -> None:
    key = serialization.load_pem_private_key(
        command(program_run, "registry-file-server-key").inputs["stdin"].encode(), password=None
    )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == server_certificate(
        program_run
    ).public_key().public_bytes(serialization.Encoding.DER, spki)


def test_ca_is_a_self_signed_ca_that_hosts_receive_unchanged(program_run: ProgramRun) -> None:
    inputs = resource(program_run, SELF_SIGNED, "ca-cert").inputs
    assert inputs["isCaCertificate"] is True
    assert inputs["allowedUses"] == ["cert_signing", "crl_signing"]
    assert 0 < inputs["earlyRenewalHours"] < inputs["validityPeriodHours"]
    ca = ca_certificate(program_run)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for name in ("registry-file-ca-cert", "client-0-file-ca-cert"):
        assert command(program_run, name).inputs["stdin"] == program_run.outputs["caCertificatePem"]


def key_description(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


@pytest.mark.parametrize(
    ("run_fixture", "key"),
    [
        ("program_run", "ECDSA secp256r1"),
        ("variant_run", "RSA 3072"),
    ],
)
def test_certificates_use_the_configured_key_algorithm(
    request: pytest.FixtureRequest, run_fixture: str, key: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    assert key_description(server_certificate(run)) == key
    assert key_description(ca_certificate(run)) == key


# -- credentials -----------------------------------------------------------------------------


def every_password(run: ProgramRun) -> dict[str, str]:
    """The users' passwords and the metrics user's, as the htpasswd file holds them."""
    return {**run.outputs["passwords"], METRICS_USER: run.outputs["metricsPassword"]}


def test_each_htpasswd_line_verifies_against_its_password(program_run: ProgramRun) -> None:
    passwords = every_password(program_run)
    lines = htpasswd_lines(program_run)
    assert program_run.outputs["users"] == ["ci", "alice"]
    assert list(lines) == ["ci", "alice", METRICS_USER]
    for user, hashed in lines.items():
        assert ssha_matches(passwords[user], hashed), user
        assert not ssha_matches(passwords[user] + "x", hashed), user


def test_passwords_are_long_and_safe_in_htpasswd_shell_and_urls(program_run: ProgramRun) -> None:
    passwords = program_run.outputs["passwords"]
    assert set(passwords) == {"ci", "alice"}
    for password in passwords.values():
        assert re.fullmatch(r"[A-Za-z0-9]{32,}", password)
    assert len(set(passwords.values())) == 2


@pytest.mark.parametrize(("run_fixture", "rotation"), [("program_run", "0"), ("rotated_run", "1")])
def test_passwords_and_salts_rotate_through_keepers(
    request: pytest.FixtureRequest, run_fixture: str, rotation: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    for user in ("ci", "alice"):
        password = resource(run, PASSWORD, f"credentials-{user}-password").inputs
        salt = resource(run, RANDOM_BYTES, f"credentials-{user}-salt").inputs
        assert password["length"] >= 32 and password["special"] is False
        assert password["keepers"] == salt["keepers"] == {"user": user, "rotation": rotation}
        assert salt["length"] >= 8


def test_client_proof_logs_in_with_the_first_users_password(program_run: ProgramRun) -> None:
    assert (
        command(program_run, "client-0-file-login-password").inputs["stdin"]
        == program_run.outputs["passwords"]["ci"]
    )


# -- firewalls -------------------------------------------------------------------------------


def inbound_rules(run: ProgramRun, name: str) -> list[dict[str, Any]]:
    return resource(run, FIREWALL, name).inputs["inboundRules"]


def outbound_is_open(run: ProgramRun, name: str) -> bool:
    return resource(run, FIREWALL, name).inputs["outboundRules"] == [
        {"protocol": "tcp", "portRange": "1-65535", "destinationAddresses": EVERYWHERE},
        {"protocol": "udp", "portRange": "1-65535", "destinationAddresses": EVERYWHERE},
        {"protocol": "icmp", "destinationAddresses": EVERYWHERE},
    ]


def covers(port_range: str, port: int) -> bool:
    low, _, high = port_range.partition("-")
    return int(low) <= port <= int(high or low)


@pytest.mark.parametrize(
    ("run_fixture", "admin_cidrs", "port", "registry_sources"),
    [
        ("program_run", EVERYWHERE, "5043", None),
        ("variant_run", ["203.0.113.7/32"], "443", ["198.51.100.0/24"]),
    ],
)
def test_firewalls_open_ssh_to_admins_and_the_registry_port_to_clients_only(
    request: pytest.FixtureRequest,
    run_fixture: str,
    admin_cidrs: list[str],
    port: str,
    registry_sources: list[str] | None,
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    ssh = {"protocol": "tcp", "portRange": "22", "sourceAddresses": admin_cidrs}
    client_tag = resource(run, TAG, "network-client-tag").inputs["name"]
    metrics_tag = resource(run, TAG, "network-metrics-tag").inputs["name"]
    assert inbound_rules(run, "network-server-firewall") == [
        ssh,
        {
            "protocol": "tcp",
            "portRange": port,
            "sourceTags": [client_tag],
            **({"sourceAddresses": registry_sources} if registry_sources else {}),
        },
        # nginx's metrics listener: only droplets tagged for scraping, no address at all.
        {
            "protocol": "tcp",
            "portRange": str(REGISTRY_LAYOUT.metrics_port),
            "sourceTags": [metrics_tag],
        },
    ]
    assert run.outputs["metricsScraperTag"] == metrics_tag
    assert inbound_rules(run, "network-client-firewall") == [ssh]
    assert outbound_is_open(run, "network-server-firewall")
    assert outbound_is_open(run, "network-client-firewall")


def test_firewalls_select_the_droplets_by_their_tags(program_run: ProgramRun) -> None:
    for firewall, droplet in (
        ("network-server-firewall", "registry-droplet"),
        ("network-client-firewall", "client-0-droplet"),
    ):
        assert (
            resource(program_run, FIREWALL, firewall).inputs["tags"]
            == resource(program_run, DROPLET, droplet).inputs["tags"]
        )


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_no_firewall_rule_opens_the_registrys_debug_port(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    for firewall in run.of_type(FIREWALL):
        for rule in firewall.inputs["inboundRules"]:
            assert not covers(rule["portRange"], REGISTRY_LAYOUT.debug_port), rule


# -- remote commands: order, lifetime, connection --------------------------------------------


def test_registry_service_starts_after_every_file_is_placed_and_the_volume_mounted(
    program_run: ProgramRun,
) -> None:
    placed = {c.name for c in program_run.commands() if c.name.startswith("registry-file-")}
    assert placed == REGISTRY_FILE_COMMANDS
    activate = dependency_names(program_run, command(program_run, "registry-activate"))
    assert placed | {"registry-mount-data-volume", "registry-install-packages"} <= activate


def test_data_volume_is_mounted_after_it_is_attached(program_run: ProgramRun) -> None:
    mount = command(program_run, "registry-mount-data-volume")
    assert "registry-data-attachment" in dependency_names(program_run, mount)
    assert mount.inputs["create"] == script_command(
        "registry-dev-data", REGISTRY_LAYOUT.data_mount, REGISTRY_LAYOUT.data_dir
    )
    assert resource(program_run, VOLUME, "registry-data").inputs["name"] == "registry-dev-data"


def test_client_proof_runs_after_trust_password_file_and_registry_activation(
    program_run: ProgramRun,
) -> None:
    verify = dependency_names(program_run, command(program_run, "client-0-verify-registry"))
    assert {
        "client-0-trust-registry",
        "client-0-file-login-password",
        "registry-activate",
    } <= verify


def test_ca_is_trusted_after_the_ca_file_is_placed(program_run: ProgramRun) -> None:
    trust = dependency_names(program_run, command(program_run, "client-0-trust-registry"))
    assert {"client-0-file-ca-cert", "client-0-install-packages"} <= trust


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_every_command_is_deleted_with_its_droplet(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    for registration in run.commands():
        if registration.name == RELEASE:  # must run on destroy: see tests/test_lifecycle.py
            assert registration.deleted_with == ""
        else:
            assert registration.deleted_with == droplet_of(run, registration).urn, registration.name


def test_every_command_reaches_its_droplet_as_root_with_a_patient_dial(
    program_run: ProgramRun,
) -> None:
    public_ips = {
        "registry-droplet": program_run.outputs["registryPublicIp"],
        "client-0-droplet": program_run.outputs["clientPublicIps"][0],
    }
    for registration in program_run.commands():
        connection = registration.inputs["connection"]
        assert connection["host"] == public_ips[droplet_of(program_run, registration).name]
        assert connection["user"] == "root"
        assert connection["privateKey"] == program_run.outputs["sshPrivateKey"]
        # The provider's default (10 fast dials, about 8 s) gives up on a booting droplet.
        assert connection["dialErrorLimit"] == -1 or connection["dialErrorLimit"] >= 30


def test_scripts_travel_on_stdin_as_the_files_in_the_repository(program_run: ProgramRun) -> None:
    scripts = {path.read_text() for path in (ROOT / "files" / "scripts").glob("*.sh")}
    script_commands = [
        c
        for c in program_run.commands()
        if (c.inputs.get("create") or c.inputs["delete"]).startswith("bash -s -- ")
    ]
    assert len(script_commands) == 7
    for registration in script_commands:
        assert registration.inputs["stdin"] in scripts, registration.name


# -- ready-made client credentials -----------------------------------------------------------


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_docker_config_json_logs_each_user_in_to_the_registry_address(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    address = run.outputs["registryAddress"]
    passwords = run.outputs["passwords"]
    configs = run.outputs["dockerConfigJson"]
    assert set(configs) == set(run.outputs["users"]) == set(passwords)
    for user, text in configs.items():
        login = json.loads(text)["auths"]
        assert list(login) == [address], user
        entry = login[address]
        assert (entry["username"], entry["password"]) == (user, passwords[user])
        assert base64.b64decode(entry["auth"]).decode() == f"{user}:{passwords[user]}"


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_containerd_hosts_toml_trusts_the_ca_beside_it_for_pulls_only(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    address = run.outputs["registryAddress"]
    hosts = tomllib.loads(run.outputs["containerdHostsToml"])
    assert hosts == {
        "server": f"https://{address}",
        "host": {
            f"https://{address}": {
                "capabilities": ["pull", "resolve"],
                "ca": f"/etc/containerd/certs.d/{address}/ca.crt",
            }
        },
    }


# -- secrets ---------------------------------------------------------------------------------


def test_only_passwords_and_the_ssh_private_key_are_secret_outputs(program_run: ProgramRun) -> None:
    assert program_run.secret_outputs == {
        "passwords",
        "dockerConfigJson",
        "metricsPassword",
        "sshPrivateKey",
    }


def test_non_secret_outputs_carry_no_secret(program_run: ProgramRun) -> None:
    needles = secret_needles(program_run)
    for name, value in program_run.outputs.items():
        if name not in program_run.secret_outputs:
            assert leaked_secrets(json.dumps(value), needles) == [], name


@pytest.mark.parametrize("run_fixture", ["program_run", "variant_run"])
def test_no_secret_in_any_command_line_environment_or_trigger(
    request: pytest.FixtureRequest, run_fixture: str
) -> None:
    run: ProgramRun = request.getfixturevalue(run_fixture)
    needles = secret_needles(run)
    for registration in run.commands():
        for field in ("create", "update", "delete", "environment", "triggers"):
            text = json.dumps(registration.inputs.get(field))
            assert leaked_secrets(text, needles) == [], f"{registration.name}.{field}"


def test_commands_with_a_secret_on_stdin_keep_it_secret_and_log_nothing(
    program_run: ProgramRun,
) -> None:
    needles = secret_needles(program_run)
    carrying = {
        c.name for c in program_run.commands() if leaked_secrets(c.inputs.get("stdin", ""), needles)
    }
    assert carrying == {
        "registry-file-htpasswd",
        "registry-file-registry-env",
        "registry-file-server-key",
        "client-0-file-login-password",
    }
    for name in carrying:
        registration = command(program_run, name)
        assert registration.is_secret_input("stdin"), name
        assert registration.inputs.get("logging") == "none", name


def test_files_holding_secrets_land_private_to_root_or_the_nginx_group(
    program_run: ProgramRun,
) -> None:
    needles = secret_needles(program_run)
    placed = {
        placed_file(c)
        for c in program_run.commands()
        if leaked_secrets(c.inputs.get("stdin", ""), needles)
    }
    assert placed == {
        PlacedFile(REGISTRY_HOST.file("htpasswd").path, f"0:{NGINX_WORKER_GID}", "0640"),
        PlacedFile(REGISTRY_HOST.file("registry_env").path, "0:0", "0600"),
        PlacedFile(REGISTRY_HOST.file("server_key").path, "0:0", "0600"),
        PlacedFile(CLIENT_HOST.file("login_password").path, "0:0", "0600"),
    }


def test_private_keys_and_passwords_stay_secret_where_they_are_consumed(
    program_run: ProgramRun,
) -> None:
    secret_inputs = [
        (SELF_SIGNED, "ca-cert", "privateKeyPem"),
        (CERT_REQUEST, "registry-tls-csr", "privateKeyPem"),
        (SIGNED_CERT, "registry-tls-cert", "caPrivateKeyPem"),
    ]
    for type_token, name, key in secret_inputs:
        assert resource(program_run, type_token, name).is_secret_input(key), f"{name}.{key}"
    for registration in program_run.commands():
        assert registration.is_secret_input("connection"), registration.name


# -- a second `pulumi up` --------------------------------------------------------------------


def command_inputs(run: ProgramRun) -> dict[str, dict[str, Any]]:
    return {c.name: c.inputs for c in run.commands()}


def changed_commands(before: ProgramRun, after: ProgramRun) -> set[str]:
    old, new = command_inputs(before), command_inputs(after)
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}


def test_unchanged_config_gives_byte_identical_remote_commands(
    program_run: ProgramRun, unchanged_rerun: ProgramRun
) -> None:
    before, after = command_inputs(program_run), command_inputs(unchanged_rerun)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys(), name
        for field in before[name]:
            assert json.dumps(before[name][field], sort_keys=True) == json.dumps(
                after[name][field], sort_keys=True
            ), f"{name}.{field}"


def test_password_rotation_rewrites_htpasswd_and_reactivates_without_other_file_changes(
    program_run: ProgramRun, rotated_run: ProgramRun
) -> None:
    assert changed_commands(program_run, rotated_run) == {
        "registry-file-htpasswd",
        "registry-activate",
        "client-0-file-login-password",
        "client-0-verify-registry",
    }
    activate_before = command(program_run, "registry-activate").inputs
    activate_after = command(rotated_run, "registry-activate").inputs
    assert activate_before["create"] == activate_after["create"]
    assert activate_before["triggers"] != activate_after["triggers"]
    old_lines, new_lines = htpasswd_lines(program_run), htpasswd_lines(rotated_run)
    assert all(old_lines[user] != new_lines[user] for user in ("ci", "alice", METRICS_USER))
    for user, hashed in new_lines.items():
        assert ssha_matches(every_password(rotated_run)[user], hashed)


def test_adding_a_user_adds_an_htpasswd_line_and_keeps_the_others(
    program_run: ProgramRun, added_user_run: ProgramRun
) -> None:
    # nginx.conf carries each user's grants (components/access.py), so it changes too.
    assert changed_commands(program_run, added_user_run) == {
        "registry-file-htpasswd",
        "registry-file-nginx-conf",
        "registry-activate",
        "client-0-verify-registry",
    }
    old_lines, new_lines = htpasswd_lines(program_run), htpasswd_lines(added_user_run)
    assert list(new_lines) == ["ci", "alice", "bob", METRICS_USER]
    assert {user: new_lines[user] for user in old_lines} == old_lines
    assert ssha_matches(added_user_run.outputs["passwords"]["bob"], new_lines["bob"])


# -- outputs ---------------------------------------------------------------------------------


def test_outputs_describe_the_registry(dev_stack: DevStack) -> None:
    outputs, mocks = dev_stack.run.outputs, dev_stack.mocks
    assert outputs["registryAddress"] == "registry.internal:5043"
    assert outputs["users"] == ["ci", "alice"]
    # Each address and id is the one DigitalOcean returned for that very resource.
    _, registry = mocks.provided(DROPLET, "registry-droplet")
    assert (outputs["registryPublicIp"], outputs["registryPrivateIp"]) == (
        registry["ipv4Address"],
        registry["ipv4AddressPrivate"],
    )
    assert outputs["clientPrivateIps"] == [
        mocks.provided(DROPLET, "client-0-droplet")[1]["ipv4AddressPrivate"]
    ]
    assert outputs["dataVolumeId"] == mocks.provided(VOLUME, "registry-data")[0]
    assert outputs["caCertificatePem"] == mocks.provided(SELF_SIGNED, "ca-cert")[1]["certPem"]


def test_docker_login_command_reads_the_password_from_stdin(program_run: ProgramRun) -> None:
    login = program_run.outputs["dockerLoginCommand"]
    assert login.endswith("| docker login registry.internal:5043 --username ci --password-stdin")
    assert "pulumi stack output passwords --show-secrets" in login
    assert leaked_secrets(login, secret_needles(program_run)) == []


def test_trust_ca_steps_install_the_ca_for_docker_podman_and_the_system(
    program_run: ProgramRun,
) -> None:
    steps = program_run.outputs["trustCaSteps"].splitlines()
    assert steps[0] == "pulumi stack output caCertificatePem > private-registry-ca.crt"
    for directory in ("/etc/docker/certs.d", "/etc/containers/certs.d"):
        assert (
            f"sudo install -D -m 0644 private-registry-ca.crt "
            f"{directory}/registry.internal:5043/ca.crt" in steps
        )
    assert "sudo update-ca-certificates" in steps
    public_ip = program_run.outputs["registryPublicIp"]
    assert steps[-1] == f"echo '{public_ip} registry.internal' | sudo tee -a /etc/hosts"


def test_extra_ssh_keys_are_placed_on_every_host(variant_run: ProgramRun) -> None:
    names = ["registry-extra-ssh-keys", *(f"client-{index}-extra-ssh-keys" for index in range(3))]
    for name in names:
        registration = command(variant_run, name)
        assert registration.inputs["stdin"] == EXTRA_SSH_KEY + "\n"
        assert placed_file(registration) == PlacedFile("/root/.ssh/authorized_keys2", "0:0", "0600")
