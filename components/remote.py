"""Remote commands on a droplet: run a host script, place a file. Shared by server and client.

Every command's text is deterministic, so an unchanged stack re-runs nothing. Secrets never
appear in a command line: file contents travel on stdin, and commands that carry a secret log
nothing. No command sends its previous output as SSH environment variables
(`add_previous_output_in_env`, default true in pulumi-command, asks sshd to accept
`PULUMI_COMMAND_STDOUT`/`STDERR`; Ubuntu's sshd refuses them with a warning on every update).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_digitalocean as digitalocean

from components.manifest import (
    EXTRA_SSH_KEYS_FILE,
    HostFile,
    HostManifest,
    HostScript,
    command_name,
)
from components.rendering import commands, templates

# A fresh droplet refuses SSH until it has booted. About 60 failed dials (growing waits of up
# to a few seconds each, `per_dial_timeout` each when packets are dropped) bound the wait at
# minutes, so a firewall that shuts out the deployer fails `pulumi up` instead of hanging it.
DIAL_ERROR_LIMIT = 60
PER_DIAL_TIMEOUT_SECONDS = 10
# terraform-provider-digitalocean digitalocean/droplet/resource_droplet.go: the default delete
# timeout is 60 s and covers waiting for an unlock and, with `graceful_shutdown`, the shutdown
# action until the droplet is "off" (polled after a 10 s delay). Stopping Docker and the
# registry's containers and syncing the filesystem can take longer on a busy host.
DROPLET_DELETE_TIMEOUT = "5m"


@dataclass
class DropletArgs:
    """What every host of the stack is made of: a droplet in the region's default VPC, behind
    its firewall tag, reachable with the stack's admin key (plus any extra public keys)."""

    droplet_name: str
    region: pulumi.Input[str]
    size: str
    image: str
    tag: pulumi.Input[str]
    ssh_key_fingerprint: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]
    extra_ssh_public_keys: Sequence[str]


