"""Run the real program (`__main__.py`) under provider-like mocks and record what it asked for.

`run_program` loads config exactly as the Pulumi CLI would (the `config:` defaults of
Pulumi.yaml, then `Pulumi.<stack>.yaml`, then overrides), runs the program with `preview=False`,
waits for every output, and returns a `ProgramRun`: each registered resource with its inputs,
parent, dependencies, options (deleted_with, retain_on_delete, delete_before_replace,
ignore_changes, the delete timeout) and the id and outputs the mock provider answered, and the
resolved stack outputs with their secretness. `tests/lifecycle/planner.py` plans between two.
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.mocks import ProviderMocks, contains_secret, unwrap

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "private-registry"


def cli_config_value(value: Any) -> str:
    """The string the Pulumi CLI hands a program for a typed config value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def stack_config(stack: str = "dev", overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Config as the CLI builds it: project defaults, then the stack file, then overrides.

    Override values may be Python values (serialized as the CLI does) or raw strings.
    """
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    config = {
        f"{PROJECT}:{key}": cli_config_value(spec["default"])
        for key, spec in project.get("config", {}).items()
        if "default" in spec
    }
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        for key, value in (yaml.safe_load(stack_file.read_text()) or {}).get("config", {}).items():
            config[key if ":" in key else f"{PROJECT}:{key}"] = cli_config_value(value)
    for key, value in (overrides or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            config.pop(full_key, None)
        else:
            config[full_key] = cli_config_value(value)
    return config


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    raw_inputs: dict[str, Any]  # as the monitor received them (secrets wrapped)
    inputs: dict[str, Any]  # secrets unwrapped
    deleted_with: str
    retain_on_delete: bool
    delete_before_replace: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    delete_timeout: str = ""  # custom_timeouts.delete, as the engine passes it to the provider
    id: str = ""  # what the provider (mock) answered
    provider: str = ""  # an explicit provider's reference, `<provider urn>::<provider id>`
    outputs: dict[str, Any] = field(default_factory=dict)  # secrets unwrapped

    def is_secret_input(self, key: str) -> bool:
        return contains_secret(self.raw_inputs.get(key))


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's parent, dependencies, options."""

    def __init__(self, mocks: ProviderMocks) -> None:
        super().__init__(mocks)
        self.mocks: ProviderMocks = mocks
        self.registrations: dict[str, Registration] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        # The engine keeps the stored value of an ignored input; so does the mock provider.
        self.mocks.ignored_inputs[(request.type, request.name)] = list(request.ignoreChanges)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.object, keep_unknowns=True)
            outputs = rpc.deserialize_properties(response.object, keep_unknowns=True)
            self.registrations[response.urn] = Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                custom=bool(request.custom),
                parent=request.parent,
                dependencies=list(request.dependencies),
                property_dependencies={
                    key: list(value.urns) for key, value in request.propertyDependencies.items()
                },
                raw_inputs=raw,
                inputs=unwrap(raw),
                deleted_with=request.deletedWith,
                retain_on_delete=bool(request.retainOnDelete),
                delete_before_replace=bool(request.deleteBeforeReplace),
                ignore_changes=list(request.ignoreChanges),
                delete_timeout=request.customTimeouts.delete,
                id=response.id,
                outputs=unwrap(outputs),
                provider=request.provider,
            )
        return response


@dataclass
class ProgramRun:
    resources: dict[str, Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, type_token: str) -> list[Registration]:
        return [r for r in self.resources.values() if r.type == type_token]

    def named(self, name: str) -> Registration:
        matches = [r for r in self.resources.values() if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
        return matches[0]

    def by_urn(self, urn: str) -> Registration:
        return self.resources[urn]

    def commands(self) -> list[Registration]:
        return self.of_type("command:remote:Command")


def run_program(
    mocks: ProviderMocks | None = None,
    stack: str = "dev",
    overrides: Mapping[str, Any] | None = None,
    monitor: RecordingMonitor | None = None,
    secrets: Mapping[str, str] | None = None,
) -> ProgramRun:
    """Run `__main__.py` once under mocks (fresh, unless `mocks` carries state from a run).

    `secrets`: config values set with `pulumi config set --secret` (the CLI hands them over as
    secret keys). Pass a `monitor` to keep what was registered even when the program raises."""
    mocks = mocks or ProviderMocks()
    secret_config = {
        key if ":" in key else f"{PROJECT}:{key}": value for key, value in (secrets or {}).items()
    }
    pulumi.runtime.set_all_config(
        {**stack_config(stack, overrides), **secret_config}, list(secret_config)
    )
    pulumi_settings.ROOT.set(None)
    monitor = monitor or RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()

    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    _sync_await(run_pulumi_func(program))

    root = pulumi.runtime.get_root_resource()
    assert root is not None
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    for key, value in root.outputs.items():  # type: ignore[attr-defined]
        output = pulumi.Output.from_input(value)
        outputs[key] = _sync_await(output.future())
        if _sync_await(output.is_secret()):
            secret_outputs.add(key)
    return ProgramRun(
        resources=dict(monitor.registrations), outputs=outputs, secret_outputs=secret_outputs
    )
