"""DigitalOcean's Cloud Firewalls on the twin: the program's `Firewall` resources as nftables.

A Cloud Firewall filters in DigitalOcean's network, before the droplet, on its public and VPC
interfaces alike; it is stateful (replies to an admitted connection pass), it admits only what a
rule names once a droplet has any firewall (several firewalls on one droplet add up), and a
droplet with none is open. The twin's droplets hang off the router's two bridges, whose bridged
IPv4/IPv6 traffic passes the router's `inet` hooks with connection tracking (`br_netfilter`,
`net.bridge.bridge-nf-call-iptables`): `forward` between droplets, `output` from the deployer
and the hub, `input` to them. Each guarded droplet gets a chain for what reaches it (its inbound
rules) and one for what leaves it (its outbound rules), built from the firewalls' inputs as the
engine holds them, never by hand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TABLE = "twin_cloud_firewalls"

# Reachability of (address, port) pairs, probed at once from one network namespace: "open",
# "refused" (nothing listens: the SYN got through) or "dropped" (no answer: filtered).
PROBE = """
import concurrent.futures, json, socket, sys
def probe(target):
    try:
        socket.create_connection((target[0], target[1]), timeout=float(sys.argv[2])).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, socket.timeout):
        return "dropped"
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


@dataclass(frozen=True)
class Host:
    """What a firewall sees of a droplet: its id, its addresses and its tags."""

    droplet_id: str
    addresses: tuple[str, ...]
    tags: tuple[str, ...]


def _droplet_ids(raw: Iterable[Any] | None) -> set[str]:
    return {str(int(float(value))) for value in raw or ()}


def _peers(
    rule: Mapping[str, Any], side: str, hosts: Sequence[Host], load_balancers: Mapping[str, str]
) -> list[str]:
    """The addresses a rule's `side` ("source" or "destination") names."""
    if rule.get(f"{side}KubernetesIds"):
        raise NotImplementedError(f"{side}KubernetesIds: the twin has no Kubernetes clusters")
    tags = set(rule.get(f"{side}Tags") or ())
    ids = _droplet_ids(rule.get(f"{side}DropletIds"))
    peers = list(rule.get(f"{side}Addresses") or ())
    for host in hosts:
        if host.droplet_id in ids or tags & set(host.tags):
            peers.extend(host.addresses)
    for uid in rule.get(f"{side}LoadBalancerUids") or ():
        if uid not in load_balancers:
            raise KeyError(f"{side}LoadBalancerUids: no load balancer {uid} in the twin")
        peers.append(load_balancers[uid])
    return peers


def _protocol(rule: Mapping[str, Any], family: str) -> str:
    """The rule's protocol and ports as an nftables match."""
    protocol = rule["protocol"]
    if protocol == "icmp":
        return "meta l4proto icmp" if family == "ip" else "meta l4proto ipv6-icmp"
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"firewall rule protocol {protocol!r}: tcp, udp or icmp")
    ports = str(rule.get("portRange") or "")
    if ports in ("all", "0", "1-65535"):
        return f"meta l4proto {protocol}"
    low, _, high = ports.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise ValueError(f"firewall rule portRange {ports!r}: a port, LOW-HIGH or all")
    return f"meta l4proto {protocol} th dport {ports}"


def _rule_lines(rule: Mapping[str, Any], peers: list[str], direction: str) -> list[str]:
    """One nftables line per address family the rule's peers have; none if it names nobody."""
    lines = []
    for family, version in (("ip", 4), ("ip6", 6)):
        networks = [
            network
            for network in (ipaddress.ip_network(peer, strict=False) for peer in peers)
            if network.version == version
        ]
        if networks:
            # Overlapping intervals are an error in an nftables set: merge them first.
            merged = ", ".join(str(n) for n in ipaddress.collapse_addresses(networks))  # type: ignore[type-var]
            lines.append(f"{family} {direction} {{ {merged} }} {_protocol(rule, family)} return")
    return lines


def _address_match(host: Host, direction: str) -> list[str]:
    by_family: dict[str, list[str]] = {}
    for address in host.addresses:
        family = "ip" if ipaddress.ip_address(address).version == 4 else "ip6"
        by_family.setdefault(family, []).append(address)
    return [f"{family} {direction} {{ {', '.join(a)} }}" for family, a in by_family.items()]


def ruleset(
    firewalls: Iterable[Mapping[str, Any]],
    hosts: Sequence[Host],
    load_balancers: Mapping[str, str],
) -> str:
    """The nftables script (for `nft -f -`) that replaces the twin's firewall table with these
    firewalls' rules over these droplets (`load_balancers`: uid -> address)."""
    inbound: dict[str, list[Mapping[str, Any]]] = {}
    outbound: dict[str, list[Mapping[str, Any]]] = {}
    for firewall in firewalls:
        ids = _droplet_ids(firewall.get("dropletIds"))
        tags = set(firewall.get("tags") or ())
        for host in hosts:
            if host.droplet_id in ids or tags & set(host.tags):
                inbound.setdefault(host.droplet_id, []).extend(firewall.get("inboundRules") or ())
                outbound.setdefault(host.droplet_id, []).extend(firewall.get("outboundRules") or ())
    guarded = [host for host in hosts if host.droplet_id in inbound]
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for host in guarded:
        for chain, rules, side, direction in (
            (f"in_{host.droplet_id}", inbound[host.droplet_id], "source", "saddr"),
            (f"out_{host.droplet_id}", outbound[host.droplet_id], "destination", "daddr"),
        ):
            lines.append(f"  chain {chain} {{")
            for rule in rules:
                peers = _peers(rule, side, hosts, load_balancers)
                lines.extend(f"    {line}" for line in _rule_lines(rule, peers, direction))
            lines += ["    drop", "  }"]
    # What leaves a guarded droplet passes its outbound chain, what reaches one its inbound
    # chain (a packet between two guarded droplets both); each chain returns what it admits.
    leaving = [
        f"    {match} jump out_{host.droplet_id}"
        for host in guarded
        for match in _address_match(host, "saddr")
    ]
    reaching = [
        f"    {match} jump in_{host.droplet_id}"
        for host in guarded
        for match in _address_match(host, "daddr")
    ]
    for hook, jumps in (
        ("forward", leaving + reaching),
        ("output", reaching),
        ("input", leaving),
    ):
        lines += [
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority filter; policy accept;",
            "    ct state established,related accept",
            *jumps,
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"
