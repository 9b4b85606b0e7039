"""Settings: every config key is parsed and validated in one place, before any resource.

Pure tests of `parse_settings` (no Pulumi run), fed the strings the Pulumi CLI hands a program,
plus a few runs of the real program proving that bad config stops it before it registers
anything, with one `SettingsError` (a `pulumi.RunError`: printed without a traceback).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pulumi
import pytest
import yaml

from components import versions
from components.access import Account
from components.settings import (
    CONFIG_KEYS,
    HUB_CACHE_TTL_FORM,
    SECRET_KEYS,
    Settings,
    SettingsError,
    parse_settings,
)
from tests.harness import PROJECT, ROOT, cli_config_value

pytestmark = pytest.mark.program

if TYPE_CHECKING:
    from tests.conftest import FailedRun


def declared_defaults() -> dict[str, str]:
    """The `config:` defaults of Pulumi.yaml, as the CLI hands them to the program."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return {key: cli_config_value(spec["default"]) for key, spec in project["config"].items()}


def config(**overrides: Any) -> dict[str, str]:
    """Defaults with overrides given as Python values (lists, ints) or raw CLI strings."""
    return {
        **declared_defaults(),
        **{key: cli_config_value(value) for key, value in overrides.items()},
    }


def problem_lines(error: SettingsError) -> list[str]:
    """One line per bad key: `  private-registry:<key> = <value>: expected <form>`."""
    return [line for line in str(error).splitlines() if line.startswith(f"  {PROJECT}:")]


def settings_error(raw_config: Mapping[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw_config)
    return caught.value


ED25519_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfDS+k8D2XPRGm1Z0liQ0SlrtlHltoCNwj2ia7m/rvV me@laptop"
)
REGION_FORM = "a DigitalOcean region slug, one of "
SIZE_FORM = "a DigitalOcean droplet size slug such as s-1vcpu-2gb"
IMAGE_FORM = "an Ubuntu image slug such as ubuntu-24-04-x64"
NAME_FORM = "a lowercase DNS name with at least one dot, such as registry.internal"
DOCKER_ID_FORM = "empty (the cache pulls anonymously), or a Docker ID"
PORT_FORM = "an integer from 1 to 65535 other than 22, 5001, 9443, 9444 (e.g. 5043 or 443)"
USERS_FORM = (
    "a non-empty list of distinct users, each NAME, NAME:ROLE or "
    "NAME:ROLE:SCOPE,SCOPE...; NAME: lowercase letters"
)
CIDRS_FORM = 'a list of CIDR blocks such as ["203.0.113.7/32", "2001:db8::/48"]'
DOMAIN_FORM = "empty, or a domain managed in DigitalOcean DNS such as example.com"
VOLUME_FORM = "an integer number of GiB from 1 to 16384"
CONTAINER_IMAGE_FORM = "an image reference with an explicit tag or digest"
CERT_HOURS_FORM = "an integer from 24 to 87600"
SSH_KEYS_FORM = "a list of OpenSSH public keys"
EXISTING_VOLUME_FORM = "the name or id of a DigitalOcean volume in the stack's region"
STORAGE_FORM = "volume (one droplet, images on a block storage volume) or spaces"
SPACES_REGION_FORM = "empty (the droplets' region), or a region with Spaces: ams3, atl1"
BUCKET_FORM = "empty (registry-<stack>-images-<random hex>), or a bucket name of 3 to 63 lowercase"
SPACES_CACHE_FORM = "memory (each node caches in memory) or valkey"
GC_SCHEDULE_FORM = "a systemd OnCalendar schedule: hourly, daily, weekly"

