"""Network: the admin SSH key pair, droplet tags and the Cloud Firewalls.

No VPC of its own: the droplets join their region's default VPC, which DigitalOcean owns. A VPC
this stack created would become the region's default when it is the first one there ("Create a
VPC": "the first one that you create will be set as the default for that region"), and a default
VPC cannot be deleted ("Delete a VPC": 403), so `pulumi destroy` would fail on it (pydo
reference, vpcs.create / vpcs.delete, docs.digitalocean.com).
"""

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
    registry_port: int
    metrics_port: int  # nginx's metrics listener, for droplets tagged `metrics_tag`
    admin_cidrs: Sequence[str]
    allowed_cidrs: Sequence[str]


def _outbound_anywhere() -> list[digitalocean.FirewallOutboundRuleArgs]:
    """Hosts fetch packages and images; replies to allowed inbound traffic are stateful."""
    return [
        digitalocean.FirewallOutboundRuleArgs(
            protocol="tcp", port_range="1-65535", destination_addresses=EVERYWHERE
        ),
        digitalocean.FirewallOutboundRuleArgs(
            protocol="udp", port_range="1-65535", destination_addresses=EVERYWHERE
        ),
        digitalocean.FirewallOutboundRuleArgs(protocol="icmp", destination_addresses=EVERYWHERE),
    ]


class Network(pulumi.ComponentResource):
    """SSH key (ED25519, registered with DigitalOcean), tags and default-deny firewalls.

    Firewalls select droplets by tag, so they exist before the droplets boot. The registry
    port is open only to the client hosts' tag and `allowed_cidrs` (firewalls apply to VPC
    traffic too, so other droplets in the region's default VPC stay out); SSH only to
    `admin_cidrs`; the metrics port only to droplets tagged `metrics_tag` (a Prometheus
    scraper in the VPC; the registry host publishes it on its private address only); nothing
    else is open. The registry's own port 5000 is never published.
    """

    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Output[str]
    ssh_key_fingerprint: pulumi.Output[str]
    server_tag: pulumi.Output[str]
    client_tag: pulumi.Output[str]
    metrics_tag: pulumi.Output[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        admin_key = tls.PrivateKey(f"{name}-admin-ssh-key", algorithm="ED25519", opts=child)
        do_key = digitalocean.SshKey(
            f"{name}-admin-ssh-key",
            name=f"{args.name_prefix}-admin",
            public_key=admin_key.public_key_openssh,
            opts=child,
        )
        server_tag = digitalocean.Tag(
            f"{name}-server-tag", name=f"{args.name_prefix}-server", opts=child
        )
        client_tag = digitalocean.Tag(
            f"{name}-client-tag", name=f"{args.name_prefix}-client", opts=child
        )
        metrics_tag = digitalocean.Tag(
            f"{name}-metrics-tag", name=f"{args.name_prefix}-metrics", opts=child
        )
        ssh_from_admins = digitalocean.FirewallInboundRuleArgs(
            protocol="tcp", port_range="22", source_addresses=list(args.admin_cidrs)
        )

        digitalocean.Firewall(
            f"{name}-server-firewall",
            name=f"{args.name_prefix}-server",
            tags=[server_tag.name],
            inbound_rules=[
                ssh_from_admins,
                digitalocean.FirewallInboundRuleArgs(
                    protocol="tcp",
                    port_range=str(args.registry_port),
                    source_tags=[client_tag.name],
                    source_addresses=list(args.allowed_cidrs) or None,
                ),
                digitalocean.FirewallInboundRuleArgs(
                    protocol="tcp",
                    port_range=str(args.metrics_port),
                    source_tags=[metrics_tag.name],
                ),
            ],
            outbound_rules=_outbound_anywhere(),
            opts=child,
        )
        digitalocean.Firewall(
            f"{name}-client-firewall",
            name=f"{args.name_prefix}-client",
            tags=[client_tag.name],
            inbound_rules=[ssh_from_admins],
            outbound_rules=_outbound_anywhere(),
            opts=child,
        )

        self.ssh_private_key = admin_key.private_key_openssh
        self.ssh_public_key = admin_key.public_key_openssh
        self.ssh_key_fingerprint = do_key.fingerprint
        self.server_tag = server_tag.name
        self.client_tag = client_tag.name
        self.metrics_tag = metrics_tag.name
        self.register_outputs({"sshPublicKey": self.ssh_public_key})
