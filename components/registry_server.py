"""The registry host: droplet, data volume, server certificate, files and the running service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_digitalocean as digitalocean

from components import rendering, versions
from components.access import Account
from components.pki import CertificateAuthority, ServerCertificate, ServerCertificateArgs
from components.remote import DropletArgs, RemoteHost


@dataclass
class RegistryServerArgs:
    host: DropletArgs
    name_prefix: str
    volume_size_gb: int
    retain_volume_on_destroy: bool
    registry_name: str
    domain: str | None
    dns_name: str | None
    port: int
    registry_image: str
    nginx_image: str
    ca: CertificateAuthority
    key_algorithm: str
    cert_validity_hours: int
    cert_early_renewal_hours: int
    htpasswd: pulumi.Input[str]
    accounts: Sequence[Account]  # who may do what; nginx enforces it
    gc_schedule: str  # systemd OnCalendar of registry-gc.timer
    gc_delete_untagged: bool
    http_secret: pulumi.Input[str]


class RegistryServer(pulumi.ComponentResource):
    """A droplet running distribution behind nginx under Docker Compose and systemd.

    The registry's data lives on a block storage volume mounted at `rendering.DATA_MOUNT`, so it
    survives a replaced droplet. `ready` completes once the TLS front answers on the host;
    `files_fingerprint` changes whenever any file placed on the host changes.
    """

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    volume_id: pulumi.Output[str]
    ready: command.remote.Command
    files_fingerprint: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryServerArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("private-registry:index:RegistryServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Graceful shutdown before deletion: the registry's filesystem on the volume is clean.
        host = RemoteHost.create(name, args.host, parent=self, graceful_shutdown=True)
        droplet = host.droplet
        volume_name = f"{args.name_prefix}-data"
        volume = digitalocean.Volume(
            f"{name}-data", name=volume_name, region=args.host.region, size=args.volume_size_gb,
            initial_filesystem_type="ext4", initial_filesystem_label="registry-data",
            description="private registry image data",
            opts=pulumi.ResourceOptions(parent=self,
                                        retain_on_delete=args.retain_volume_on_destroy))
        # A volume attaches to one droplet at a time: when the droplet is replaced, detach from
        # the old one before attaching to the new one.
        attachment = digitalocean.VolumeAttachment(
            f"{name}-data-attachment", droplet_id=droplet.id.apply(int), volume_id=volume.id,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        if args.domain and args.dns_name:
            digitalocean.DnsRecord(
                f"{name}-dns", domain=args.domain, type="A",
                name=args.dns_name.removesuffix(f".{args.domain}"),
                value=droplet.ipv4_address, ttl=300, opts=child)

        server_names = [args.registry_name, *([args.dns_name] if args.dns_name else [])]
        certificate = ServerCertificate(
            f"{name}-tls", ServerCertificateArgs(
                ca=args.ca, dns_names=server_names,
                ip_addresses=[droplet.ipv4_address, droplet.ipv4_address_private],
                key_algorithm=args.key_algorithm, validity_hours=args.cert_validity_hours,
                early_renewal_hours=args.cert_early_renewal_hours),
            opts=child)

        registry_config = rendering.registry_config()
        contents: dict[str, pulumi.Input[str]] = {
            "compose": rendering.compose_file(args.registry_image, args.nginx_image, args.port,
                                              rendering.sha256_hex(registry_config)),
            "registry_config": registry_config,
            "registry_env": pulumi.Output.from_input(args.http_secret).apply(
                rendering.registry_env),
            "nginx_conf": rendering.nginx_conf(args.port, server_names, args.accounts),
            "htpasswd": args.htpasswd,
            "server_cert": certificate.cert_pem,
            "server_key": certificate.private_key_pem,
            "ca_cert": args.ca.cert_pem,
            "systemd_unit": rendering.systemd_unit(),
            "gc_script": rendering.gc_script(args.gc_delete_untagged),
            "gc_service": rendering.gc_service(),
            "gc_timer": rendering.gc_timer(args.gc_schedule),
        }

        install = host.run_script(f"{name}-install-packages", "install-packages.sh",
                                  args=versions.REGISTRY_HOST_PACKAGES)
        mount = host.run_script(
            f"{name}-mount-data-volume", "mount-data-volume.sh",
            args=[volume_name, rendering.DATA_MOUNT, rendering.DATA_DIR],
            depends_on=[attachment], triggers=[volume.id])
        placed = [host.place_file(f"{name}-file-{role.replace('_', '-')}",
                                  rendering.REGISTRY_HOST_FILES[role], content,
                                  depends_on=[install])
                  for role, content in contents.items()]

        self.files_fingerprint = pulumi.Output.all(*contents.values()).apply(
            lambda texts: rendering.sha256_hex(*texts))
        self.ready = host.run_script(
            f"{name}-activate", "activate-registry.sh", args=[args.registry_name, str(args.port)],
            depends_on=[install, mount, *placed], triggers=[self.files_fingerprint])

        self.public_ip = droplet.ipv4_address
        self.private_ip = droplet.ipv4_address_private
        self.volume_id = volume.id
        self.register_outputs({"publicIp": self.public_ip, "privateIp": self.private_ip,
                               "volumeId": self.volume_id})
