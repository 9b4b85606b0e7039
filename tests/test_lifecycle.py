"""Day 2 under the engine-like planner: what `pulumi up` and `pulumi destroy` do after the first
`up`, step by step, and what runs on the hosts (tests/lifecycle/planner.py).

Each path runs the real program twice under the provider-like mocks (the second run on a copy of
the engine state the first one left) and plans the steps between them. The host scripts' own
effects (mounting, growing, releasing a loop device) are tested with the scripts themselves;
these tests prove which of them run, on which host, and in which order.
"""

from __future__ import annotations

import copy
import datetime
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from components.manifest import REGISTRY_LAYOUT
from components.remote import DROPLET_DELETE_TIMEOUT
from components.rendering.commands import script_command
from components.rendering.templates import script
from components.settings import SettingsError, parse_settings
from tests.harness import ProgramRun, RecordingMonitor, Registration, run_program, stack_config
from tests.lifecycle import schema
from tests.lifecycle.planner import Action, Plan, Step, plan_destroy, plan_up
from tests.mocks import ProviderMocks

pytestmark = pytest.mark.program

VOLUME_NAME = "registry-dev-data"  # the dev stack's own volume
ATTACHMENT = "registry-data-attachment"
RELEASE = "registry-release-data-volume"
MOUNT = "registry-mount-data-volume"
ACTIVATE = "registry-activate"
RELEASE_COMMAND = script_command(REGISTRY_LAYOUT.data_mount)
EXTRA_SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfDS+k8D2XPRGm1Z0liQ0SlrtlHltoCNwj2ia7m/rvV me@laptop"
)
# The dev stack's data and hosts: an up that touches none of these keeps the registry serving.
DATA_PATH = {"registry-data", ATTACHMENT, RELEASE, "registry-droplet"}


@dataclass(frozen=True)
class Deployed:
    """A stack after an `up`: the engine (and account) state and the program run it recorded."""

    mocks: ProviderMocks
    run: ProgramRun


def up(
    previous: Deployed | None,
    config: Mapping[str, Any] | None = None,
    account: ProviderMocks | None = None,
) -> tuple[Deployed, Plan]:
    """`pulumi up` with config overrides on top of the dev stack, from `previous`, or from an
    empty stack (in a fresh account, or in `account` as a destroy left it)."""
    mocks = copy.deepcopy(previous.mocks) if previous else account or ProviderMocks()
    run = run_program(mocks=mocks, overrides=config)
    return Deployed(mocks, run), plan_up(previous.run if previous else None, run, now=mocks.now)


def destroy(deployed: Deployed) -> tuple[ProviderMocks, Plan]:
    """`pulumi destroy`: the plan, and the account afterwards (what was not deleted stays)."""
    plan = plan_destroy(deployed.run)
    deleted = {
        step.state.id for step in plan.steps if step.type == schema.VOLUME and step.provider_call
    }
    return deployed.mocks.after_destroy(deleted), plan


def before(plan: Plan, first: tuple[str, str], then: tuple[str, str]) -> bool:
    """Whether step `first` (name, action) comes before step `then`."""
    return plan.index(first[0], first[1]) < plan.index(then[0], then[1])  # type: ignore[arg-type]


def only_step(plan: Plan, name: str, action: Action | None = None) -> Step:
    """The step of `name` (with `action`: a replacement has two steps)."""
    steps = [step for step in plan.of(name) if action is None or step.action == action]
    assert len(steps) == 1, plan.summary()
    return steps[0]


def registered(run: ProgramRun, name: str) -> Registration:
    return run.named(name)


@pytest.fixture(scope="module")
def first_up() -> tuple[Deployed, Plan]:
    return up(None)


@pytest.fixture(scope="module")
def deployed(first_up: tuple[Deployed, Plan]) -> Deployed:
    return first_up[0]


# -- first up and a no-op up -----------------------------------------------------------------


