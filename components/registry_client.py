"""A client host: trusts the stack's CA, resolves the registry, and proves login, push and pull."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import rendering, versions
from components.remote import DropletArgs, RemoteHost


@dataclass
class RegistryClientArgs:
    host: DropletArgs
    registry_name: str  # the name this client uses (the DNS name when a domain is set)
    port: int
    hosts_ip: pulumi.Input[str] | None  # mapped in /etc/hosts; None when DNS resolves the name
    ca_cert_pem: pulumi.Input[str]
    user: str
    password: pulumi.Input[str]
    registry_ready: pulumi.Resource
    registry_fingerprint: pulumi.Input[str]


class RegistryClient(pulumi.ComponentResource):
    """A droplet with Docker that trusts the registry and proves it works.

    The proof (`docker login` with the password on stdin, build, push, pull, digest compare)
    re-runs whenever the registry's files, the CA or the password change; if it fails,
    `pulumi up` fails.
    """

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryClientArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("private-registry:index:RegistryClient", name, None, opts)

        host = RemoteHost.create(name, args.host, parent=self)
        install = host.run_script(f"{name}-install-packages", "install-packages.sh",
                                  args=versions.CLIENT_HOST_PACKAGES)
        ca_file = host.place_file(f"{name}-file-ca-cert", rendering.CLIENT_HOST_FILES["ca_cert"],
                                  args.ca_cert_pem, depends_on=[install])
        password_file = host.place_file(
            f"{name}-file-login-password", rendering.CLIENT_HOST_FILES["login_password"],
            args.password, depends_on=[install])

        hosts_ip: pulumi.Input[str] = args.hosts_ip if args.hosts_ip is not None else ""
        trust = host.run_script(
            f"{name}-trust-registry", "trust-registry.sh",
            args=pulumi.Output.from_input(hosts_ip).apply(
                lambda ip: [args.registry_name, str(args.port), rendering.CLIENT_CA_PATH,
                            *([ip] if ip else [])]),
            depends_on=[install, ca_file], triggers=[args.ca_cert_pem])

        address = f"{args.registry_name}:{args.port}"
        host.run_script(
            f"{name}-verify-registry", "verify-registry.sh",
            args=[address, args.user, rendering.CLIENT_PASSWORD_PATH],
            depends_on=[trust, password_file, args.registry_ready],
            triggers=[pulumi.Output.all(args.password, args.ca_cert_pem,
                                        args.registry_fingerprint).apply(
                lambda values: rendering.sha256_hex(*values))])

        self.public_ip = host.droplet.ipv4_address
        self.private_ip = host.droplet.ipv4_address_private
        self.register_outputs({"publicIp": self.public_ip, "privateIp": self.private_ip})