# (key, bad value as a Python value or raw CLI string, a part of the accepted form)
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("region", "", REGION_FORM),
    ("region", "nyc2", REGION_FORM),  # retired: takes no new droplets
    ("region", "NYC3", REGION_FORM),
    ("region", "mars1", REGION_FORM),
    ("registrySize", "", SIZE_FORM),
    ("registrySize", "large", SIZE_FORM),
    ("registrySize", "S-1VCPU-2GB", SIZE_FORM),
    ("clientSize", "s 1vcpu 1gb", SIZE_FORM),
    ("clientSize", "-1vcpu-1gb", SIZE_FORM),
    ("image", "", IMAGE_FORM),
    ("image", "debian-12-x64", IMAGE_FORM),
    ("image", "ubuntu-24-04", IMAGE_FORM),
    ("registryName", "", NAME_FORM),
    ("registryName", "registry", NAME_FORM),
    ("registryName", "Registry.Internal", NAME_FORM),
    ("registryName", "-registry.internal", NAME_FORM),
    ("registryName", "reg istry.internal", NAME_FORM),
    ("registryName", "registry_1.internal", NAME_FORM),
    ("port", 0, PORT_FORM),
    ("port", 5001, PORT_FORM),  # the registry's debug port
    ("port", 9444, PORT_FORM),  # nginx's load balancer listener
    ("port", 22, PORT_FORM),
    ("port", 9443, PORT_FORM),  # nginx's metrics listener
    ("port", 70000, PORT_FORM),
    ("port", -443, PORT_FORM),
    ("port", "https", PORT_FORM),
    ("port", "", PORT_FORM),
    ("port", "5043.0", PORT_FORM),
    ("users", [], USERS_FORM),
    ("users", ["ci", "ci"], USERS_FORM),
    ("users", ["ci:owner"], "(unknown role 'owner' in 'ci:owner')"),
    ("users", ["ci:Admin"], "(unknown role 'Admin' in 'ci:Admin')"),
    ("users", ["ci:"], "(unknown role '' in 'ci:')"),
    ("users", ["ci:push:"], "(empty scope list in 'ci:push:')"),
    ("users", ["ci:push:team/"], "(empty path component in scope 'team/' in 'ci:push:team/')"),
    ("users", ["ci:push:/team"], "(empty path component in scope '/team'"),
    ("users", ["ci:push:team//app"], "(empty path component in scope 'team//app'"),
    ("users", ["ci:push:team/*,"], "(empty path component in scope ''"),
    ("users", ["ci:push:Team/*"], "(scope 'Team/*' has characters other than lowercase"),
    ("users", ["ci:push:team/[a-z]"], "(scope 'team/[a-z]' has characters other than"),
    ("users", ["ci:push:team app"], "(scope 'team app' has characters other than"),
    ("users", ["ci:push:**/app"], "(** is allowed only as the last component, in '**/app'"),
    ("users", ["ci:push:team/a**"], "(scope 'team/a**' has characters other than"),
    ("users", ["ci:push:a,a"], "(repeated scope in 'ci:push:a,a')"),
    ("users", ["ci:push:a:b"], "(scope 'a:b' has characters other than"),
    ("users", ["ci", "ci:pull"], "(a user is listed twice)"),
    ("users", ["bad user"], USERS_FORM),
    ("users", ["Alice"], USERS_FORM),
    ("users", ["1ci"], USERS_FORM),
    ("users", [""], USERS_FORM),
    ("users", ["a" * 33], USERS_FORM),
    ("users", [1], USERS_FORM),
    ("users", "ci", USERS_FORM),  # not a list
    ("users", "", USERS_FORM),
    ("passwordRotation", -1, "an integer from 0 to 1000000"),
    ("passwordRotation", "soon", "an integer from 0 to 1000000"),
    ("clientCount", -1, "an integer from 0 to 10"),
    ("clientCount", 11, "an integer from 0 to 10"),
    ("clientCount", "1.5", "an integer from 0 to 10"),
    ("clientCount", "", "an integer from 0 to 10"),
    ("adminCidrs", [], CIDRS_FORM + ", at least one"),
    ("adminCidrs", ["10.0.0.0/33"], CIDRS_FORM),
    ("adminCidrs", ["203.0.113.7"], CIDRS_FORM),  # an address, not a block
    ("adminCidrs", ["10.0.0.1/8"], CIDRS_FORM),  # host bits set
    ("adminCidrs", ["0.0.0.0/0", "everywhere"], CIDRS_FORM),
    ("adminCidrs", "0.0.0.0/0", CIDRS_FORM),  # not a list
    ("allowedCidrs", ["not-a-cidr"], CIDRS_FORM),
    ("allowedCidrs", ["2001:db8::/129"], CIDRS_FORM),
    ("allowedCidrs", ["256.1.1.0/24"], CIDRS_FORM),
    ("domain", "Example.com", DOMAIN_FORM),
    ("domain", "localhost", DOMAIN_FORM),
    ("domain", "example..com", DOMAIN_FORM),
    ("domain", "exa mple.com", DOMAIN_FORM),
    ("domain", "https://example.com", DOMAIN_FORM),
    ("volumeSizeGb", 0, VOLUME_FORM),
    ("volumeSizeGb", -5, VOLUME_FORM),
    ("volumeSizeGb", 100000, VOLUME_FORM),
    ("volumeSizeGb", "20GB", VOLUME_FORM),
    ("retainVolumeOnDestroy", "yes", "true or false"),
    ("retainVolumeOnDestroy", "", "true or false"),
    ("registryImage", "registry", CONTAINER_IMAGE_FORM),  # no tag
    ("registryImage", "registry:3 .0", CONTAINER_IMAGE_FORM),
    ("registryImage", "Registry:3", CONTAINER_IMAGE_FORM),
    ("registryImage", "localhost:5000/registry", CONTAINER_IMAGE_FORM),  # a port is no tag
    ("nginxImage", "nginx:1.27 alpine", CONTAINER_IMAGE_FORM),
    ("nginxImage", "nginx", CONTAINER_IMAGE_FORM),
    ("nginxImage", "nginx@sha256:1234", CONTAINER_IMAGE_FORM),
    ("tlsKeyAlgorithm", "ED25519", "ECDSA (P-256) or RSA (3072 bits)"),
    ("tlsKeyAlgorithm", "ecdsa", "ECDSA (P-256) or RSA (3072 bits)"),
    ("certValidityHours", 0, CERT_HOURS_FORM),
    ("certValidityHours", 100000, CERT_HOURS_FORM),
    ("certValidityHours", "a year", CERT_HOURS_FORM),
    ("certEarlyRenewalHours", -1, "0 or more and less than certValidityHours"),
    ("certEarlyRenewalHours", 8760, "fewer hours than certValidityHours (8760)"),
    ("certEarlyRenewalHours", 9000, "fewer hours than certValidityHours (8760)"),
    ("sshPublicKeys", ["not a key"], SSH_KEYS_FORM),
    ("sshPublicKeys", ["ssh-ed25519"], SSH_KEYS_FORM),
    ("sshPublicKeys", ["ssh-dss AAAAB3NzaC1kc3MAAACBAP me@old"], SSH_KEYS_FORM),
    # A newline would smuggle a second line into authorized_keys.
    ("sshPublicKeys", [ED25519_KEY + "\nssh-ed25519 AAAAC3Nza evil"], SSH_KEYS_FORM),
    ("sshPublicKeys", ED25519_KEY, SSH_KEYS_FORM),  # not a list
    ("existingVolume", "Registry-Data", EXISTING_VOLUME_FORM),
    ("existingVolume", "1data", EXISTING_VOLUME_FORM),
    ("existingVolume", "a" * 65, EXISTING_VOLUME_FORM),
    ("existingVolume", "506f78a4-e098-11e5-ad9f", EXISTING_VOLUME_FORM),
    ("gcSchedule", "", GC_SCHEDULE_FORM),
    ("gcSchedule", "minutely", GC_SCHEDULE_FORM),  # a read-only window every minute
    ("gcSchedule", "every sunday", GC_SCHEDULE_FORM),
    ("gcSchedule", "Sun 03:00\nExecStart=/bin/evil", GC_SCHEDULE_FORM),  # a unit-file line
    ("gcSchedule", "0 3 * * 0", GC_SCHEDULE_FORM),  # cron, not systemd
    ("gcDeleteUntagged", "yes", "true or false"),
    ("storage", "", STORAGE_FORM),
    ("storage", "s3", STORAGE_FORM),
    ("storage", "Spaces", STORAGE_FORM),
    ("registryCount", 0, "an integer from 1 to 10"),
    ("registryCount", 11, "an integer from 1 to 10"),
    # More than one droplet cannot share a volume.
    ("registryCount", 3, "1 with storage volume (a volume attaches to one droplet)"),
    ("spacesRegion", "nyc1", SPACES_REGION_FORM),  # no Spaces there
    ("spacesRegion", "FRA1", SPACES_REGION_FORM),
    ("spacesBucket", "ab", BUCKET_FORM),
    ("spacesBucket", "My-Bucket", BUCKET_FORM),
    ("spacesBucket", "bucket-", BUCKET_FORM),
    ("spacesBucket", "a" * 64, BUCKET_FORM),
    ("spacesBucket", "my.bucket", BUCKET_FORM),
    ("spacesRedirect", "yes", "true or false"),
    ("users", ["ci", "metrics"], "the metrics user's name (reserved)"),
    ("diskAlertPercent", 100, "an integer percentage from 50 to 99"),
    ("diskAlertPercent", 10, "an integer percentage from 50 to 99"),
    ("alertEmails", ["ops"], "'ops' is not one"),
    ("alertEmails", ["ops@localhost"], "'ops@localhost' is not one"),
    ("alertEmails", ["ops@example.com\nBcc: x@evil.example"], "is not one"),
    ("alertEmails", ["a@example.com", "a@example.com"], "at most 10 distinct"),
    ("alertEmails", [f"u{n}@example.com" for n in range(11)], "at most 10 distinct"),
    ("alertEmails", "ops@example.com", "a list"),
    ("spacesCache", "redis", SPACES_CACHE_FORM),
    ("spacesCache", "", SPACES_CACHE_FORM),
    # One node has nothing to share a cache with.
    ("spacesCache", "valkey", "memory with storage volume"),
    ("publicTls", "yes", "true or false"),
    # No domain (the default): nothing for Let's Encrypt to validate.
    ("publicTls", True, "false, or true with domain set"),
    ("acmeDirectory", "http://acme-v02.api.letsencrypt.org/directory", "starting with https://"),
    ("acmeDirectory", "", "starting with https://"),
    ("acmeDirectory", "https://ca.example/dir?x=1", "starting with https://"),
    ("hubCache", "yes", "true or false"),
    ("hubCachePort", 0, "an integer from 1 to 65535"),
    ("hubCachePort", 5001, "other than 22, 5001, 9443, 9444"),
    ("hubCachePort", 9443, "other than 22, 5001, 9443, 9444"),
    ("hubCacheTtl", "", HUB_CACHE_TTL_FORM),
    ("hubCacheTtl", "7d", HUB_CACHE_TTL_FORM),  # Go durations have no days
    ("hubCacheTtl", "0h", HUB_CACHE_TTL_FORM),  # distribution: never expire, the disk fills
    ("hubCacheTtl", "30s", HUB_CACHE_TTL_FORM),
    ("hubCacheTtl", "8761h", HUB_CACHE_TTL_FORM),
    ("hubCacheTtl", "168h\n  remoteurl: https://evil.example", HUB_CACHE_TTL_FORM),
    ("dockerHubUser", "Alice", DOCKER_ID_FORM),
    ("dockerHubUser", "abc", DOCKER_ID_FORM),
    ("dockerHubUser", "alice bob", DOCKER_ID_FORM),
]