def test_first_up_creates_everything_and_mounts_after_attaching(
    first_up: tuple[Deployed, Plan],
) -> None:
    deployed, plan = first_up
    custom = {r.name for r in deployed.run.resources.values() if r.custom}
    assert {step.action for step in plan.steps} == {"create"}
    assert {step.name for step in plan.steps} == custom
    assert before(plan, ("registry-data", "create"), (ATTACHMENT, "create"))
    assert before(plan, (ATTACHMENT, "create"), (MOUNT, "create"))
    assert before(plan, (MOUNT, "create"), (ACTIVATE, "create"))
    assert before(plan, (ACTIVATE, "create"), ("client-0-verify-registry", "create"))
    # The release command runs nothing when it is created: only its delete does.
    assert only_step(plan, RELEASE).host_command is None
    ran = [name for name, _, _ in plan.host_commands()]
    assert len(ran) == len(set(ran)) == len(deployed.run.commands()) - 1


def test_an_unchanged_up_runs_nothing(deployed: Deployed) -> None:
    again, plan = up(deployed)
    assert plan.steps == []
    ids = {r.urn: r.id for r in deployed.run.resources.values()}
    assert {r.urn: r.id for r in again.run.resources.values()} == ids


# -- users -----------------------------------------------------------------------------------


def test_adding_a_user_rewrites_htpasswd_and_keeps_the_data_path(deployed: Deployed) -> None:
    _, plan = up(deployed, {"users": ["ci", "alice", "bob"]})
    assert plan.names("create") == {"credentials-bob-password", "credentials-bob-salt"}
    assert "registry-file-htpasswd" in plan.names("update")
    assert ACTIVATE in plan.names("replace")  # the files changed: activation re-runs
    assert plan.names("delete") == set()
    assert not {step.name for step in plan.steps} & DATA_PATH


def test_removing_a_user_deletes_its_password_and_rewrites_htpasswd(deployed: Deployed) -> None:
    after, plan = up(deployed, {"users": ["ci"]})
    assert plan.names("delete") == {"credentials-alice-password", "credentials-alice-salt"}
    assert "registry-file-htpasswd" in plan.names("update")
    htpasswd = registered(after.run, "registry-file-htpasswd").inputs["stdin"]
    assert htpasswd.startswith("ci:") and "alice" not in htpasswd
    assert not {step.name for step in plan.steps} & DATA_PATH


def test_rotating_passwords_replaces_them_and_reproves_the_clients(deployed: Deployed) -> None:
    after, plan = up(deployed, {"passwordRotation": 1})
    assert {"credentials-ci-password", "credentials-alice-password"} <= plan.names("replace")
    assert {"registry-file-htpasswd", "client-0-file-login-password"} <= plan.names("update")
    assert before(plan, (ACTIVATE, "replace"), ("client-0-verify-registry", "replace"))
    old = registered(deployed.run, "credentials-ci-password").outputs["result"]
    assert registered(after.run, "credentials-ci-password").outputs["result"] != old
    assert not {step.name for step in plan.steps} & DATA_PATH


# -- SSH keys (defect 4) ---------------------------------------------------------------------


def test_adding_an_ssh_key_writes_it_on_every_host(deployed: Deployed) -> None:
    _, plan = up(deployed, {"sshPublicKeys": [EXTRA_SSH_KEY]})
    for name in ("registry-extra-ssh-keys", "client-0-extra-ssh-keys"):
        step = only_step(plan, name)
        assert step.action == "update" and step.host_command is not None
        assert step.state.inputs["stdin"] == EXTRA_SSH_KEY + "\n"
    assert {step.name for step in plan.steps} == {
        "registry-extra-ssh-keys",
        "client-0-extra-ssh-keys",
    }


def test_removing_the_last_ssh_key_revokes_it(deployed: Deployed) -> None:
    with_key, _ = up(deployed, {"sshPublicKeys": [EXTRA_SSH_KEY]})
    _, plan = up(with_key, {"sshPublicKeys": []})
    for name in ("registry-extra-ssh-keys", "client-0-extra-ssh-keys"):
        step = only_step(plan, name)
        # The command runs and writes an empty authorized_keys2 (stdin is the new content).
        assert step.action == "update", plan.summary()
        assert step.host_command == registered(with_key.run, name).inputs["create"]
        assert step.state.inputs["stdin"] == ""


