"""A client host: trusts the stack's CA, resolves the registry, and proves login, push and pull."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components import manifest
from components.remote import DropletArgs, RemoteHost, rendered_files
from components.rendering.templates import sha256_hex


@dataclass
class RegistryClientArgs:
    host: DropletArgs
    registry_name: str  # the name this client uses (the DNS name when a domain is set)
    port: int
    hosts_ip: pulumi.Input[str] | None  # mapped in /etc/hosts; None when DNS resolves the name
    ca_cert_pem: pulumi.Input[str]
    user: str
    password: pulumi.Input[str]
    registry_ready: Sequence[pulumi.Resource]  # every registry node's activation
    registry_fingerprint: pulumi.Input[str]
    # The Docker Hub cache's port (hubCache): trusted, and dockerd's registry mirror.
    hub_cache_port: int | None = None


class RegistryClient(pulumi.ComponentResource):
    """A droplet with Docker that trusts the registry and proves it works.

    The proof (`docker login` with the password on stdin, build, push, pull, digest compare)
    re-runs whenever the registry's files, the CA or the password change; if it fails,
    `pulumi up` fails.
    """

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]

    def __init__(
        self, name: str, args: RegistryClientArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:RegistryClient", name, None, opts)

        host = RemoteHost.create(name, args.host, parent=self)
        hub_cache = args.hub_cache_port is not None
        host_manifest = manifest.CLIENT_HOST_HUB_CACHE if hub_cache else manifest.CLIENT_HOST
        stack_values: dict[str, pulumi.Input[object]] = {
            "registry_name": args.registry_name,
            "port": args.port,
            "address": f"{args.registry_name}:{args.port}",
            "user": args.user,
            "hosts_ip": args.hosts_ip,
            "ca_cert_pem": args.ca_cert_pem,
            "password": args.password,
        }
        if args.hub_cache_port is not None:
            hub_cache_address = f"{args.registry_name}:{args.hub_cache_port}"
            stack_values |= {
                "hub_cache_port": args.hub_cache_port,
                "hub_cache_address": hub_cache_address,
                "hub_cache_url": f"https://{hub_cache_address}",
            }
        install = host.run_script(host_manifest.script("install_packages"), stack_values)
        placed = {
            host_file.role: host.place_file(host_file, content, depends_on=[install])
            for host_file, content in rendered_files(host_manifest, stack_values)
        }
        trust = host.run_script(
            host_manifest.script("trust_registry"),
            stack_values,
            depends_on=[install, placed["ca_cert"]],
            triggers=[args.ca_cert_pem],
        )
        host.run_script(
            host_manifest.script("verify_registry"),
            stack_values,
            depends_on=[trust, placed["login_password"], *args.registry_ready],
            triggers=[
                pulumi.Output.all(args.password, args.ca_cert_pem, args.registry_fingerprint).apply(
                    lambda values: sha256_hex(*values)
                )
            ],
        )

        if hub_cache:
            # Trusted before dockerd is told to use it; used once the cache is up.
            trust_cache = host.run_script(
                host_manifest.script("trust_hub_cache"),
                stack_values,
                depends_on=[install, placed["ca_cert"]],
                triggers=[args.ca_cert_pem],
            )
            use_mirror = host.run_script(
                host_manifest.script("use_registry_mirror"),
                stack_values,
                depends_on=[trust_cache, placed["docker_daemon"], *args.registry_ready],
            )
            # Turning the cache off: dockerd drops the mirror, the cache port's trust goes.
            host.run_script_when_removed(
                host_manifest.script("drop_registry_mirror"), stack_values, [use_mirror]
            )
            host.run_script_when_removed(
                host_manifest.script("forget_hub_cache"), stack_values, [trust_cache]
            )

        self.public_ip = host.droplet.ipv4_address
        self.droplet_urn = host.droplet.droplet_urn
        self.private_ip = host.droplet.ipv4_address_private
        self.register_outputs({"publicIp": self.public_ip, "privateIp": self.private_ip})
