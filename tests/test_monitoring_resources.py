"""DigitalOcean monitoring as resources, under the provider-like mocks: the uptime check on the
registry endpoint, alerts only with `alertEmails`, and one project holding the stack's
droplets and its own volume (see components/monitoring.py for the provider facts)."""

from __future__ import annotations

import uuid

import pytest

from components.monitoring import check_regions
from components.settings import REGIONS
from tests.harness import ProgramRun, Registration, run_program
from tests.lifecycle import schema
from tests.mocks import ProviderMocks

pytestmark = pytest.mark.program

EMAILS = ["ops@example.com", "oncall@example.org"]


def only(run: ProgramRun, type_token: str) -> list[Registration]:
    return run.of_type(type_token)


def inputs_by_name(run: ProgramRun, type_token: str) -> dict[str, dict[str, object]]:
    return {registration.name: registration.inputs for registration in run.of_type(type_token)}


@pytest.fixture(scope="module")
def default_run() -> ProgramRun:
    return run_program()


@pytest.fixture(scope="module")
def alerting_run() -> ProgramRun:
    return run_program(
        overrides={
            "alertEmails": EMAILS,
            "allowedCidrs": ["0.0.0.0/0"],
            "diskAlertPercent": 85,
            "clientCount": 2,
        }
    )


def test_uptime_check_asks_the_public_health_endpoint_and_is_off_while_the_firewall_blocks_it(
    default_run: ProgramRun,
) -> None:
    (check,) = only(default_run, schema.UPTIME_CHECK)
    ip = default_run.outputs["registryPublicIp"]
    assert check.inputs == {
        "name": "registry-dev-registry",
        "type": "https",
        "target": f"https://{ip}:5043/healthz",
        "regions": ["eu_west", "us_east"],  # the dev stack is in fra1
        # allowedCidrs is empty: DigitalOcean's checkers cannot pass the firewall.
        "enabled": False,
    }
    assert only(default_run, schema.UPTIME_ALERT) == []
    assert only(default_run, schema.MONITOR_ALERT) == []


def test_with_alert_emails_every_alert_mails_them_about_the_registry_host(
    alerting_run: ProgramRun,
) -> None:
    (check,) = only(alerting_run, schema.UPTIME_CHECK)
    assert check.inputs["enabled"] is True  # the registry port is open to everyone
    uptime = inputs_by_name(alerting_run, schema.UPTIME_ALERT)
    assert set(uptime) == {"monitoring-down", "monitoring-certificate"}
    for alert in uptime.values():
        assert alert["checkId"] == check.id
        assert alert["notifications"] == [{"emails": EMAILS}]
        assert alert["period"] in ("2m", "3m", "5m", "10m", "15m", "30m", "1h")
    assert uptime["monitoring-down"]["type"] == "down_global"
    certificate = uptime["monitoring-certificate"]
    assert (certificate["type"], certificate["comparison"], certificate["threshold"]) == (
        "ssl_expiry",
        "less_than",
        14,
    )
    droplet_id = alerting_run.named("registry-droplet").id
    monitor_alerts = inputs_by_name(alerting_run, schema.MONITOR_ALERT).values()
    droplet_alerts = {alert["type"]: alert for alert in monitor_alerts}
    assert {kind: alert["value"] for kind, alert in droplet_alerts.items()} == {
        "v1/insights/droplet/cpu": 90,
        "v1/insights/droplet/memory_utilization_percent": 90,
        "v1/insights/droplet/disk_utilization_percent": 85,  # diskAlertPercent
    }
    for alert in droplet_alerts.values():
        assert alert["entities"] == [droplet_id]  # the registry host, not the clients
        assert alert["compare"] == "GreaterThan"
        assert alert["window"] in ("5m", "10m", "30m", "1h")
        assert alert["alerts"] == {"emails": EMAILS}
        assert alert["enabled"] is True


def test_the_project_is_named_after_the_stack_and_holds_its_droplets_and_volume(
    alerting_run: ProgramRun,
) -> None:
    (project,) = only(alerting_run, schema.PROJECT)
    assert project.inputs["name"] == "registry-dev"
    owned = [
        alerting_run.named(name).outputs[key]
        for name, key in (
            ("registry-droplet", "dropletUrn"),
            ("registry-data", "volumeUrn"),
            ("client-0-droplet", "dropletUrn"),
            ("client-1-droplet", "dropletUrn"),
        )
    ]
    assert all(urn.startswith("do:") for urn in owned)
    assert sorted(project.inputs["resources"]) == sorted(owned)


def test_an_adopted_volume_stays_out_of_the_stacks_project() -> None:
    mocks = ProviderMocks()
    volume_id = str(uuid.uuid4())
    mocks.volumes[volume_id] = {
        "name": "registry-images",
        "region": "fra1",
        "size": 20,
        "urn": f"do:volume:{volume_id}",
        "description": "",
        "filesystemType": "ext4",
        "filesystemLabel": "registry-data",
        "dropletIds": [],
    }
    run = run_program(mocks=mocks, overrides={"existingVolume": volume_id})
    (project,) = only(run, schema.PROJECT)
    assert project.inputs["resources"] == [
        run.named("registry-droplet").outputs["dropletUrn"],
        run.named("client-0-droplet").outputs["dropletUrn"],
    ]


def test_a_domain_makes_the_uptime_check_ask_the_dns_name() -> None:
    run = run_program(overrides={"domain": "example.com"})
    (check,) = only(run, schema.UPTIME_CHECK)
    assert check.inputs["target"] == "https://registry.example.com:5043/healthz"


@pytest.mark.parametrize(
    ("region", "regions"),
    [
        ("nyc3", ["us_east", "eu_west"]),
        ("sfo3", ["us_west", "eu_west"]),
        ("sgp1", ["se_asia", "eu_west"]),
        ("fra1", ["eu_west", "us_east"]),
    ],
)
def test_checkers_are_the_nearest_region_and_one_across_an_ocean(
    region: str, regions: list[str]
) -> None:
    assert check_regions(region) == regions


def test_every_region_has_a_nearest_checker() -> None:
    for region in REGIONS:
        assert len(check_regions(region)) == 2