def test_the_ssh_keys_file_is_cleared_when_its_command_is_deleted(deployed: Deployed) -> None:
    keys = registered(deployed.run, "registry-extra-ssh-keys")
    assert keys.inputs["delete"] == (
        "if [ -e /root/.ssh/authorized_keys2 ]; then : > /root/.ssh/authorized_keys2; fi"
    )


# -- the data volume: grow (defect 3), release before detach (defect 2) ----------------------


def test_growing_the_volume_regrows_the_filesystem_after_the_resize(deployed: Deployed) -> None:
    _, plan = up(deployed, {"volumeSizeGb": 40})
    volume = only_step(plan, "registry-data")
    assert (volume.action, volume.changed) == ("update", frozenset({"size"}))
    mount = only_step(plan, MOUNT, "replace")
    assert mount.host_command == script_command(
        VOLUME_NAME, REGISTRY_LAYOUT.data_mount, REGISTRY_LAYOUT.data_dir
    )
    # The old mount command is dropped; it has no delete command, so nothing runs.
    assert only_step(plan, MOUNT, "delete-replaced").host_command is None
    assert mount.state.inputs["stdin"] == script("mount-data-volume.sh")
    assert before(plan, ("registry-data", "update"), (MOUNT, "replace"))
    # No detach, no restart: ext4 grows online.
    assert {step.name for step in plan.steps} == {"registry-data", MOUNT}


def release_steps(plan: Plan) -> list[Step]:
    return [step for step in plan.steps if step.host_command == RELEASE_COMMAND]


def test_destroy_releases_the_volume_before_detaching_it(deployed: Deployed) -> None:
    plan = plan_destroy(deployed.run)
    [release] = release_steps(plan)
    assert release.name == RELEASE and release.provider_call
    assert release.state.inputs["stdin"] == script("release-data-volume.sh")
    assert release.host == deployed.run.outputs["registryPublicIp"]
    assert before(plan, (RELEASE, "delete"), (ATTACHMENT, "delete"))
    assert before(plan, (ATTACHMENT, "delete"), ("registry-droplet", "delete"))
    assert before(plan, (ATTACHMENT, "delete"), ("registry-data", "delete"))


def test_replacing_the_registry_droplet_releases_before_detach_and_mounts_the_same_volume(
    deployed: Deployed,
) -> None:
    after, plan = up(deployed, {"image": "ubuntu-22-04-x64"})
    old_ip = deployed.run.outputs["registryPublicIp"]
    new_ip = after.run.outputs["registryPublicIp"]
    assert new_ip != old_ip
    [release] = release_steps(plan)
    assert (release.action, release.host) == ("delete-replaced", old_ip)
    assert before(plan, ("registry-droplet", "replace"), (RELEASE, "delete-replaced"))
    assert before(plan, (RELEASE, "delete-replaced"), (ATTACHMENT, "delete-replaced"))
    assert before(plan, (ATTACHMENT, "delete-replaced"), (ATTACHMENT, "replace"))
    assert before(plan, (ATTACHMENT, "replace"), (MOUNT, "replace"))
    assert before(plan, (MOUNT, "replace"), (ACTIVATE, "replace"))
    assert before(plan, (ACTIVATE, "replace"), ("registry-droplet", "delete-replaced"))
    mount = only_step(plan, MOUNT, "replace")
    assert mount.host == new_ip
    assert mount.host_command == script_command(
        VOLUME_NAME, REGISTRY_LAYOUT.data_mount, REGISTRY_LAYOUT.data_dir
    )
    old_volume = registered(deployed.run, "registry-data").id
    assert registered(after.run, ATTACHMENT).inputs["volumeId"] == old_volume
    assert plan.of("registry-data") == []


