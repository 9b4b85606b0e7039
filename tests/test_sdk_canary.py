"""Canary for the private Pulumi SDK internals the test harness relies on (tests/sdk_internals.py).

Fails with a message naming what moved, instead of a confusing failure deep in a mocked run.
"""

from __future__ import annotations

import importlib.metadata

import pytest

from tests import sdk_internals

pytestmark = pytest.mark.program


def test_the_sdk_is_the_pinned_version() -> None:
    installed = {name: importlib.metadata.version(name) for name in sdk_internals.PINNED}
    assert installed == sdk_internals.PINNED, sdk_internals.moved_message(
        "the installed SDK is not the pinned one"
    )


def test_every_sdk_internal_the_harness_uses_is_still_there() -> None:
    missing = sdk_internals.missing()
    assert not missing, sdk_internals.moved_message(f"missing {missing}")


def test_the_canary_notices_a_moved_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the check does look, and names what it cannot find."""
    monkeypatch.setattr(
        sdk_internals,
        "USED",
        (*sdk_internals.USED, ("pulumi.runtime.settings", "SETTINGS.no_such")),
    )
    assert sdk_internals.missing() == ["pulumi.runtime.settings:SETTINGS.no_such"]
