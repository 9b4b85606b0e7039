"""The pins of what runs on the hosts: released versions, pinned by tag and digest, and the
exact references the program hands the host."""

from __future__ import annotations

import re

import pytest
import yaml

from components import versions
from tests.harness import run_program

pytestmark = pytest.mark.program

# name:tag@sha256:<64 hex>: the tag says which release, the digest fixes the bytes.
PINNED = re.compile(r"^(?P<name>[a-z0-9./-]+):(?P<tag>[A-Za-z0-9_.-]+)@sha256:[0-9a-f]{64}$")
IMAGE_PINS = {"registry": versions.REGISTRY_IMAGE, "nginx": versions.NGINX_IMAGE}


def test_every_image_is_pinned_by_tag_and_digest() -> None:
    for service, reference in IMAGE_PINS.items():
        assert PINNED.fullmatch(reference), (service, reference)


def test_registry_pin_has_the_tag_delete_fix_of_3_1_1() -> None:
    """CVE-2026-41888 (GHSA-6pjf-3r9x-m592) is fixed in distribution 3.1.1."""
    match = PINNED.fullmatch(versions.REGISTRY_IMAGE)
    assert match is not None
    release = tuple(int(part) for part in match["tag"].split("-")[0].split("."))
    assert release >= (3, 1, 1), versions.REGISTRY_IMAGE


def test_the_host_runs_exactly_the_pinned_images() -> None:
    run = run_program()
    compose_commands = [
        command
        for command in run.commands()
        if command.inputs.get("stdin", "").startswith("# Rendered by")
        and "services:" in command.inputs["stdin"]
    ]
    assert len(compose_commands) == 1
    compose = yaml.safe_load(compose_commands[0].inputs["stdin"])
    images = {name: service["image"] for name, service in compose["services"].items()}
    assert images == IMAGE_PINS