def test_switching_the_volume_releases_the_old_one_and_restarts_on_the_new_one(
    deployed: Deployed,
) -> None:
    mocks = copy.deepcopy(deployed.mocks)
    other = account_volume(mocks, "registry-images", "fra1", 50)
    after, plan = up(Deployed(mocks, deployed.run), {"existingVolume": "registry-images"})
    [release] = release_steps(plan)
    assert release.host == deployed.run.outputs["registryPublicIp"]
    assert before(plan, (RELEASE, "delete-replaced"), (ATTACHMENT, "delete-replaced"))
    assert before(plan, (ATTACHMENT, "replace"), (MOUNT, "replace"))
    assert before(plan, (MOUNT, "replace"), (ACTIVATE, "replace"))  # the registry starts again
    assert only_step(plan, MOUNT, "replace").host_command == script_command(
        "registry-images", REGISTRY_LAYOUT.data_mount, REGISTRY_LAYOUT.data_dir
    )
    assert registered(after.run, ATTACHMENT).inputs["volumeId"] == other
    # The stack's own volume goes, after it is detached.
    assert before(plan, (ATTACHMENT, "delete-replaced"), ("registry-data", "delete"))
    assert plan.of("registry-droplet") == []


# -- region (volumes cannot move) ------------------------------------------------------------


def test_a_region_change_is_refused_before_anything_changes(deployed: Deployed) -> None:
    mocks = copy.deepcopy(deployed.mocks)
    monitor = RecordingMonitor(mocks)
    with pytest.raises(SettingsError) as refused:
        run_program(mocks=mocks, overrides={"region": "nyc3"}, monitor=monitor)
    message = str(refused.value)
    assert "private-registry:region" in message and "registry-dev-data is in fra1" in message
    assert "Set region back to fra1" in message
    touched = [
        r.name
        for r in monitor.registrations.values()
        if r.custom and r.inputs.get("region") == "nyc3" and r.type != schema.VOLUME
    ]  # the volume's region change is ignored
    assert touched == []
    volume = next(r for r in monitor.registrations.values() if r.type == schema.VOLUME)
    assert volume.id == registered(deployed.run, "registry-data").id
    assert volume.outputs["region"] == "fra1"


def test_adopting_a_volume_in_another_region_is_refused_with_both_regions(
    deployed: Deployed,
) -> None:
    mocks = copy.deepcopy(deployed.mocks)
    account_volume(mocks, "images-in-london", "lon1", 20)
    with pytest.raises(
        SettingsError,
        match="existingVolume 'images-in-london' is in lon1, but private-registry:region is fra1",
    ):
        run_program(mocks=mocks, overrides={"existingVolume": "images-in-london"})


# -- clients ---------------------------------------------------------------------------------


def test_client_count_one_to_three_to_zero_touches_only_clients(deployed: Deployed) -> None:
    three, grow = up(deployed, {"clientCount": 3})
    # The stack's DigitalOcean project takes the new droplets in, and lets the old ones go.
    assert [step.action for step in grow.steps if step.type == schema.PROJECT] == ["update"]
    client_steps = [step for step in grow.steps if step.type != schema.PROJECT]
    assert {step.action for step in client_steps} == {"create"}
    assert {step.name.split("-")[1] for step in client_steps} == {"1", "2"}
    _, shrink = up(three, {"clientCount": 0})
    assert [step.action for step in shrink.steps if step.type == schema.PROJECT] == ["update"]
    client_steps = [step for step in shrink.steps if step.type != schema.PROJECT]
    assert {step.action for step in client_steps} == {"delete"}
    assert {step.name.split("-")[1] for step in client_steps} == {"0", "1", "2"}
    for index in range(3):
        droplet = shrink.index(f"client-{index}-droplet", "delete")
        for step in shrink.steps:
            if step.name.startswith(f"client-{index}-") and step.type == schema.COMMAND:
                # Deleted with their droplet: no SSH to a host that is going away.
                assert not step.provider_call and shrink.index(step.name) < droplet


# -- certificate renewal ---------------------------------------------------------------------


