"""The shell text of the remote commands: place a file from stdin, run a script from stdin.

Every path and argument is quoted with `shlex.quote`: a space or a quote in it stays inside one
argument and never runs as shell.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath


def place_file_command(path: str, mode: int, uid: int = 0, gid: int = 0) -> str:
    """A shell command that writes stdin to `path` atomically with its owner and mode.

    A missing directory is created 0755; an existing one keeps its mode (e.g. /root/.ssh).
    The content arrives on stdin (never on the command line); it is written to a private
    temporary file in the same directory, then renamed over the target, so a reader such as
    nginx sees either the old or the new file, never a partial one.
    """
    target = PurePosixPath(path)
    quoted_path = shlex.quote(path)
    directory = shlex.quote(str(target.parent))
    temporary = shlex.quote(f"{target.parent}/.{target.name}.XXXXXX")
    return "\n".join(
        [
            "set -eu",
            f"[ -d {directory} ] || install -d -m 0755 {directory}",
            "umask 077",
            f'tmp="$(mktemp {temporary})"',
            "trap 'rm -f \"$tmp\"' EXIT",
            'cat >"$tmp"',
            f'chown {int(uid)}:{int(gid)} "$tmp"',
            f'chmod {mode:04o} "$tmp"',
            f'mv -f "$tmp" {quoted_path}',
            "trap - EXIT",
        ]
    )


def script_command(*args: str) -> str:
    """`bash -s -- ARGS`: run a script given on stdin with quoted arguments."""
    return " ".join(["bash", "-s", "--", *(shlex.quote(arg) for arg in args)])
