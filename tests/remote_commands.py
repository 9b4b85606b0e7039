"""Reading the program's recorded remote commands: which file a place-file command writes.

The one parser of `rendering.commands.place_file_command`'s text, for every test that needs it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from tests.harness import ProgramRun, Registration

_MOVE = 'mv -f "$tmp" '


@dataclass(frozen=True)
class PlacedFile:
    path: str
    owner: str  # uid:gid
    mode: str  # octal, four digits


def placed_file(registration: Registration) -> PlacedFile:
    """Path, owner and mode a place-file command gives the file it writes from stdin."""
    lines = registration.inputs["create"].splitlines()

    def only_line(command_name: str) -> list[str]:
        found = [shlex.split(line) for line in lines if line.startswith(f"{command_name} ")]
        assert len(found) == 1, f"{registration.name}: not one `{command_name}` line in {lines}"
        return found[0]

    return PlacedFile(
        path=only_line("mv")[-1], owner=only_line("chown")[1], mode=only_line("chmod")[1]
    )


def is_place_file_command(registration: Registration) -> bool:
    return f"\n{_MOVE}" in registration.inputs.get("create", "")


def place_file_commands(run: ProgramRun) -> dict[str, Registration]:
    """Host path -> the command that places it, for every host of the run."""
    return {
        placed_file(command).path: command
        for command in run.commands()
        if is_place_file_command(command)
    }


def commands_placing_secret(run: ProgramRun, secret: str) -> dict[str, PlacedFile]:
    """Command name -> the file it places, for every command carrying `secret`: only on stdin,
    marked secret, with logging off (never in its create, update, delete, environment or
    triggers)."""
    carrying = {}
    for registration in run.commands():
        for field in ("create", "update", "delete", "environment", "triggers"):
            assert secret not in json.dumps(registration.inputs.get(field)), registration.name
        if secret in registration.inputs.get("stdin", ""):
            assert registration.is_secret_input("stdin"), registration.name
            assert registration.inputs.get("logging") == "none", registration.name
            carrying[registration.name] = placed_file(registration)
    return carrying
