"""Storage `spaces`, cache `valkey`: one DigitalOcean Managed Valkey cluster that every registry
node uses as its blob descriptor cache, reachable from those nodes alone.

- Eviction `allkeys_lru`: the registry sets no expiry on its keys and its configuration
  reference says Redis "must" evict allkeys-lru; DigitalOcean's default is `noeviction`, which
  fails writes once memory is full. The cluster's `eviction_policy` is set through the API's
  eviction policy call for redis and valkey engines only (`SetEvictionPolicy` in
  terraform-provider-digitalocean digitalocean/database/resource_database_cluster.go; the value
  is godo's, databases.go: `EvictionPolicyAllKeysLRU = "allkeys_lru"`).
- The cluster joins the region's default VPC, as the droplets do; the nodes reach its private
  host. Its firewall (`DatabaseFirewall`, rule type `droplet`: "The possible values are:
  droplet, k8s, ip_addr, tag, or app", pulumi-digitalocean `DatabaseFirewallRuleArgs`) admits
  the registry droplets by id and nothing else.
- TLS only; its certificate is Let's Encrypt's ("uses Let's Encrypt certification, which does
  not require that you download a CA certificate", How to Connect to Valkey Database Clusters,
  docs.digitalocean.com), so the registry trusts it with the image's public CA bundle.
- Its `password` is a secret output of the provider; it reaches the hosts only in registry.env.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean

VALKEY_VERSION = "8"
# The smallest Valkey size: 1 GiB of memory holds millions of blob descriptors.
VALKEY_SIZE = "db-s-1vcpu-1gb"
EVICTION_POLICY = "allkeys_lru"


@dataclass
class SharedCacheArgs:
    name_prefix: str
    region: str


class SharedCache(pulumi.ComponentResource):
    """The Valkey cluster. `address` is its private `host:port`, `password` (secret) the
    default user's; `admit_only` creates the firewall once the nodes exist."""

    address: pulumi.Output[str]
    password: pulumi.Output[str]

    def __init__(
        self, name: str, args: SharedCacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:SharedCache", name, None, opts)
        self._name = name
        self._cluster = digitalocean.DatabaseCluster(
            f"{name}-valkey",
            name=f"{args.name_prefix}-cache",
            engine="valkey",
            version=VALKEY_VERSION,
            size=VALKEY_SIZE,
            region=args.region,
            node_count=1,
            eviction_policy=EVICTION_POLICY,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Numbers cross the wire as floats: 25061.0 must read 25061.
        self.address = pulumi.Output.concat(
            self._cluster.private_host, ":", self._cluster.port.apply(lambda port: str(int(port)))
        )
        self.password = pulumi.Output.secret(self._cluster.password)
        self.register_outputs({"address": self.address})

    def admit_only(self, droplet_ids: Sequence[pulumi.Input[str]]) -> digitalocean.DatabaseFirewall:
        """The cluster's firewall: these droplets, nothing else."""
        return digitalocean.DatabaseFirewall(
            f"{self._name}-firewall",
            cluster_id=self._cluster.id,
            rules=[
                digitalocean.DatabaseFirewallRuleArgs(type="droplet", value=droplet_id)
                for droplet_id in droplet_ids
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