def case_id(case: tuple[str, Any, str]) -> str:
    key, value, _ = case
    return f"{key}={cli_config_value(value)[:24]}"


def assert_rejected_with_one_clear_message(key: str, value: Any, form: str) -> None:
    raw = cli_config_value(value)
    error = settings_error(config(**{key: value}))
    lines = problem_lines(error)
    assert len(lines) == 1, str(error)
    assert lines[0].startswith(f"  {PROJECT}:{key} = {raw!r}: expected "), lines[0]
    assert form in lines[0]


@pytest.mark.parametrize(("key", "value", "form"), BAD_VALUES, ids=map(case_id, BAD_VALUES))
def test_bad_value_fails_with_one_message_naming_key_value_and_form(
    key: str, value: Any, form: str
) -> None:
    assert_rejected_with_one_clear_message(key, value, form)


@pytest.mark.parametrize(
    ("key", "value", "form"),
    [
        ("registryName", "10.0.0.1", NAME_FORM),
        ("domain", "203.0.113.7", DOMAIN_FORM),
    ],
)
def test_ip_address_is_rejected_where_a_dns_name_is_expected(
    key: str, value: Any, form: str
) -> None:
    assert_rejected_with_one_clear_message(key, value, form)


def test_bad_value_table_covers_every_key() -> None:
    # Secret keys have their own tests: their values are never shown.
    assert {key for key, _, _ in BAD_VALUES} == set(CONFIG_KEYS) - set(SECRET_KEYS)
    assert len(BAD_VALUES) >= 30