class RemoteHost:
    """A droplet reached as root over SSH with the stack's admin key.

    Commands are children of `parent`, named by `manifest.command_name` after `name`, and are
    deleted with the droplet: `pulumi destroy` never tries to reach a host that is already gone.
    The exception is `run_script_on_delete`, whose whole point is to run on the host before
    something it depends on is deleted.
    """

    def __init__(
        self,
        name: str,
        droplet: digitalocean.Droplet,
        private_key: pulumi.Input[str],
        parent: pulumi.Resource,
    ) -> None:
        self.name = name
        self.droplet = droplet
        self.parent = parent
        self.connection = command.remote.ConnectionArgs(
            host=droplet.ipv4_address,
            user="root",
            private_key=private_key,
            dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        )

    @classmethod
    def create(
        cls, name: str, args: DropletArgs, parent: pulumi.Resource, graceful_shutdown: bool = False
    ) -> RemoteHost:
        """The droplet (monitoring on, IPv4 only; `ssh_keys` never changes, since a change would
        replace it) and the extra SSH keys in `authorized_keys2`.

        The keys file is written even for an empty list, so removing the last key revokes it
        (the command's input changes, and its update writes the empty file).
        """
        droplet = digitalocean.Droplet(
            f"{name}-droplet",
            name=args.droplet_name,
            image=args.image,
            region=args.region,
            size=args.size,
            ssh_keys=[args.ssh_key_fingerprint],
            tags=[args.tag],
            monitoring=True,
            ipv6=False,
            graceful_shutdown=graceful_shutdown,
            opts=pulumi.ResourceOptions(
                parent=parent, custom_timeouts=pulumi.CustomTimeouts(delete=DROPLET_DELETE_TIMEOUT)
            ),
        )
        host = cls(name, droplet, args.ssh_private_key, parent)
        keys = "".join(f"{key}\n" for key in args.extra_ssh_public_keys)
        keys_file = shlex.quote(EXTRA_SSH_KEYS_FILE.path)
        # Named as before the naming rule existed, so existing stacks keep the resource.
        host.place_file(
            EXTRA_SSH_KEYS_FILE,
            EXTRA_SSH_KEYS_FILE.render({"extra_ssh_keys": keys}),
            resource_name=f"{name}-extra-ssh-keys",
            delete=f"if [ -e {keys_file} ]; then : > {keys_file}; fi",
        )
        return host

    def _opts(
        self, depends_on: Sequence[pulumi.Resource], delete_before_replace: bool = False
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=self.parent,
            depends_on=list(depends_on),
            deleted_with=self.droplet,
            delete_before_replace=delete_before_replace,
        )

    def run_script(
        self,
        host_script: HostScript,
        stack_values: Mapping[str, pulumi.Input[object]],
        depends_on: Sequence[pulumi.Resource] = (),
        triggers: Sequence[pulumi.Input[str]] = (),
        delete: str | None = None,
        delete_before_replace: bool = False,
    ) -> command.remote.Command:
        """Run the script with `bash -s` and its arguments; the script travels on stdin.

        It re-runs when the script, its arguments, the droplet or any of `triggers` change.
        `delete` runs when the command is deleted while its droplet stays, and when it is
        replaced: after the new one ran, unless `delete_before_replace`.
        """
        return command.remote.Command(
            command_name(self.name, host_script),
            connection=self.connection,
            create=_with_stack_values(host_script.stack_values, stack_values).apply(
                lambda values: commands.script_command(*host_script.arguments(values))
            ),
            delete=delete,
            stdin=templates.script(host_script.script),
            triggers=[self.droplet.id, *triggers],
            add_previous_output_in_env=False,
            opts=self._opts(depends_on, delete_before_replace),
        )

    def run_script_on_delete(
        self,
        host_script: HostScript,
        depends_on: Sequence[pulumi.Resource],
        triggers: Sequence[pulumi.Input[str]],
    ) -> command.remote.Command:
        """Run the script (arguments without stack values) when this command is deleted;
        nothing on create.

        The engine deletes a resource before what it `depends_on`, so the script runs on the
        host before any of those is deleted. When one of `triggers` is an output of a resource
        with `delete_before_replace`, replacing that resource deletes this command (running the
        script) first. Not `deleted_with` the droplet: on destroy the script must run, and the
        droplet is deleted after it (the connection depends on the droplet).
        """
        return command.remote.Command(
            command_name(self.name, host_script),
            connection=self.connection,
            delete=commands.script_command(*host_script.arguments({})),
            stdin=templates.script(host_script.script),
            triggers=list(triggers),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self.parent, depends_on=list(depends_on)),
        )

    def run_script_when_removed(
        self,
        host_script: HostScript,
        stack_values: Mapping[str, pulumi.Input[object]],
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> command.remote.Command:
        """Run the script when this command leaves the stack while its droplet stays (a setting
        turned off undoes what it placed); nothing on create. Deletes run after every create and
        update, so after the activation that took the feature out of service. Replaced only
        with the droplet, and then not run (deleted with it), so no other change runs it."""
        return command.remote.Command(
            command_name(self.name, host_script),
            connection=self.connection,
            delete=_with_stack_values(host_script.stack_values, stack_values).apply(
                lambda values: commands.script_command(*host_script.arguments(values))
            ),
            stdin=templates.script(host_script.script),
            triggers=[self.droplet.id],
            add_previous_output_in_env=False,
            opts=self._opts(depends_on),
        )

    def place_file(
        self,
        host_file: HostFile,
        content: pulumi.Input[str],
        depends_on: Sequence[pulumi.Resource] = (),
        resource_name: str | None = None,
        delete: str | None = None,
    ) -> command.remote.Command:
        """Write `content` (on stdin) to the host file atomically, with its owner and mode.

        `delete` runs when the command is deleted while its droplet stays."""
        return command.remote.Command(
            resource_name or command_name(self.name, host_file),
            connection=self.connection,
            create=commands.place_file_command(
                host_file.path, host_file.mode, host_file.uid, host_file.gid
            ),
            delete=delete,
            stdin=pulumi.Output.secret(content) if host_file.secret else content,
            logging=command.remote.Logging.NONE if host_file.secret else None,
            triggers=[self.droplet.id],
            add_previous_output_in_env=False,
            opts=self._opts(depends_on),
        )


def _with_stack_values(
    names: set[str], stack_values: Mapping[str, pulumi.Input[object]]
) -> pulumi.Output[dict[str, object]]:
    """The named stack values, resolved together."""
    return pulumi.Output.all(**{name: stack_values[name] for name in sorted(names)})


def rendered(
    host_file: HostFile, stack_values: Mapping[str, pulumi.Input[object]]
) -> pulumi.Input[str]:
    """The file's content, rendered from the stack values it uses."""
    if not host_file.stack_values:
        return host_file.render({})
    return _with_stack_values(host_file.stack_values, stack_values).apply(host_file.render)


def rendered_files(
    host_manifest: HostManifest, stack_values: Mapping[str, pulumi.Input[object]]
) -> list[tuple[HostFile, pulumi.Input[str]]]:
    """Each file of the manifest with its content rendered from the stack's values (which must
    be exactly the ones the manifest uses), in the manifest's order."""
    host_manifest.check_stack_values(set(stack_values))
    return [(host_file, rendered(host_file, stack_values)) for host_file in host_manifest.files]
