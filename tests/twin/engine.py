"""The engine's half of `pulumi up` and `pulumi destroy`, on the twin.

The planner (tests/lifecycle/planner.py) says which steps a run takes; this performs them, one
at a time in the plan's order (a valid execution order of the engine's): droplets, volumes and
attachments are made, changed and removed in the twin, and every `command:remote:Command` runs
over real OpenSSH from the deployer's network with its connection's user and key, its `stdin`,
and the text pulumi-command would run (`create`, `update` or else `create`, `delete`). Before a
command runs, the engine dials as pulumi-command does: retries while the dial fails (sshd not up
yet, the key not yet installed by cloud-init), backing off from 100 ms by 1.5x up to 5 s, at
most `dial_error_limit` times. A failed command fails the run, as it fails `pulumi up`.
Each step that makes, changes or removes a firewall or a droplet reloads the router's firewall
rules (tests/twin/firewalls.py) from the firewalls' inputs and the droplets' tags.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import ProgramRun, Registration
from tests.lifecycle import schema
from tests.lifecycle.planner import Plan, Step
from tests.twin.droplets import Droplet, Twin
from tests.twin.hub import HUB_CA_PATH, RESOLV_CONF, Hub

# DigitalOcean's cloud-init vendor data sets manage_etc_hosts: /etc/hosts from the template.
VENDOR_DATA = "#cloud-config\nmanage_etc_hosts: true\n"


@dataclass(frozen=True)
class CommandRun:
    name: str
    action: str
    host: str
    seconds: float


class CommandFailed(AssertionError):
    pass


# OpenSSH's own errors when no session was opened (ssh exits 255 then; a command may too).
CONNECTION_ERRORS = (b"banner exchange", b"kex_exchange_identification", b"ssh: connect to host")


def connection_failed(done: subprocess.CompletedProcess[bytes]) -> bool:
    """ssh failed to connect, so the command did not run."""
    return done.returncode == 255 and any(error in done.stderr for error in CONNECTION_ERRORS)


@dataclass
class Engine:
    twin: Twin
    hub: Hub
    directory: Path
    ran: list[CommandRun] = field(default_factory=list)
    _key_files: dict[str, Path] = field(default_factory=dict)

    # -- resources -------------------------------------------------------------------------
    def apply(self, plan: Plan, state: ProgramRun) -> list[CommandRun]:
        """Perform the plan's steps (`state`: the run whose resources the steps refer to, for
        the droplets' SSH keys); the remote commands it ran."""
        start = len(self.ran)
        for step in plan.steps:
            if step.provider_call:
                self._perform(step, state)
        return self.ran[start:]

    def _perform(self, step: Step, state: ProgramRun) -> None:
        registration = step.state
        deleting = step.action in ("delete", "delete-replaced")
        if registration.type == schema.COMMAND:
            command = step.host_command
            if command:
                self._run_command(step, command)
        elif registration.type == schema.DROPLET:
            if deleting:
                droplet = self.twin.droplets.pop(registration.id)
                stopped = droplet.destroy()
                assert stopped, f"droplet {droplet.name} did not shut down within its timeout"
                self.twin.apply_firewalls()
            elif step.action in ("create", "replace"):
                self._create_droplet(registration, state)
            elif step.action == "update":
                self.twin.droplets[registration.id].tags = tuple(
                    registration.inputs.get("tags") or ()
                )
                self.twin.apply_firewalls()
        elif registration.type == schema.FIREWALL:
            if deleting:
                self.twin.firewalls.pop(registration.id)
            elif step.action in ("create", "replace", "update"):
                self.twin.firewalls[registration.id] = registration.inputs
            self.twin.apply_firewalls()
        elif registration.type == schema.LOAD_BALANCER:
            if deleting:
                self.twin.load_balancers.pop(registration.id)
            elif step.action in ("create", "replace", "update"):
                self.twin.load_balancers[registration.id] = registration.outputs["ip"]
        elif registration.type == schema.VOLUME:
            if step.action in ("create", "replace"):
                self.twin.add_volume(
                    registration.id, registration.inputs["name"], int(registration.inputs["size"])
                )
            elif deleting:
                self.twin.volumes.pop(registration.id).detach()
        elif registration.type == schema.ATTACHMENT:
            droplet = self.twin.droplets[str(int(registration.inputs["dropletId"]))]
            volume = self.twin.volumes[registration.inputs["volumeId"]]
            if deleting:
                droplet.detach(volume)
            elif step.action in ("create", "replace"):
                droplet.attach(volume)

    def _create_droplet(self, registration: Registration, state: ProgramRun) -> Droplet:
        inputs, outputs = registration.inputs, registration.outputs
        keys = [
            key.inputs["publicKey"].strip()
            for key in state.of_type(schema.SSH_KEY)
            if key.outputs.get("fingerprint") in inputs["sshKeys"]
        ]
        assert keys, f"droplet {inputs['name']}: none of its ssh_keys is the stack's"
        meta_data = (
            f"instance-id: {registration.id}\nlocal-hostname: {inputs['name']}\npublic-keys:\n"
            + "".join(f"  - {key}\n" for key in keys)
        )
        seed = "/var/lib/cloud/seed/nocloud"
        return self.twin.add_droplet(
            registration.id,
            inputs["name"],
            outputs["ipv4Address"],
            outputs["ipv4AddressPrivate"],
            {
                f"{seed}/meta-data": meta_data,
                f"{seed}/user-data": inputs.get("userData") or "#cloud-config\n{}\n",
                f"{seed}/vendor-data": VENDOR_DATA,
                HUB_CA_PATH: self.hub.ca_pem,
                "/etc/resolv.conf": RESOLV_CONF,
            },
            tags=tuple(inputs.get("tags") or ()),
        )

    # -- SSH -------------------------------------------------------------------------------
    def key_file(self, private_key: str) -> Path:
        """The connection's private key in a file of mode 0600 (never on a command line)."""
        if private_key not in self._key_files:
            path = self.directory / f"key-{len(self._key_files)}"
            path.touch(mode=0o600)
            path.write_text(private_key if private_key.endswith("\n") else private_key + "\n")
            self._key_files[private_key] = path
        return self._key_files[private_key]

    def ssh(self, connection: dict[str, object], command: str, stdin: bytes = b"",
            timeout: float = 900) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """`command` over SSH as pulumi-command runs it (one session, `stdin` fed to it). A
        connection that fails before its session starts is dialed again and the command run
        then: pulumi-command runs its session on the connection its dial made, while each
        `ssh` here opens a new one (seen once in four full runs: a fresh droplet's sshd sent no
        banner within the 15 s dial timeout)."""
        done = self._ssh_once(connection, command, stdin, timeout)
        for _ in range(2):
            if not connection_failed(done):
                break
            self.dial(connection)
            done = self._ssh_once(connection, command, stdin, timeout)
        return done

    def _ssh_once(self, connection: dict[str, object], command: str, stdin: bytes,
                  timeout: float) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        return subprocess.run(
            self.ssh_argv(connection, command),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def ssh_argv(self, connection: dict[str, object], command: str) -> list[str]:
        """OpenSSH from the deployer's network, with the connection's user, port and key."""
        return self.twin.deployer(
            "ssh", "-F", "/dev/null", "-T",
            "-i", str(self.key_file(str(connection["privateKey"]))),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={int(float(str(connection.get('perDialTimeout') or 15)))}",
            "-p", str(int(float(str(connection.get("port") or 22)))),
            f"{connection.get('user') or 'root'}@{connection['host']}", "--", command,
        )  # fmt: skip

    def dial(self, connection: dict[str, object]) -> None:
        """pulumi-command's dial retries (provider/pkg/provider/remote/connection.go)."""
        limit = int(float(str(connection.get("dialErrorLimit") or 10)))
        wait = 0.1
        failures = 0
        while True:
            done = self._ssh_once(connection, "true", b"", 60)
            if done.returncode == 0:
                return
            failures += 1
            if limit >= 0 and failures >= limit:
                raise CommandFailed(
                    f"dial {connection['host']}: {failures} failures, the last: "
                    + done.stderr.decode(errors="replace")
                )
            time.sleep(wait)
            wait = min(wait * 1.5, 5.0)

    def _run_command(self, step: Step, command: str) -> None:
        inputs = step.state.inputs
        connection = inputs["connection"]
        self.dial(connection)
        started = time.monotonic()
        done = self.ssh(connection, command, stdin=str(inputs.get("stdin") or "").encode())
        seconds = time.monotonic() - started
        self.ran.append(CommandRun(step.name, step.action, connection["host"], seconds))
        # Commands that carry a secret log nothing (`logging: none`): nor does the twin.
        if inputs.get("logging") != "none":
            log = self.directory / "commands.log"
            with log.open("ab") as output:
                output.write(f"=== {step.action} {step.name} ({seconds:.1f} s)\n".encode())
                output.write(done.stdout + done.stderr)
        if done.returncode != 0:
            detail = (
                "(its output is not logged: it carries a secret)"
                if inputs.get("logging") == "none"
                else (done.stdout + done.stderr).decode(errors="replace")[-4000:]
            )
            raise CommandFailed(
                f"{step.action} {step.name} on {connection['host']} exited {done.returncode}: "
                f"{detail}"
            )