def test_early_renewal_must_be_shorter_than_a_shortened_validity() -> None:
    error = settings_error(config(certValidityHours=720, certEarlyRenewalHours=720))
    assert problem_lines(error) == [
        f"  {PROJECT}:certEarlyRenewalHours = '720': expected fewer hours than "
        "certValidityHours (720)"
    ]


def test_every_bad_key_is_reported_in_one_error() -> None:
    error = settings_error(config(port=5001, users=["Bad User"], adminCidrs=["10.0.0.1/8"]))
    assert [line.split(" = ")[0].strip() for line in problem_lines(error)] == [
        f"{PROJECT}:port",
        f"{PROJECT}:users",
        f"{PROJECT}:adminCidrs",
    ]
    assert str(error).startswith("Invalid stack configuration:\n")
    assert "pulumi config set" in str(error)


def test_missing_key_is_reported_as_not_set() -> None:
    raw = declared_defaults()
    del raw["region"]
    assert problem_lines(settings_error(raw)) == [
        f"  {PROJECT}:region = (not set): expected a value (Pulumi.yaml declares its default; "
        "use Pulumi CLI 3.120 or newer)"
    ]


def test_settings_error_is_a_run_error_so_pulumi_prints_no_traceback() -> None:
    assert issubclass(SettingsError, pulumi.RunError)


