"""The private Pulumi SDK internals tests/harness.py relies on, and the versions they were read in.

The harness runs `__main__.py` under mocks the way `pulumi.runtime.test` does not allow (one
engine state across several runs, every registration recorded): it resets the SDK's global
settings and drives its event loop directly. Those names are private and may move in any
release, so the tests pin the SDK (tests/requirements.txt) and `test_sdk_canary.py` names what
moved when someone upgrades it.
"""

from __future__ import annotations

import importlib
import importlib.metadata

# Exactly the versions tests/requirements.txt installs; bump both together.
PINNED = {"pulumi": "3.272.0"}

# (module, attribute path) for each private name the harness and mocks use.
USED = (
    ("pulumi.runtime.sync_await", "_sync_await"),
    ("pulumi.runtime.settings", "ROOT.set"),
    ("pulumi.runtime.settings", "SETTINGS.rpc_manager.clear"),
    ("pulumi.runtime.settings", "SETTINGS.outputs.clear"),
    ("pulumi.runtime.stack", "run_pulumi_func"),
    ("pulumi.runtime.mocks", "MockMonitor.RegisterResource"),
    ("pulumi.runtime.rpc", "deserialize_properties"),
    ("pulumi.runtime.rpc", "is_rpc_secret"),
    ("pulumi.runtime.rpc", "unwrap_rpc_secret"),
    ("pulumi.runtime.rpc", "wrap_rpc_secret"),
)


def moved_message(detail: str) -> str:
    installed = {name: importlib.metadata.version(name) for name in PINNED}
    return (
        f"tests/harness.py uses Pulumi SDK internals that are not where they were in "
        f"{PINNED} (installed: {installed}): {detail}. Install the pinned versions "
        f"(tests/requirements.txt), or adapt tests/harness.py and tests/sdk_internals.py."
    )


def missing() -> list[str]:
    """Each used internal that cannot be found, as `module:attribute`."""
    gone = []
    for module_name, path in USED:
        try:
            target: object = importlib.import_module(module_name)
            for part in path.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            gone.append(f"{module_name}:{path}")
    return gone
