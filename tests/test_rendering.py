"""The pure rendering functions, directly: templates, shell commands, htpasswd, output text.

The shell commands run for real in bash (in this test's directory): a path or an argument with
spaces, quotes or `$(...)` must arrive as one unchanged argument and run nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from components.rendering import commands, htpasswd, instructions, templates

pytestmark = pytest.mark.program

# Every character a shell would act on, in one string.
HOSTILE = 'it\'s a "quoted" name; $(touch INJECTED) `touch INJECTED` & |'


# -- templates -------------------------------------------------------------------------------


def test_template_rendering_fills_every_placeholder() -> None:
    assert (
        templates.render_template("registry.env", http_secret="s3cret")
        == "REGISTRY_HTTP_SECRET=s3cret\n"
    )


def test_template_rendering_fails_on_a_missing_value() -> None:
    with pytest.raises(
        ValueError, match=r"template registry\.env: missing values \['http_secret'\]"
    ):
        templates.render_template("registry.env")


def test_template_rendering_fails_on_an_unused_value() -> None:
    with pytest.raises(ValueError, match=r"unused values \['port'\]"):
        templates.render_template("registry.env", http_secret="s3cret", port=5043)


def test_sha256_hex_delimits_its_parts() -> None:
    assert templates.sha256_hex("ab", "c") != templates.sha256_hex("a", "bc")
    assert templates.sha256_hex("x") == hashlib.sha256(b"x\0").hexdigest()


# -- shell commands --------------------------------------------------------------------------


def run_bash(command: str, stdin: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run a command text as sshd does: `bash -c TEXT`, with stdin."""
    return subprocess.run(
        ["bash", "-c", command], input=stdin, cwd=cwd, capture_output=True, check=False, timeout=30
    )


def test_place_file_command_writes_a_hostile_path_as_one_file_and_runs_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / HOSTILE / HOSTILE
    command = commands.place_file_command(str(target), 0o640, os.getuid(), os.getgid())
    result = run_bash(command, b"content\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert target.read_bytes() == b"content\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(path.name for path in target.parent.iterdir()) == [HOSTILE]  # no temp file
    assert not list(tmp_path.rglob("INJECTED"))


def test_script_command_passes_each_hostile_argument_unchanged_and_runs_nothing(
    tmp_path: Path,
) -> None:
    arguments = [HOSTILE, "two words", "", "--", "*"]
    script = b'printf "%s\\n" "$#"; printf "<%s>\\n" "$@"\n'
    result = run_bash(commands.script_command(*arguments), script, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        str(len(arguments)),
        *(f"<{argument}>" for argument in arguments),
    ]
    assert not list(tmp_path.rglob("INJECTED"))


# -- htpasswd --------------------------------------------------------------------------------


def test_ssha_hash_is_nginx_salted_sha1() -> None:
    salt = bytes(range(8))
    hashed = htpasswd.ssha_hash("pw", salt)
    decoded = base64.b64decode(hashed.removeprefix("{SSHA}"), validate=True)
    assert hashed.startswith("{SSHA}")
    assert decoded == hashlib.sha1(b"pw" + salt).digest() + salt


@pytest.mark.parametrize("length", [0, 1, 7])
def test_ssha_hash_refuses_a_salt_shorter_than_8_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="at least 8 bytes"):
        htpasswd.ssha_hash("pw", b"s" * length)


def test_htpasswd_file_has_one_line_per_user_in_order() -> None:
    text = htpasswd.htpasswd_file([("ci", "a", b"12345678"), ("alice", "b", b"87654321")])
    assert [line.split(":", 1)[0] for line in text.splitlines()] == ["ci", "alice"]
    assert text == (
        f"ci:{htpasswd.ssha_hash('a', b'12345678')}\nalice:{htpasswd.ssha_hash('b', b'87654321')}\n"
    )


# -- output text -----------------------------------------------------------------------------


def test_login_command_reads_the_password_from_the_stack_output_on_stdin() -> None:
    command = instructions.login_command("passwords", "ci", "registry.internal:5043")
    assert command.startswith("pulumi stack output passwords --show-secrets --json | ")
    assert command.endswith("| docker login registry.internal:5043 --username ci --password-stdin")
    assert 'json.load(sys.stdin)["ci"]' in command


@pytest.mark.parametrize("hosts_entry_needed", [True, False])
def test_trust_steps_install_the_ca_everywhere_and_map_the_name_only_when_needed(
    hosts_entry_needed: bool,
) -> None:
    steps = instructions.trust_steps(
        "registry.internal", 5043, "203.0.113.5", hosts_entry_needed=hosts_entry_needed
    ).splitlines()
    assert "/etc/docker/certs.d/registry.internal:5043/ca.crt" in steps[1]
    assert "/etc/containers/certs.d/registry.internal:5043/ca.crt" in steps[2]
    assert steps[4] == "sudo update-ca-certificates"
    hosts_steps = [step for step in steps if "/etc/hosts" in step]
    assert hosts_steps == (
        ["echo '203.0.113.5 registry.internal' | sudo tee -a /etc/hosts"]
        if hosts_entry_needed
        else []
    )