def test_certificate_renewal_reissues_and_replaces_the_served_certificate(
    deployed: Deployed,
) -> None:
    mocks = copy.deepcopy(deployed.mocks)
    settings = parse_settings(
        {key.split(":", 1)[1]: value for key, value in stack_config().items()}
    )
    mocks.advance_clock(
        datetime.timedelta(
            hours=settings.cert_validity_hours - settings.cert_early_renewal_hours + 1
        )
    )
    after, plan = up(Deployed(mocks, deployed.run))
    only_step(plan, "registry-tls-cert", "replace")
    assert plan.of("ca-cert") == []  # the CA is not due yet
    assert "registry-file-server-cert" in plan.names("update")
    assert before(plan, ("registry-file-server-cert", "update"), (ACTIVATE, "replace"))
    old_pem = registered(deployed.run, "registry-tls-cert").outputs["certPem"]
    assert registered(after.run, "registry-tls-cert").outputs["certPem"] != old_pem
    assert not {step.name for step in plan.steps} & DATA_PATH


# -- destroy (defects 1 and 2), keep the volume and come back (defect 7) ---------------------


ACME_COMMANDS = {"registry-serve-certificate", "registry-issue-certificate"}
ACME_FILES = {"registry-file-acme-script", "registry-file-acme-service", "registry-file-acme-timer"}
KEPT = {"registry-droplet", "registry-data", ATTACHMENT, "client-0-droplet"}


def test_switching_to_public_tls_and_back_keeps_the_hosts_and_the_data(
    deployed: Deployed,
) -> None:
    """private -> public: the ACME files, certbot, a certificate served before the reload and
    the issuance after it; public -> private: nginx back on the private certificate (the files
    of the same update), then the timer disabled. No droplet, volume or attachment changes."""
    private = {"domain": "example.com"}
    with_domain, _ = up(deployed, private)
    public, on = up(with_domain, {**private, "publicTls": True})
    assert on.names("create") == ACME_COMMANDS | ACME_FILES, on.summary()
    assert not KEPT & {step.name for step in on.steps}, on.summary()
    for name in ("network-server-firewall", "registry-file-nginx-conf", "registry-file-compose"):
        assert only_step(on, name).action == "update", on.summary()
    install = only_step(on, "registry-install-packages")
    assert install.host_command is not None and "certbot" in install.host_command
    activate = only_step(on, ACTIVATE, "replace")
    assert activate.host_command is not None
    assert before(on, ("registry-serve-certificate", "create"), (ACTIVATE, "replace"))
    assert before(on, (ACTIVATE, "replace"), ("registry-issue-certificate", "create"))

    _, off = up(public, {**private, "publicTls": False})
    assert off.names("delete") == ACME_COMMANDS | ACME_FILES, off.summary()
    assert not KEPT & {step.name for step in off.steps}, off.summary()
    disable = only_step(off, "registry-issue-certificate", "delete")
    assert disable.provider_call
    assert disable.host_command == "systemctl disable --now registry-acme.timer"
    assert only_step(off, "registry-file-nginx-conf").action == "update"
    assert before(off, (ACTIVATE, "replace"), ("registry-issue-certificate", "delete"))
    # The other ACME commands run nothing when deleted (their files stay, unused).
    for name in (ACME_COMMANDS | ACME_FILES) - {"registry-issue-certificate"}:
        assert only_step(off, name, "delete").host_command is None, name


def test_destroy_deletes_everything_it_made_and_no_vpc(deployed: Deployed) -> None:
    plan = plan_destroy(deployed.run)
    custom = [r.urn for r in deployed.run.resources.values() if r.custom]
    assert sorted(step.state.urn for step in plan.steps) == sorted(custom)
    assert all(step.type != schema.VPC for step in plan.steps)
    # Remote commands do not reach for deleted hosts, except the release, which must run.
    runs_on_hosts = [step.name for step in plan.steps if step.host_command is not None]
    assert runs_on_hosts == [RELEASE]
    volume = only_step(plan, "registry-data")
    assert volume.provider_call  # retainVolumeOnDestroy is false by default