def test_every_parsed_key_is_declared_in_pulumi_yaml_with_a_default() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert set(project["config"]) == set(CONFIG_KEYS)
    assert all("default" in spec and "description" in spec for spec in project["config"].values())


def test_pulumi_yaml_defaults_parse_to_the_documented_settings() -> None:
    assert parse_settings(declared_defaults()) == Settings(
        region="nyc3",
        registry_size="s-1vcpu-2gb",
        client_size="s-1vcpu-1gb",
        image=versions.UBUNTU_IMAGE,
        registry_name="registry.internal",
        port=5043,
        accounts=(Account("ci", "push", ("**",)),),
        password_rotation=0,
        client_count=1,
        admin_cidrs=("0.0.0.0/0", "::/0"),
        allowed_cidrs=(),
        domain=None,
        volume_size_gb=20,
        retain_volume_on_destroy=False,
        registry_image=versions.REGISTRY_IMAGE,
        nginx_image=versions.NGINX_IMAGE,
        tls_key_algorithm="ECDSA",
        cert_validity_hours=8760,
        cert_early_renewal_hours=720,
        ssh_public_keys=(),
        existing_volume=None,
        name_prefix="registry-dev",
        gc_schedule="weekly",
        gc_delete_untagged=False,
        storage="volume",
        registry_count=1,
        spaces_region_setting=None,
        spaces_bucket_setting=None,
        spaces_redirect=False,
        disk_alert_percent=80,
        alert_emails=(),
        spaces_cache="memory",
        public_tls=False,
        acme_directory_setting="https://acme-v02.api.letsencrypt.org/directory",
        hub_cache=False,
        hub_cache_port=5044,
        hub_cache_ttl="168h",
        docker_hub_user=None,
    )


def test_defaults_without_a_domain_use_the_registry_name_and_no_dns_name() -> None:
    settings = parse_settings(declared_defaults())
    assert settings.dns_name is None
    assert settings.client_name == "registry.internal"
    assert settings.address == "registry.internal:5043"


def test_dev_stack_file_parses() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = config(**{key.removeprefix(f"{PROJECT}:"): value for key, value in stack.items()})
    settings = parse_settings(raw)
    assert (settings.region, settings.users) == ("fra1", ("ci", "alice"))


