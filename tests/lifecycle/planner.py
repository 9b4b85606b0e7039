"""An engine-like planner: the steps `pulumi up` and `pulumi destroy` take between two states.

The state is a recorded `ProgramRun` (tests/harness.py): every resource with its inputs, outputs,
dependencies and options. The rules follow the Pulumi engine (pulumi/pulumi
pkg/resource/deploy/step_generator.go and step.go):
- A resource the new program registers is created, updated in place, replaced or left alone,
  by what changed in its inputs and which of those force a replacement (`schema.REPLACE_ON`).
  Inputs named in `ignore_changes` keep their stored values.
- A replacement creates the new resource first and deletes the old one with the other deletes
  at the end (create-before-delete), unless `delete_before_replace`: then, before the new one is
  created, the engine deletes the dependents that must be replaced too (their inputs take a
  value from it, and that input forces their replacement: `calculateDependentReplacements`),
  dependents first, then the old resource.
- Deletes (removed resources and replaced old ones) run after every create and update,
  dependents before what they depend on. A delete drops the resource from the state without
  calling the provider when `retain_on_delete` is set or when its `deleted_with` target is being
  deleted in the same batch (`DeleteStep.Apply`, `isDeletedWith`).
- pulumi-command (provider/pkg/provider/remote/commandController.go): create runs `create`, an
  update runs `update` or else `create`, a delete runs `delete` and nothing when it is unset.

Steps come out in one valid execution order; the engine runs independent steps in parallel, so
tests assert the order only between steps that depend on each other.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from tests.harness import ProgramRun, Registration
from tests.lifecycle import schema

Action = Literal["create", "update", "replace", "delete-replaced", "delete"]


@dataclass(frozen=True)
class Step:
    """One engine step. `state` is what the provider acts on: the new registration for create,
    update and replace, the stored one for deletes."""

    action: Action
    state: Registration
    provider_call: bool = True  # False: dropped from the state (retained, or deleted_with)
    changed: frozenset[str] = frozenset()  # inputs that differ (update and replace)

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def type(self) -> str:
        return self.state.type

    @property
    def host_command(self) -> str | None:
        """For a remote command: the command line that runs on the host; None if none runs."""
        if self.type != schema.COMMAND or not self.provider_call:
            return None
        inputs = self.state.inputs
        if self.action in ("create", "replace"):
            return inputs.get("create")
        if self.action == "update":
            return inputs.get("update") or inputs.get("create")
        return inputs.get("delete")

    @property
    def host(self) -> str | None:
        """For a remote command: the address it connects to (the stored one for deletes)."""
        if self.type != schema.COMMAND:
            return None
        host: str = self.state.inputs["connection"]["host"]
        return host


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def of(self, name: str) -> list[Step]:
        return [step for step in self.steps if step.name == name]

    def index(self, name: str, action: Action | None = None) -> int:
        """Position of the (only) step of `name` (with `action`, if given)."""
        found = [
            i
            for i, step in enumerate(self.steps)
            if step.name == name and (action is None or step.action == action)
        ]
        assert len(found) == 1, f"expected one {action or 'step'} of {name}: {self.summary()}"
        return found[0]

    def names(self, *actions: Action) -> set[str]:
        return {step.name for step in self.steps if step.action in actions}

    def host_commands(self) -> list[tuple[str, Action, str]]:
        """(resource name, action, command line) of every command that runs on a host."""
        return [
            (step.name, step.action, command)
            for step in self.steps
            if (command := step.host_command) is not None
        ]

    def summary(self) -> list[str]:
        """`action name` lines, for assertion messages."""
        return [
            f"{step.action}{'' if step.provider_call else ' (no provider call)'} {step.name}"
            for step in self.steps
        ]


def _custom(run: ProgramRun | None) -> dict[str, Registration]:
    if run is None:
        return {}
    return {urn: r for urn, r in run.resources.items() if r.custom}


def _edges(registration: Registration) -> set[str]:
    """What a resource depends on: dependencies, property dependencies, parent, deleted_with."""
    edges = set(registration.dependencies) | {registration.parent}
    for urns in registration.property_dependencies.values():
        edges |= set(urns)
    if registration.deleted_with:
        edges.add(registration.deleted_with)
    return edges


def _dependency_order(resources: dict[str, Registration]) -> list[str]:
    """URNs with every resource after what it depends on (registration order otherwise)."""
    order: list[str] = []
    placed: set[str] = set()

    def place(urn: str, path: tuple[str, ...]) -> None:
        if urn in placed:
            return
        assert urn not in path, f"dependency cycle through {urn}"
        for edge in sorted(_edges(resources[urn])):
            if edge in resources:
                place(edge, (*path, urn))
        placed.add(urn)
        order.append(urn)

    for urn in resources:
        place(urn, ())
    return order


def _dependents(resources: dict[str, Registration], urn: str) -> set[str]:
    """Every resource that (transitively) depends on `urn`."""
    found: set[str] = set()
    frontier = {urn}
    while frontier:
        frontier = {
            other for other, r in resources.items() if other not in found and _edges(r) & frontier
        }
        found |= frontier
    return found


def _delete_steps(
    stored: dict[str, Registration], urns: Iterable[str], action: Action
) -> list[Step]:
    """Deletes of `urns`, dependents first; a delete calls no provider when the resource is
    retained or its `deleted_with` target is deleted in the same batch."""
    batch = set(urns)
    order = [urn for urn in reversed(_dependency_order(stored)) if urn in batch]
    return [
        Step(
            action,
            stored[urn],
            provider_call=not (stored[urn].retain_on_delete or stored[urn].deleted_with in batch),
        )
        for urn in order
    ]


def _forces_replacement(
    old: Registration, changed: set[str], now: datetime.datetime | None
) -> bool:
    return bool(schema.replacing_inputs(old.type, changed)) or (
        now is not None and schema.due_for_renewal(old.type, old.outputs, now)
    )


def _dependent_replacements(stored: dict[str, Registration], root: str) -> list[str]:
    """What the engine deletes before a delete-before-replace of `root`: dependents with an
    input taken from a resource being replaced, where that input forces their replacement."""
    replacing = {root}
    for urn in _dependency_order(stored):
        if urn == root or urn not in _dependents(stored, root):
            continue
        resource = stored[urn]
        unknown = {
            key for key, urns in resource.property_dependencies.items() if set(urns) & replacing
        }
        if schema.replacing_inputs(resource.type, unknown):
            replacing.add(urn)
    return [urn for urn in replacing if urn != root]


def plan_up(
    previous: ProgramRun | None, new: ProgramRun, now: datetime.datetime | None = None
) -> Plan:
    """The steps of `pulumi up` from the state `previous` (None: an empty stack) to the program
    run `new`. `now` is the time of the update (certificates due for renewal are replaced)."""
    stored = _custom(previous)
    wanted = _custom(new)
    plan = Plan()
    deleted_early: set[str] = set()
    delete_later: list[str] = []

    for urn in _dependency_order(wanted):
        registration = wanted[urn]
        if urn not in stored:
            plan.steps.append(Step("create", registration))
            continue
        if urn in deleted_early:
            plan.steps.append(Step("replace", registration))
            continue
        old = stored[urn]
        changed = schema.changed_inputs(
            old.inputs, registration.inputs, frozenset(registration.ignore_changes)
        )
        if _forces_replacement(old, changed, now):
            if registration.delete_before_replace:
                chain = [*_dependent_replacements(stored, urn), urn]
                chain = [u for u in chain if u not in deleted_early]
                plan.steps += _delete_steps(stored, chain, "delete-replaced")
                deleted_early |= set(chain)
            else:
                delete_later.append(urn)
            plan.steps.append(Step("replace", registration, changed=frozenset(changed)))
        elif changed:
            plan.steps.append(Step("update", registration, changed=frozenset(changed)))

    removed = [urn for urn in stored if urn not in wanted and urn not in deleted_early]
    replaced = [urn for urn in delete_later if urn not in deleted_early]
    batch = set(removed) | set(replaced)
    for step in _delete_steps(stored, batch, "delete"):
        action: Action = "delete-replaced" if step.state.urn in replaced else "delete"
        plan.steps.append(Step(action, step.state, provider_call=step.provider_call))
    return plan


def plan_destroy(previous: ProgramRun) -> Plan:
    """The steps of `pulumi destroy`: every resource deleted, dependents first."""
    stored = _custom(previous)
    return Plan(_delete_steps(stored, stored, "delete"))