def test_destroy_keeping_the_volume_then_up_adopting_it(deployed: Deployed) -> None:
    kept_up, _ = up(deployed, {"retainVolumeOnDestroy": True})
    volume_id = registered(kept_up.run, "registry-data").id
    account, plan = destroy(kept_up)
    assert not only_step(plan, "registry-data").provider_call
    assert volume_id in account.volumes
    back, again = up(None, {"existingVolume": VOLUME_NAME}, account=copy.deepcopy(account))
    assert registered(back.run, ATTACHMENT).inputs["volumeId"] == volume_id
    assert back.run.of_type(schema.VOLUME) == []  # adopted: read, never owned
    assert before(again, (ATTACHMENT, "create"), (MOUNT, "create"))
    assert only_step(again, MOUNT).host_command == script_command(
        VOLUME_NAME, REGISTRY_LAYOUT.data_mount, REGISTRY_LAYOUT.data_dir
    )
    # Adopted by id works the same, and a later destroy leaves the volume alone.
    by_id, _ = up(None, {"existingVolume": volume_id}, account=copy.deepcopy(account))
    assert registered(by_id.run, ATTACHMENT).inputs["volumeId"] == volume_id
    for adopted in (back, by_id):
        _, final = destroy(adopted)
        assert [step for step in final.steps if step.type == schema.VOLUME] == []
        assert release_steps(final) and final.index(RELEASE) < final.index(ATTACHMENT)


def test_up_after_keeping_the_volume_without_adopting_it_fails_on_the_name(
    deployed: Deployed,
) -> None:
    kept_up, _ = up(deployed, {"retainVolumeOnDestroy": True})
    account, _ = destroy(kept_up)
    with pytest.raises(Exception, match="409"):
        run_program(mocks=account, overrides={"retainVolumeOnDestroy": True})


def account_volume(mocks: ProviderMocks, name: str, region: str, size: int) -> str:
    """A volume made outside this stack (by hand, or by another stack), with data on it."""
    volume_id = str(uuid.uuid4())
    mocks.volumes[volume_id] = {
        "name": name,
        "region": region,
        "size": size,
        "urn": f"do:volume:{volume_id}",
        "description": "",
        "filesystemType": "ext4",
        "filesystemLabel": "registry-data",
        "dropletIds": [],
    }
    return volume_id


# -- command and droplet options (defects 6 and 9) -------------------------------------------


def test_no_command_sends_its_previous_output_as_ssh_environment(deployed: Deployed) -> None:
    commands = deployed.run.commands()
    assert commands
    for registration in commands:
        assert registration.inputs.get("addPreviousOutputInEnv") is False, registration.name


def test_droplet_delete_timeout_fits_a_graceful_shutdown(deployed: Deployed) -> None:
    # The provider's default is 60 s for unlock + shutdown (resource_droplet.go).
    assert DROPLET_DELETE_TIMEOUT == "5m"
    for droplet in deployed.run.of_type(schema.DROPLET):
        assert droplet.delete_timeout == DROPLET_DELETE_TIMEOUT, droplet.name
    assert registered(deployed.run, "registry-droplet").inputs["gracefulShutdown"] is True


# -- derived names (defect 13) ---------------------------------------------------------------


def dev_config(**overrides: str) -> dict[str, str]:
    """The dev stack's raw config strings, keys without the project prefix."""
    raw = {key.split(":", 1)[1]: value for key, value in stack_config().items()}
    return {**raw, **overrides}


def test_a_stack_name_too_long_for_digitalocean_names_is_refused_naming_the_limit() -> None:
    stack = "s" * 46  # registry-<stack>-registry: 64 characters
    with pytest.raises(SettingsError) as refused:
        parse_settings(dev_config(clientCount="10"), stack)
    assert (
        f"`pulumi stack` name {stack!r} makes the droplet name 'registry-{stack}-registry' "
        "(64 characters; DigitalOcean allows 63): expected a stack name of at most 45 "
        "characters"
    ) in str(refused.value)