@pytest.mark.parametrize(
    ("key", "value", "field", "parsed"),
    [
        ("port", 443, "port", 443),
        ("port", 65535, "port", 65535),
        ("clientCount", 0, "client_count", 0),
        ("clientCount", 10, "client_count", 10),
        (
            "users",
            ["ci", "alice_2", "bob-the-builder"],
            "users",
            ("ci", "alice_2", "bob-the-builder"),
        ),
        ("users", ["a" * 32], "users", ("a" * 32,)),
        (
            "users",
            ["ci", "viewer:pull:team/*", "ops:admin"],
            "accounts",
            (
                Account("ci", "push", ("**",)),
                Account("viewer", "pull", ("team/*",)),
                Account("ops", "admin", ("**",)),
            ),
        ),
        (
            "users",
            ["ci:push:team/**,base,proj-*/app.x,private-registry/*"],
            "accounts",
            (Account("ci", "push", ("team/**", "base", "proj-*/app.x", "private-registry/*")),),
        ),
        (
            "adminCidrs",
            ["203.0.113.7/32", "2001:db8::/48"],
            "admin_cidrs",
            ("203.0.113.7/32", "2001:db8::/48"),
        ),
        ("allowedCidrs", ["198.51.100.0/24"], "allowed_cidrs", ("198.51.100.0/24",)),
        ("volumeSizeGb", 16384, "volume_size_gb", 16384),
        ("retainVolumeOnDestroy", True, "retain_volume_on_destroy", True),
        ("registryImage", "registry:3.0.0", "registry_image", "registry:3.0.0"),
        (
            "registryImage",
            "docker.io/library/registry:3.0.0",
            "registry_image",
            "docker.io/library/registry:3.0.0",
        ),
        (
            "registryImage",
            "localhost:5000/mirror/registry@sha256:" + "a" * 64,
            "registry_image",
            "localhost:5000/mirror/registry@sha256:" + "a" * 64,
        ),
        ("nginxImage", "nginx:1.27.3-alpine", "nginx_image", "nginx:1.27.3-alpine"),
        ("tlsKeyAlgorithm", "RSA", "tls_key_algorithm", "RSA"),
        ("certEarlyRenewalHours", 8759, "cert_early_renewal_hours", 8759),
        ("sshPublicKeys", [f"  {ED25519_KEY}  "], "ssh_public_keys", (ED25519_KEY,)),
        ("image", "ubuntu-22-04-x64", "image", "ubuntu-22-04-x64"),
        ("existingVolume", "registry-dev-data", "existing_volume", "registry-dev-data"),
        ("existingVolume", "a" * 64, "existing_volume", "a" * 64),
        (
            "existingVolume",
            "506f78a4-e098-11e5-ad9f-000f53306ae1",
            "existing_volume",
            "506f78a4-e098-11e5-ad9f-000f53306ae1",
        ),
        ("gcSchedule", "daily", "gc_schedule", "daily"),
        ("gcSchedule", "Sun *-*-* 03:00:00", "gc_schedule", "Sun *-*-* 03:00:00"),
        ("gcSchedule", "Mon..Fri 02:30", "gc_schedule", "Mon..Fri 02:30"),
        ("gcSchedule", "Sat,Sun *-*-1..7 04:00", "gc_schedule", "Sat,Sun *-*-1..7 04:00"),
        ("gcDeleteUntagged", True, "gc_delete_untagged", True),
        ("storage", "spaces", "storage", "spaces"),
        ("spacesRegion", "ams3", "spaces_region_setting", "ams3"),
        ("spacesBucket", "acme-registry", "spaces_bucket_setting", "acme-registry"),
        ("spacesRedirect", True, "spaces_redirect", True),
        ("diskAlertPercent", 95, "disk_alert_percent", 95),
        (
            "alertEmails",
            ["ops@example.com", "first.last+registry@mail.example.co.uk"],
            "alert_emails",
            ("ops@example.com", "first.last+registry@mail.example.co.uk"),
        ),
        ("spacesCache", "memory", "spaces_cache", "memory"),
        ("publicTls", False, "public_tls", False),
        (
            "acmeDirectory",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
            "acme_directory_setting",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        ),
        (
            "acmeDirectory",
            "https://10.0.0.5:14000/dir",
            "acme_directory_setting",
            "https://10.0.0.5:14000/dir",
        ),
        ("hubCache", True, "hub_cache", True),
        ("hubCachePort", 443, "hub_cache_port", 443),
        ("hubCacheTtl", "72h30m", "hub_cache_ttl", "72h30m"),
        ("hubCacheTtl", "1m", "hub_cache_ttl", "1m"),
        ("hubCacheTtl", "8760h", "hub_cache_ttl", "8760h"),
    ],
)
def test_valid_value_parses(key: str, value: Any, field: str, parsed: Any) -> None:
    assert getattr(parse_settings(config(**{key: value})), field) == parsed


def test_domain_gives_a_dns_name_that_clients_use() -> None:
    settings = parse_settings(config(domain="example.com", port=443))
    assert settings.domain == "example.com"
    assert settings.dns_name == "registry.example.com"
    assert settings.client_name == "registry.example.com"
    assert settings.address == "registry.example.com:443"


SPACES = {"storage": "spaces", "region": "fra1"}


def test_spaces_mode_defaults_to_the_droplets_region_and_a_bucket_named_after_the_stack() -> None:
    settings = parse_settings(config(**SPACES, registryCount=3), stack="prod")
    assert (settings.spaces, settings.registry_count) == (True, 3)
    assert settings.spaces_region == "fra1"
    # The program appends random hex: bucket names are shared with every Spaces customer.
    assert (settings.spaces_bucket_setting, settings.spaces_bucket_prefix) == (
        None,
        "registry-prod-images",
    )
    assert settings.registry_droplet_names() == [
        "registry-prod-registry-0",
        "registry-prod-registry-1",
        "registry-prod-registry-2",
    ]
    assert parse_settings(config(**SPACES, spacesRegion="ams3")).spaces_region == "ams3"


def test_one_registry_droplet_keeps_its_name_in_either_mode() -> None:
    for overrides in ({}, SPACES):
        assert parse_settings(config(**overrides)).registry_droplet_names() == [
            "registry-dev-registry"
        ]


