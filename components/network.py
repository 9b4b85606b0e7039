"""Network: the admin SSH key pair, droplet tags and the Cloud Firewalls.

No VPC of its own: the droplets join their region's default VPC, which DigitalOcean owns. A VPC
this stack created would become the region's default when it is the first one there ("Create a
VPC": "the first one that you create will be set as the default for that region"), and a default
VPC cannot be deleted ("Delete a VPC": 403), so `pulumi destroy` would fail on it (pydo
reference, vpcs.create / vpcs.delete, docs.digitalocean.com).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_tls as tls

from components.manifest import REGISTRY_LAYOUT

EVERYWHERE = ["0.0.0.0/0", "::/0"]


@dataclass
class NetworkArgs:
    name_prefix: str
    registry_port: int
    metrics_port: int  # nginx's metrics listener, for droplets tagged `metrics_tag`
    admin_cidrs: Sequence[str]
    allowed_cidrs: Sequence[str]
    # Storage `spaces`: a load balancer in this region in front of every registry droplet.
    load_balancer_region: str | None = None
    health_path: str = REGISTRY_LAYOUT.health_path
    # nginx's listener for the balancer: PROXY protocol, so the nodes log the clients' addresses.
    balancer_port: int = REGISTRY_LAYOUT.balancer_port
    # (domain, record name): an A record for the load balancer, when a domain is set.
    load_balancer_record: tuple[str, str] | None = None
    # The client droplets' public IPv4 addresses: with `allowed_cidrs`, all the balancer admits.
    load_balancer_clients: pulumi.Input[Sequence[str]] = ()
    # publicTls: the port of the ACME HTTP-01 challenges, open to the whole Internet (the CA's
    # validation addresses are not published); nginx answers only the challenge path there.
    acme_http_port: int | None = None
    # The Docker Hub cache's port (hubCache, storage volume): admitted as the registry port is.
    hub_cache_port: int | None = None


def load_balancer_firewall(
    client_ips: Sequence[str], allowed_cidrs: Sequence[str]
) -> digitalocean.LoadBalancerFirewallArgs:
    """Who may reach the balancer: the client droplets and `allowed_cidrs`, as its firewall's
    `allow` (Python `allows`) entries ("strings in the form: 'ip:1.2.3.4' or 'cidr:1.2.0.0/16'",
    terraform-provider-digitalocean digitalocean/loadbalancer/resource_loadbalancer.go). The
    balancer has no `network_stack`, so the API's default, IPV4: IPv6 blocks cannot reach it and
    are left out. With nobody to admit, everything is denied (as the droplet firewall of storage
    `volume` then opens the registry port to nobody)."""
    allow = [f"ip:{ip}" for ip in client_ips] + [
        f"cidr:{cidr}" for cidr in allowed_cidrs if ipaddress.ip_network(cidr).version == 4
    ]
    if not allow:
        return digitalocean.LoadBalancerFirewallArgs(denies=["cidr:0.0.0.0/0"])
    return digitalocean.LoadBalancerFirewallArgs(allows=allow)


# The load balancer's health checks, at the provider's minimums (3 s interval, 3 s timeout,
# 2 checks each way: `validation.IntBetween(3, 300)` and `(2, 10)` in terraform-provider-
# digitalocean digitalocean/loadbalancer/resource_loadbalancer.go): a node is out within about
# 2 x 3 s of failing, back after 2 good checks.
HEALTH_CHECK_INTERVAL_SECONDS = 3
HEALTH_CHECK_TIMEOUT_SECONDS = 3
HEALTH_CHECK_THRESHOLD = 2


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
    else is open. The registry's API has no TCP port (a Unix socket nginx shares).
    With a load balancer, the droplets admit nginx's listener for it (`balancer_port`) from the
    balancer alone, and the balancer's own firewall admits the client droplets and
    `allowed_cidrs` to the registry port.
    """

    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Output[str]
    ssh_key_fingerprint: pulumi.Output[str]
    server_tag: pulumi.Output[str]
    client_tag: pulumi.Output[str]
    load_balancer_ip: pulumi.Output[str] | None
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

        self.load_balancer_ip = None
        if args.load_balancer_region is None:
            registry_port_sources = digitalocean.FirewallInboundRuleArgs(
                protocol="tcp",
                port_range=str(args.registry_port),
                source_tags=[client_tag.name],
                source_addresses=list(args.allowed_cidrs) or None,
            )
        else:
            balancer = self._load_balancer(name, args, server_tag.name)
            self.load_balancer_ip = balancer.ip
            if args.load_balancer_record is not None:
                domain, record = args.load_balancer_record
                digitalocean.DnsRecord(
                    f"{name}-registry-lb-dns",
                    domain=domain,
                    type="A",
                    name=record,
                    value=balancer.ip,
                    ttl=300,
                    opts=child,
                )
            # Every client comes through the balancer, to nginx's listener for it, and so do its
            # health checks.
            registry_port_sources = digitalocean.FirewallInboundRuleArgs(
                protocol="tcp",
                port_range=str(args.balancer_port),
                source_load_balancer_uids=[balancer.id],
            )
        # The Docker Hub cache: the client droplets and `allowed_cidrs` only, never the Internet
        # (nginx serves them without credentials).
        hub_cache_sources = (
            [
                digitalocean.FirewallInboundRuleArgs(
                    protocol="tcp",
                    port_range=str(args.hub_cache_port),
                    source_tags=[client_tag.name],
                    source_addresses=list(args.allowed_cidrs) or None,
                )
            ]
            if args.hub_cache_port is not None
            else []
        )
        digitalocean.Firewall(
            f"{name}-server-firewall",
            name=f"{args.name_prefix}-server",
            tags=[server_tag.name],
            inbound_rules=[
                ssh_from_admins,
                registry_port_sources,
                *hub_cache_sources,
                digitalocean.FirewallInboundRuleArgs(
                    protocol="tcp",
                    port_range=str(args.metrics_port),
                    source_tags=[metrics_tag.name],
                ),
                *(
                    [
                        digitalocean.FirewallInboundRuleArgs(
                            protocol="tcp",
                            port_range=str(args.acme_http_port),
                            source_addresses=["0.0.0.0/0", "::/0"],
                        )
                    ]
                    if args.acme_http_port is not None
                    else []
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

    def _load_balancer(
        self, name: str, args: NetworkArgs, server_tag: pulumi.Input[str]
    ) -> digitalocean.LoadBalancer:
        """A regional load balancer over every registry droplet (by their tag) in TLS
        passthrough: the private CA's TLS ends on each node's nginx, so clients trust exactly
        what they trust without it (passthrough needs https on both sides, and then adds no
        X-Forwarded-* headers). It sends the registry port's connections to nginx's listener for
        it, each opened with a PROXY protocol line naming the client (its health checks too:
        "Backend services need to accept PROXY protocol headers or the Droplets fail the load
        balancer's health checks", docs.digitalocean.com/glossary/proxy). Health: the nodes'
        unauthenticated health path over https."""
        return digitalocean.LoadBalancer(
            f"{name}-registry-lb",
            name=f"{args.name_prefix}-registry",
            region=str(args.load_balancer_region),
            droplet_tag=server_tag,
            forwarding_rules=[
                digitalocean.LoadBalancerForwardingRuleArgs(
                    entry_port=args.registry_port,
                    entry_protocol="https",
                    target_port=args.balancer_port,
                    target_protocol="https",
                    tls_passthrough=True,
                )
            ],
            enable_proxy_protocol=True,
            healthcheck=digitalocean.LoadBalancerHealthcheckArgs(
                protocol="https",
                port=args.balancer_port,
                path=args.health_path,
                check_interval_seconds=HEALTH_CHECK_INTERVAL_SECONDS,
                response_timeout_seconds=HEALTH_CHECK_TIMEOUT_SECONDS,
                healthy_threshold=HEALTH_CHECK_THRESHOLD,
                unhealthy_threshold=HEALTH_CHECK_THRESHOLD,
            ),
            # It filters what arrives at the balancer; the health checks leave from it.
            firewall=pulumi.Output.from_input(args.load_balancer_clients).apply(
                lambda ips: load_balancer_firewall(ips, args.allowed_cidrs)
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