@pytest.mark.parametrize("stack", ["s" * 45, "Team_" + "P" * 40, "dev"])
def test_every_accepted_stack_name_gives_names_digitalocean_accepts(stack: str) -> None:
    settings = parse_settings(dev_config(clientCount="10"), stack)
    # Volume names: lowercase letters, digits and "-", starting with a letter, at most 64.
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,63}", settings.volume_name), settings.volume_name
    for name in settings.droplet_names():
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name), name
    assert len(settings.droplet_names()) == 11


def test_the_program_refuses_a_long_stack_name_before_any_resource() -> None:
    mocks = ProviderMocks()
    monitor = RecordingMonitor(mocks)
    with pytest.raises(SettingsError, match="`pulumi stack` name"):
        run_program(mocks=mocks, stack="s" * 60, monitor=monitor)
    assert monitor.registrations == {}


# -- the planner itself, on hand-made states -------------------------------------------------


def resource_state(
    name: str,
    type_token: str,
    inputs: dict[str, Any],
    depends_on: tuple[str, ...] = (),
    property_dependencies: dict[str, list[str]] | None = None,
    deleted_with: str = "",
    retain_on_delete: bool = False,
    delete_before_replace: bool = False,
) -> Registration:
    property_dependencies = property_dependencies or {}
    return Registration(
        urn=f"urn:{name}",
        type=type_token,
        name=name,
        custom=True,
        parent="",
        dependencies=[
            *depends_on,
            *(urn for urns in property_dependencies.values() for urn in urns),
        ],
        property_dependencies=property_dependencies,
        raw_inputs=inputs,
        inputs=inputs,
        deleted_with=deleted_with,
        retain_on_delete=retain_on_delete,
        delete_before_replace=delete_before_replace,
    )


def state_of(*registrations: Registration) -> ProgramRun:
    return ProgramRun(resources={r.urn: r for r in registrations}, outputs={})


def test_planner_deletes_only_dependents_whose_replacing_input_comes_from_a_dbr_resource() -> None:
    def world(droplet_id: int) -> ProgramRun:
        return state_of(
            resource_state(
                "attach", schema.ATTACHMENT, {"dropletId": droplet_id}, delete_before_replace=True
            ),
            resource_state(
                "release",
                schema.COMMAND,
                {"triggers": [f"a{droplet_id}"], "delete": "release"},
                depends_on=("urn:attach",),
                property_dependencies={"triggers": ["urn:attach"]},
            ),
            resource_state("after", schema.COMMAND, {"create": "x"}, depends_on=("urn:attach",)),
        )

    plan = plan_up(world(1), world(2))
    assert plan.summary() == [
        "delete-replaced release",
        "delete-replaced attach",
        "replace attach",
        "replace release",
    ]
    assert plan.host_commands() == [("release", "delete-replaced", "release")]


def test_planner_skips_the_provider_for_deleted_with_and_retained_resources() -> None:
    droplet = resource_state("droplet", schema.DROPLET, {"image": "a"})
    on_host = resource_state(
        "on-host",
        schema.COMMAND,
        {"delete": "cleanup"},
        property_dependencies={"connection": ["urn:droplet"]},
        deleted_with="urn:droplet",
    )
    volume = resource_state("volume", schema.VOLUME, {"size": 1}, retain_on_delete=True)
    everything = state_of(droplet, on_host, volume)
    assert plan_destroy(everything).summary() == [
        "delete (no provider call) volume",
        "delete (no provider call) on-host",
        "delete droplet",
    ]
    # The droplet stays: the command's delete runs on it.
    assert plan_up(everything, state_of(droplet, volume)).host_commands() == [
        ("on-host", "delete", "cleanup")
    ]


def test_planner_creates_a_replacement_before_deleting_the_old_one() -> None:
    def world(image: str, size: str) -> ProgramRun:
        return state_of(resource_state("droplet", schema.DROPLET, {"image": image, "size": size}))

    assert plan_up(world("a", "s"), world("a", "m")).summary() == ["update droplet"]
    assert plan_up(world("a", "s"), world("b", "s")).summary() == [
        "replace droplet",
        "delete-replaced droplet",
    ]
