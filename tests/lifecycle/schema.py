"""What each provider does with a changed input: which inputs force a replacement.

Inputs use the wire names (camelCase) the engine and the mocks see. Every entry cites the
provider source it was read from (commit checked: terraform-provider-digitalocean 401992a,
terraform-provider-tls d72d90e, terraform-provider-random ad788e2, pulumi-command 010bd8e);
a property not listed updates in place.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

DROPLET = "digitalocean:index/droplet:Droplet"
VOLUME = "digitalocean:index/volume:Volume"
ATTACHMENT = "digitalocean:index/volumeAttachment:VolumeAttachment"
VPC = "digitalocean:index/vpc:Vpc"
FIREWALL = "digitalocean:index/firewall:Firewall"
TAG = "digitalocean:index/tag:Tag"
SSH_KEY = "digitalocean:index/sshKey:SshKey"
DNS_RECORD = "digitalocean:index/dnsRecord:DnsRecord"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
RANDOM_ID = "random:index/randomId:RandomId"
COMMAND = "command:remote:Command"
UPTIME_CHECK = "digitalocean:index/uptimeCheck:UptimeCheck"
UPTIME_ALERT = "digitalocean:index/uptimeAlert:UptimeAlert"
MONITOR_ALERT = "digitalocean:index/monitorAlert:MonitorAlert"
PROJECT = "digitalocean:index/project:Project"
LOAD_BALANCER = "digitalocean:index/loadBalancer:LoadBalancer"

_SUBJECT_AND_SANS = frozenset({"subject", "dnsNames", "ipAddresses", "uris"})

REPLACE_ON: dict[str, frozenset[str]] = {
    # digitalocean/terraform-provider-digitalocean digitalocean/droplet/resource_droplet.go
    # (`ForceNew: true`). `size`, `name`, `tags`, `ipv6`, `graceful_shutdown` update in place.
    DROPLET: frozenset(
        {
            "image",
            "region",
            "publicNetworking",
            "sshKeys",
            "userData",
            "monitoring",
            "dropletAgent",
            "vpcUuid",
            "gpuPartitionMode",
        }
    ),
    # .../digitalocean/volume/resource_volume.go: `size` updates in place (a resize of the
    # block device only); everything else that identifies the volume is force-new.
    VOLUME: frozenset(
        {
            "region",
            "name",
            "description",
            "snapshotId",
            "initialFilesystemType",
            "initialFilesystemLabel",
        }
    ),
    # .../digitalocean/volume/resource_volume_attachment.go
    ATTACHMENT: frozenset({"dropletId", "volumeId"}),
    # .../digitalocean/vpc/resource_vpc.go
    VPC: frozenset({"region", "ipRange"}),
    # .../digitalocean/firewall/resource_firewall.go: no force-new property.
    FIREWALL: frozenset(),
    # .../digitalocean/tag/resource_tag.go
    TAG: frozenset({"name"}),
    # .../digitalocean/sshkey/resource_ssh_key.go
    SSH_KEY: frozenset({"publicKey"}),
    # .../digitalocean/uptime/resource_uptime_check.go, resource_uptime_alert.go,
    # .../digitalocean/monitoring/resource_monitor_alert.go, .../project/resource_project.go:
    # no force-new argument (a project's `resources` move in and out in place).
    UPTIME_CHECK: frozenset(),
    UPTIME_ALERT: frozenset(),
    MONITOR_ALERT: frozenset(),
    PROJECT: frozenset(),
    # .../digitalocean/domain/resource_record.go
    DNS_RECORD: frozenset({"type", "domain"}),
    # hashicorp/terraform-provider-tls internal/provider/resource_private_key.go
    # (`RequiresReplace()` plan modifiers)
    PRIVATE_KEY: frozenset({"algorithm", "rsaBits", "ecdsaCurve"}),
    # .../resource_self_signed_cert.go (`private_key_pem`: requireReplaceIfStateContainsPEMString;
    # `early_renewal_hours` updates in place)
    SELF_SIGNED_CERT: _SUBJECT_AND_SANS
    | {
        "privateKeyPem",
        "validityPeriodHours",
        "allowedUses",
        "isCaCertificate",
        "maxPathLength",
        "setSubjectKeyId",
        "setAuthorityKeyId",
    },
    # .../resource_cert_request.go
    CERT_REQUEST: _SUBJECT_AND_SANS | {"privateKeyPem"},
    # .../resource_locally_signed_cert.go
    LOCALLY_SIGNED_CERT: frozenset(
        {
            "caCertPem",
            "caPrivateKeyPem",
            "certRequestPem",
            "validityPeriodHours",
            "allowedUses",
            "isCaCertificate",
            "maxPathLength",
            "setSubjectKeyId",
        }
    ),
    # hashicorp/terraform-provider-random internal/provider/resource_password.go
    RANDOM_PASSWORD: frozenset(
        {
            "keepers",
            "length",
            "special",
            "upper",
            "lower",
            "number",
            "numeric",
            "minNumeric",
            "minUpper",
            "minLower",
            "minSpecial",
            "overrideSpecial",
        }
    ),
    # .../resource_bytes.go
    RANDOM_BYTES: frozenset({"keepers", "length"}),
    # internal/provider/resource_id.go: every argument has RequiresReplace.
    RANDOM_ID: frozenset({"keepers", "byteLength", "prefix"}),
    # pulumi/pulumi-command provider/pkg/provider/common/inputs.go: `Triggers ...
    # provider:"replaceOnChanges"`; any other change is an Update (remote/commandController.go).
    COMMAND: frozenset({"triggers"}),
}

# Certificates whose plan is replaced once `early_renewal_hours` before the end has passed:
# terraform-provider-tls internal/provider/common_cert.go (modifyPlanIfCertificateReadyForRenewal
# appends `ready_for_renewal` to RequiresReplace, at plan time).
RENEWABLE = frozenset({SELF_SIGNED_CERT, LOCALLY_SIGNED_CERT})


def changed_inputs(
    old: Mapping[str, Any], new: Mapping[str, Any], ignored: frozenset[str] = frozenset()
) -> set[str]:
    """Top-level inputs whose values differ (the engine diffs the whole value of each)."""
    return {
        key for key in set(old) | set(new) if key not in ignored and old.get(key) != new.get(key)
    }


def replacing_inputs(type_token: str, changed: set[str]) -> set[str]:
    """The changed inputs that force a replacement of a resource of this type."""
    if type_token not in REPLACE_ON:
        raise KeyError(f"no replacement rules for {type_token}: add them, with their source")
    return changed & REPLACE_ON[type_token]


def due_for_renewal(type_token: str, outputs: Mapping[str, Any], now: datetime.datetime) -> bool:
    """A tls certificate the provider replaces on this plan (its early renewal time passed)."""
    if type_token not in RENEWABLE or "validityEndTime" not in outputs:
        return False
    end = datetime.datetime.fromisoformat(outputs["validityEndTime"])
    early = datetime.timedelta(hours=int(outputs.get("earlyRenewalHours") or 0))
    return now >= end - early