@pytest.mark.parametrize(
    ("overrides", "key", "form"),
    [
        ({"registryCount": 2}, "registryCount", "set storage to spaces for more registry"),
        (
            {**SPACES, "existingVolume": "registry-dev-data"},
            "existingVolume",
            "empty with storage spaces",
        ),
        (
            {"storage": "spaces", "region": "nyc1"},
            "spacesRegion",
            "a region with Spaces (ams3, atl1, blr1, fra1, nyc3, sfo2, sfo3, sgp1, syd1): "
            "region nyc1 has none",
        ),
        ({"spacesCache": "valkey"}, "spacesCache", "set storage to spaces for a shared valkey"),
    ],
    ids=["count-without-spaces", "volume-with-spaces", "region-without-spaces", "valkey"],
)
def test_storage_combinations_that_cannot_work_fail_naming_the_key(
    overrides: Mapping[str, Any], key: str, form: str
) -> None:
    lines = problem_lines(settings_error(config(**overrides)))
    assert len(lines) == 1 and lines[0].startswith(f"  {PROJECT}:{key} = ")
    assert form in lines[0]


@pytest.mark.parametrize(
    ("overrides", "key", "form"),
    [
        ({"publicTls": True}, "publicTls", "false, or true with domain set"),
        (
            {"publicTls": True, "domain": "example.com", "storage": "spaces", "registryCount": 2},
            "publicTls",
            "false with storage spaces",
        ),
        (
            {"publicTls": True, "domain": "example.com", "port": 80},
            "port",
            "a port other than 80 with publicTls",
        ),
    ],
    ids=["no-domain", "spaces", "port-80"],
)
def test_public_tls_combinations_that_cannot_work_fail_naming_the_key(
    overrides: Mapping[str, Any], key: str, form: str
) -> None:
    lines = problem_lines(settings_error(config(**overrides)))
    assert len(lines) == 1 and lines[0].startswith(f"  {PROJECT}:{key} = "), lines
    assert form in lines[0]


def test_public_tls_with_a_domain_asks_the_configured_acme_directory() -> None:
    settings = parse_settings(config(publicTls=True, domain="example.com"))
    assert settings.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert settings.dns_name == "registry.example.com"
    assert parse_settings(config(domain="example.com")).acme_directory is None


# -- through the real program ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"port": 5001}, "port"),
        ({"users": ["ci:owner"]}, "users"),
        ({"users": ["ci:push:team//x"]}, "users"),
        ({"adminCidrs": ["203.0.113.0/33"]}, "adminCidrs"),
        ({"domain": "not a domain"}, "domain"),
        ({"clientCount": -1}, "clientCount"),
        ({"registryCount": 3}, "registryCount"),
        ({"spacesCache": "valkey"}, "spacesCache"),
        ({"publicTls": True}, "publicTls"),
        ({"hubCache": True, "hubCachePort": 5043}, "hubCachePort"),
        ({"dockerHubUser": "alice"}, "dockerHubToken"),
        # Set without --secret: the CLI hands it over as a plain value.
        ({"dockerHubUser": "alice", "dockerHubToken": "dckr_pat_" + "x1" * 12}, "dockerHubToken"),
    ],
    ids=[
        "port",
        "users-role",
        "users-scope",
        "adminCidrs",
        "domain",
        "clientCount",
        "count",
        "valkey-without-spaces",
        "public-tls-without-domain",
        "hub-cache-port",
        "docker-hub-user-without-token",
        "docker-hub-token-in-plain-text",
    ],
)
def test_program_with_bad_config_raises_settings_error_before_any_resource(
    run_failing: Callable[[Mapping[str, Any]], FailedRun], overrides: Mapping[str, Any], key: str
) -> None:
    failed = run_failing(overrides)
    assert isinstance(failed.error, SettingsError), repr(failed.error)
    assert [line.split(" = ")[0].strip() for line in problem_lines(failed.error)] == [
        f"{PROJECT}:{key}"
    ]
    assert failed.registrations == {}


@pytest.mark.parametrize(
    ("scope", "repository", "covered"),
    [
        ("team/*", "team/app", True),
        ("team/*", "team/a.b-c_d", True),
        ("team/*", "team", False),
        ("team/*", "team/app/sub", False),
        ("team/*", "teams/app", False),
        ("team/*", "other/team/app", False),
        ("team/**", "team/app", True),
        ("team/**", "team/app/sub", True),
        ("team/**", "team", False),
        ("proj-*/app", "proj-x/app", True),
        ("proj-*/app", "proj-x/app2", False),
        ("base", "base", True),
        ("base", "base/x", False),
        ("a.b", "axb", False),  # "." is literal
        ("**", "anything/at/all", True),
    ],
)
def test_scope_patterns_cover_the_documented_repositories(
    scope: str, repository: str, covered: bool
) -> None:
    account = Account("ci", "push", (scope,))
    assert account.may("read", repository) is covered
    assert account.may("write", repository) is covered
    assert not account.may("delete", repository)


