"""DigitalOcean's own watch on the registry: an uptime check of its endpoint, e-mail alerts, and
one project that shows the stack's resources together in the control panel.

Checked against terraform-provider-digitalocean (which pulumi-digitalocean wraps):
digitalocean/uptime/resource_uptime_check.go (`type` ping|http|https, `regions` us_east,
us_west, eu_west, se_asia, `enabled`), digitalocean/uptime/resource_uptime_alert.go (`type`
latency|down|down_global|ssl_expiry, `threshold`, `comparison` greater_than|less_than, `period`
2m..1h, `notifications.email`), digitalocean/monitoring/resource_monitor_alert.go (`type`
v1/insights/droplet/cpu|memory_utilization_percent|disk_utilization_percent, `compare`
GreaterThan, `window` 5m|10m|30m|1h, `entities` droplet ids, `alerts.email`) and
digitalocean/project/resource_project.go (`resources`: URNs; on delete the resources move to
the account's default project first). DigitalOcean mails alerts only to addresses verified on
the account (API reference, "Create a New Alert").

What the uptime check can see: DigitalOcean probes from the Internet, from addresses it does not
publish as a fixed list, and the Cloud Firewall admits the registry port only to the client
droplets and `allowedCidrs`. So the check is enabled only when `allowedCidrs` opens the port to
everyone; otherwise it exists disabled (turn it on by opening the port). It asks `/healthz`,
which answers without credentials; whether DigitalOcean's https check accepts the stack's
private CA is not documented, so a TLS failure shows as "down" too.

The droplet alerts read DigitalOcean's metrics agent (the droplets are created with
`monitoring`): CPU and memory of the registry host, and its disk as the agent reports it (the
droplet's own disk; the data volume has the host's disk check, `diskAlertPercent`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean

from components.manifest import REGISTRY_LAYOUT

# The uptime checkers' regions closest to each droplet region, plus one on another continent,
# so `down_global` (down from every region) means the registry, not one network path.
CHECK_REGIONS = {
    "us_east": ("nyc1", "nyc3", "tor1", "atl1"),
    "us_west": ("sfo2", "sfo3"),
    "eu_west": ("ams3", "fra1", "lon1"),
    "se_asia": ("sgp1", "blr1", "syd1"),
}
CPU_PERCENT = 90
MEMORY_PERCENT = 90
ALERT_WINDOW = "10m"
UPTIME_ALERT_PERIOD = "5m"
# Certificates renew on the `pulumi up` after their early-renewal time (30 days by default):
# a certificate this close to its end means nobody ran `pulumi up --refresh`.
CERT_EXPIRY_DAYS = 14


def check_regions(region: str) -> list[str]:
    """The checker region nearest to `region`, and a second one across an ocean."""
    nearest = next(name for name, regions in CHECK_REGIONS.items() if region in regions)
    other = "eu_west" if nearest != "eu_west" else "us_east"
    return [nearest, other]


def open_to_everyone(cidrs: Sequence[str]) -> bool:
    """Whether the firewall's extra sources admit every IPv4 address (the checkers')."""
    return any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in cidrs if ":" not in cidr)


@dataclass
class MonitoringArgs:
    name_prefix: str  # of every DigitalOcean name; the project's name
    stack: str
    region: str
    endpoint: pulumi.Input[str]  # https://host:port of the registry, as the Internet sees it
    registry_droplet_ids: Sequence[pulumi.Input[str]]  # every registry node
    allowed_cidrs: Sequence[str]  # the firewall's sources for the registry port
    alert_emails: Sequence[str]
    disk_alert_percent: int
    project_resources: Sequence[pulumi.Input[str]]  # DigitalOcean URNs (do:droplet:..., ...)
    # publicTls: the host renews the certificate itself (registry-acme.timer), not `pulumi up`.
    public_tls: bool = False


class Monitoring(pulumi.ComponentResource):
    """The uptime check, the alerts (only with `alert_emails`) and the stack's project."""

    uptime_check_id: pulumi.Output[str]
    project_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        check = digitalocean.UptimeCheck(
            f"{name}-uptime",
            name=f"{args.name_prefix}-registry",
            type="https",
            target=pulumi.Output.concat(args.endpoint, REGISTRY_LAYOUT.health_path),
            regions=check_regions(args.region),
            enabled=open_to_everyone(args.allowed_cidrs),
            opts=child,
        )
        if args.alert_emails:
            emails = list(args.alert_emails)
            notify = [digitalocean.UptimeAlertNotificationArgs(emails=emails)]
            digitalocean.UptimeAlert(
                f"{name}-down",
                name=f"{args.name_prefix}: registry down",
                check_id=check.id,
                type="down_global",
                period=UPTIME_ALERT_PERIOD,
                notifications=notify,
                opts=child,
            )
            digitalocean.UptimeAlert(
                f"{name}-certificate",
                name=f"{args.name_prefix}: certificate expires soon ("
                + (
                    # Renewal starts with a third of the lifetime left (15 of 45 days): an alert
                    # means every twice-daily attempt failed for a day or more.
                    "renewal failing: journalctl -u registry-acme.service"
                    if args.public_tls
                    else "run pulumi up --refresh"
                )
                + ")",
                check_id=check.id,
                type="ssl_expiry",
                threshold=CERT_EXPIRY_DAYS,
                comparison="less_than",
                period=UPTIME_ALERT_PERIOD,
                notifications=notify,
                opts=child,
            )
            for metric, percent, what in (
                ("cpu", CPU_PERCENT, "CPU"),
                ("memory_utilization_percent", MEMORY_PERCENT, "memory"),
                ("disk_utilization_percent", args.disk_alert_percent, "disk"),
            ):
                digitalocean.MonitorAlert(
                    f"{name}-{metric.split('_')[0]}",
                    description=f"{args.name_prefix} registry host: {what} above {percent}%",
                    type=f"v1/insights/droplet/{metric}",
                    compare="GreaterThan",
                    value=percent,
                    window=ALERT_WINDOW,
                    entities=list(args.registry_droplet_ids),
                    alerts=digitalocean.MonitorAlertAlertsArgs(emails=emails),
                    enabled=True,
                    opts=child,
                )
        project = digitalocean.Project(
            f"{name}-project",
            name=args.name_prefix,
            description=f"Private Docker registry, Pulumi stack {args.stack}",
            purpose="Service or API",
            resources=list(args.project_resources),
            opts=child,
        )

        self.uptime_check_id = check.id
        self.project_id = project.id
        self.register_outputs({"uptimeCheckId": self.uptime_check_id, "projectId": self.project_id})
