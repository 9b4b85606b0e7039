"""Network: the admin SSH key pair, a VPC, droplet tags and the Cloud Firewalls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_tls as tls

EVERYWHERE = ["0.0.0.0/0", "::/0"]


@dataclass
class NetworkArgs:
    name_prefix: str
    region: str
    registry_port: int
    admin_cidrs: Sequence[str]
    allowed_cidrs: Sequence[str]


def _outbound_anywhere() -> list[digitalocean.FirewallOutboundRuleArgs]:
    """Hosts fetch packages and images; replies to allowed inbound traffic are stateful."""
    return [
        digitalocean.FirewallOutboundRuleArgs(protocol="tcp", port_range="1-65535",
                                              destination_addresses=EVERYWHERE),
        digitalocean.FirewallOutboundRuleArgs(protocol="udp", port_range="1-65535",
                                              destination_addresses=EVERYWHERE),
        digitalocean.FirewallOutboundRuleArgs(protocol="icmp", destination_addresses=EVERYWHERE),
    ]


class Network(pulumi.ComponentResource):
    """SSH key (ED25519, registered with DigitalOcean), VPC, tags and default-deny firewalls.

    Firewalls select droplets by tag, so they exist before the droplets boot. The registry
    port is open only to the client hosts' tag, the VPC and `allowed_cidrs`; SSH only to
    `admin_cidrs`; nothing else is open. The registry's own port 5000 is never published.
    """

    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Output[str]
    ssh_key_fingerprint: pulumi.Output[str]
    vpc_id: pulumi.Output[str]
    server_tag: pulumi.Output[str]
    client_tag: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("private-registry:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        admin_key = tls.PrivateKey(f"{name}-admin-ssh-key", algorithm="ED25519", opts=child)
        do_key = digitalocean.SshKey(f"{name}-admin-ssh-key", name=f"{args.name_prefix}-admin",
                                     public_key=admin_key.public_key_openssh, opts=child)
        vpc = digitalocean.Vpc(f"{name}-vpc", name=f"{args.name_prefix}-vpc", region=args.region,
                               description="private registry and its clients", opts=child)
        server_tag = digitalocean.Tag(f"{name}-server-tag", name=f"{args.name_prefix}-server",
                                      opts=child)
        client_tag = digitalocean.Tag(f"{name}-client-tag", name=f"{args.name_prefix}-client",
                                      opts=child)
        ssh_from_admins = digitalocean.FirewallInboundRuleArgs(
            protocol="tcp", port_range="22", source_addresses=list(args.admin_cidrs))

        digitalocean.Firewall(
            f"{name}-server-firewall", name=f"{args.name_prefix}-server",
            tags=[server_tag.name],
            inbound_rules=[
                ssh_from_admins,
                digitalocean.FirewallInboundRuleArgs(
                    protocol="tcp", port_range=str(args.registry_port),
                    source_tags=[client_tag.name],
                    source_addresses=pulumi.Output.from_input(vpc.ip_range).apply(
                        lambda ip_range: [ip_range, *args.allowed_cidrs])),
            ],
            outbound_rules=_outbound_anywhere(), opts=child)
        digitalocean.Firewall(
            f"{name}-client-firewall", name=f"{args.name_prefix}-client",
            tags=[client_tag.name], inbound_rules=[ssh_from_admins],
            outbound_rules=_outbound_anywhere(), opts=child)

        self.ssh_private_key = admin_key.private_key_openssh
        self.ssh_public_key = admin_key.public_key_openssh
        self.ssh_key_fingerprint = do_key.fingerprint
        self.vpc_id = vpc.id
        self.server_tag = server_tag.name
        self.client_tag = client_tag.name
        self.register_outputs({"vpcId": self.vpc_id, "sshPublicKey": self.ssh_public_key})