def test_roles_grant_read_write_and_delete_in_order() -> None:
    assert [
        Account("u", role).may(action, "x/y")
        for role in ("pull", "push", "admin")
        for action in ("read", "write", "delete")
    ] == [True, False, False, True, True, False, True, True, True]


def test_plain_user_list_keeps_working_as_push_users_of_every_repository() -> None:
    settings = parse_settings(config(users=["ci", "alice"]))
    assert settings.users == ("ci", "alice")
    assert all(account.role == "push" and account.unscoped for account in settings.accounts)
    assert settings.proof_user == "ci"


def test_proof_user_is_the_first_who_may_push_the_proof_repository() -> None:
    settings = parse_settings(config(users=["viewer:pull", "team:push:team/*", "ci:push"]))
    assert settings.proof_user == "ci"
    assert settings.users == ("viewer", "team", "ci")


def test_clients_need_a_user_who_may_push_their_proof() -> None:
    users = ["viewer:pull", "team:push:team/*"]
    error = settings_error(config(users=users))
    assert problem_lines(error) == [
        (
            f"  {PROJECT}:users = {cli_config_value(users)!r}: expected a push or admin user whose "
            "scopes include private-registry/proof (the client hosts push their proof there), or "
            "clientCount 0"
        )
    ]
    assert parse_settings(config(users=users, clientCount=0)).users == ("viewer", "team")


@pytest.mark.parametrize(
    "schedule",
    [
        "weekly",
        "daily",
        "Sun *-*-* 03:00:00",
        "Mon..Fri 02:30",
        "Sat,Sun *-*-1..7 04:00",
        "*-*-* 00/6:00",
    ],
)
def test_accepted_gc_schedules_are_valid_for_systemd(schedule: str) -> None:
    assert parse_settings(config(gcSchedule=schedule)).gc_schedule == schedule
    result = subprocess.run(
        ["systemd-analyze", "calendar", schedule], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# -- the Docker Hub cache ------------------------------------------------------------------

TOKEN = "dckr_pat_" + "x1" * 12


def test_hub_cache_port_may_not_be_the_registry_port_when_the_cache_is_on() -> None:
    lines = problem_lines(settings_error(config(hubCache=True, hubCachePort=5043)))
    assert lines == [
        f"  {PROJECT}:hubCachePort = '5043': expected a port other than port (5043): the cache "
        "serves at the root path of its own port, as a Docker registry mirror must"
    ]
    # Off, the cache's port is unused and collides with nothing.
    assert not parse_settings(config(hubCachePort=5043)).hub_cache


def test_hub_cache_needs_storage_volume() -> None:
    lines = problem_lines(
        settings_error(config(hubCache=True, storage="spaces", spacesRegion="ams3"))
    )
    assert len(lines) == 1 and lines[0].startswith(f"  {PROJECT}:hubCache = 'true': expected ")
    assert "false with storage spaces" in lines[0]


def test_hub_cache_address_is_the_clients_name_on_the_cache_port() -> None:
    settings = parse_settings(config(hubCache=True, domain="example.com"))
    assert settings.hub_cache_address == "registry.example.com:5044"


def test_docker_hub_user_and_token_go_together_and_the_token_is_never_shown() -> None:
    user_only = problem_lines(settings_error(config(dockerHubUser="alice")))
    assert user_only == [
        f"  {PROJECT}:dockerHubToken = [secret]: expected set together with dockerHubUser, or "
        "both empty (the cache pulls anonymously)"
    ]
    token_only = settings_error({**config(), "dockerHubToken": TOKEN})
    assert problem_lines(token_only)[0].startswith(f"  {PROJECT}:dockerHubToken = [secret]")
    bad = settings_error({**config(dockerHubUser="alice"), "dockerHubToken": "has a space"})
    assert "8 to 512 printable characters" in str(bad)
    for error in (token_only, bad):
        assert TOKEN not in str(error) and "has a space" not in str(error)
    settings = parse_settings({**config(dockerHubUser="alice"), "dockerHubToken": TOKEN})
    assert settings.docker_hub_user == "alice"
    assert TOKEN not in repr(settings)


def test_a_docker_hub_token_stored_in_plain_text_is_refused() -> None:
    raw = {**config(dockerHubUser="alice"), "dockerHubToken": TOKEN}
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw, plain_secrets=["dockerHubToken"])
    assert problem_lines(caught.value) == [
        f"  {PROJECT}:dockerHubToken = [secret]: expected an encrypted value: `pulumi config set "
        "--secret dockerHubToken <token>` (it was stored in plain text in the stack file: remove "
        "it there and rotate it)"
    ]
    assert TOKEN not in str(caught.value)
