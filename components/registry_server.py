"""The registry host: droplet, data volume, server certificate, files and the running service."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pulumi
import pulumi_command as command
import pulumi_digitalocean as digitalocean

from components import manifest
from components.access import METRICS_USER, Account, access_maps
from components.pki import CertificateAuthority, ServerCertificate, ServerCertificateArgs
from components.remote import DropletArgs, RemoteHost, rendered, rendered_files
from components.rendering.templates import sha256_hex
from components.settings import VOLUME_ID, SettingsError


@dataclass(frozen=True)
class DataVolume:
    """The volume the registry's data lives on, as the droplet and the host scripts need it."""

    id: pulumi.Output[str]
    name: pulumi.Output[str]
    region: pulumi.Output[str]
    size: pulumi.Output[int]
    urn: pulumi.Output[str] | None = None  # DigitalOcean's URN, of the stack's own volume only


def _same_region(volume_region: str, region: str, volume: str, adopted: bool) -> str:
    """The region every droplet goes to; fails when the data volume is elsewhere."""
    if volume_region == region:
        return region
    if adopted:
        raise SettingsError(
            f"private-registry:existingVolume {volume!r} is in {volume_region}, but "
            f"private-registry:region is {region}: a droplet can only attach a volume in its own "
            f"region. Set region to {volume_region}, or adopt a volume in {region}."
        )
    raise SettingsError(
        f"private-registry:region changed to {region}, but this stack's data volume {volume} "
        f"is in {volume_region}. A DigitalOcean volume cannot move to another region, and "
        f"replacing it would delete every image, so no droplet or volume was changed. Set "
        f'region back to {volume_region}; to move the registry, see README "Operations" '
        f"(Change the region)."
    )


@dataclass(frozen=True)
class SpacesStorage:
    """The Spaces bucket every registry node of storage `spaces` keeps its data in, and the
    key (scoped to that bucket) the nodes use."""

    region: str
    endpoint: str
    bucket: pulumi.Output[str]
    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]  # secret
    redirect: bool  # downloads redirected to presigned Spaces URLs
    # Cache `valkey`: the shared cache's private host:port and password (secret); None: memory.
    cache_address: pulumi.Output[str] | None = None
    cache_password: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class HubCache:
    """The Docker Hub pull-through cache beside the registry (storage `volume`): its port and
    the address clients use, how long it keeps content, the Docker Hub account it pulls as
    (None: anonymous; the token is a secret Output), and who may pull without credentials (the
    client droplets' addresses and `allowedCidrs`)."""

    port: int
    address: str
    ttl: str
    docker_hub_user: str | None
    docker_hub_token: pulumi.Output[str] | None
    anonymous_sources: pulumi.Input[Sequence[str]]


@dataclass
class RegistryServerArgs:
    host: DropletArgs  # its `region` is the configured one (a plain string)
    volume_name: str
    volume_size_gb: int
    retain_volume_on_destroy: bool
    existing_volume: str | None  # adopt this volume (name or id) instead of creating one
    server_names: Sequence[str]  # the certificate's and nginx's names: the registry name first
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
    disk_alert_percent: int  # the disk check's warning threshold
    # Storage `spaces`: the bucket instead of a volume, and the certificate every node shares
    # (the load balancer's address in its SANs). The volume settings are then unused.
    spaces: SpacesStorage | None = None
    certificate: ServerCertificate | None = None
    # publicTls (storage volume): the ACME CA's directory URL; None: the private CA only.
    acme_directory: str | None = None
    hub_cache: HubCache | None = None

    @property
    def registry_name(self) -> str:
        return self.server_names[0]


class RegistryServer(pulumi.ComponentResource):
    """A droplet running distribution behind nginx under Docker Compose and systemd.

    Everything placed on the host and run there is `manifest.REGISTRY_HOST`. The registry's data
    lives on a block storage volume (the layout's `data_mount`), so it survives a replaced
    droplet; the volume is the stack's own or an adopted one. `region` is the region every
    droplet must use: the configured one, checked against the volume's. `ready`
    completes once the TLS front answers on the host; `files_fingerprint` changes whenever any
    file placed on the host changes.
    """

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    droplet_id: pulumi.Output[str]
    # DigitalOcean URNs of what the stack owns here: the droplet, and the volume unless adopted.
    owned_urns: list[pulumi.Output[str]]
    volume_id: pulumi.Output[str]  # storage volume only
    ready: command.remote.Command
    files_fingerprint: pulumi.Output[str]
    region: pulumi.Output[str]

    def __init__(
        self, name: str, args: RegistryServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:RegistryServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        if args.spaces is not None:
            self._spaces_node(name, args, args.spaces)
            return
        volume = self._data_volume(name, args)
        region = pulumi.Output.all(volume.region, volume.name).apply(
            lambda values: _same_region(
                values[0],
                str(args.host.region),
                values[1],
                adopted=args.existing_volume is not None,
            )
        )
        # Graceful shutdown: the provider shuts the droplet down before deleting it. The data
        # volume is released before that (below), since its attachment goes first.
        host = RemoteHost.create(
            name, dataclasses.replace(args.host, region=region), parent=self, graceful_shutdown=True
        )
        droplet = host.droplet
        # A volume attaches to one droplet at a time: when the droplet is replaced, detach from
        # the old one before attaching to the new one.
        attachment = digitalocean.VolumeAttachment(
            f"{name}-data-attachment",
            droplet_id=droplet.id.apply(int),
            volume_id=volume.id,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        # Before any detach (destroy, a replaced droplet or volume) the registry stops and the
        # filesystem is synced and unmounted: this command depends on the attachment, so the
        # engine deletes it (running the release script on the host) first; its trigger is the
        # attachment's id, so a replacement of the attachment deletes it first too.
        host_manifest = {
            (False, False): manifest.REGISTRY_HOST,
            (True, False): manifest.REGISTRY_HOST_PUBLIC_TLS,
            (False, True): manifest.REGISTRY_HOST_HUB_CACHE,
            (True, True): manifest.REGISTRY_HOST_PUBLIC_TLS_HUB_CACHE,
        }[(args.acme_directory is not None, args.hub_cache is not None)]
        host.run_script_on_delete(
            host_manifest.script("release_data_volume"),
            depends_on=[attachment],
            triggers=[attachment.id],
        )
        dns_records = []
        if args.domain and args.dns_name:
            record = digitalocean.DnsRecord(
                f"{name}-dns",
                domain=args.domain,
                type="A",
                name=args.dns_name.removesuffix(f".{args.domain}"),
                value=droplet.ipv4_address,
                ttl=300,
                opts=child,
            )
            dns_records.append(record)

        certificate = ServerCertificate(
            f"{name}-tls",
            ServerCertificateArgs(
                ca=args.ca,
                dns_names=list(args.server_names),
                ip_addresses=[droplet.ipv4_address, droplet.ipv4_address_private],
                key_algorithm=args.key_algorithm,
                validity_hours=args.cert_validity_hours,
                early_renewal_hours=args.cert_early_renewal_hours,
            ),
            opts=child,
        )

        stack_values: dict[str, pulumi.Input[object]] = {
            **_common_stack_values(args, certificate, droplet),
            "volume_name": volume.name,
            "gc_schedule": args.gc_schedule,
            "gc_flags": "--delete-untagged" if args.gc_delete_untagged else "",
            "disk_alert_percent": args.disk_alert_percent,
            **(
                {"public_name": args.dns_name, "acme_directory": args.acme_directory}
                if args.acme_directory and args.dns_name
                else {}
            ),
            **(_hub_cache_stack_values(args.hub_cache) if args.hub_cache else {}),
        }
        install = host.run_script(host_manifest.script("install_packages"), stack_values)
        # Re-runs (and grows the filesystem) when the volume or its size changes; the size is the
        # provider's output, so this runs after the resize.
        size = volume.size.apply(lambda gib: str(int(gib)))
        mount = host.run_script(
            host_manifest.script("mount_data_volume"),
            stack_values,
            depends_on=[attachment],
            triggers=[volume.id, size],
        )
        # A new attachment follows a release, which stopped the registry: start it again.
        self._place_files_and_activate(
            host,
            host_manifest,
            stack_values,
            install,
            after=[mount],
            triggers=[attachment.id],
            issue_after=dns_records,
        )
        if args.hub_cache is not None:
            # Turning the cache off removes its container, volume, files and content.
            host.run_script_when_removed(
                host_manifest.script("remove_hub_cache"), stack_values, [self.ready]
            )

        self.public_ip = droplet.ipv4_address
        self.droplet_id = droplet.id
        self.owned_urns = [droplet.droplet_urn, *([volume.urn] if volume.urn else [])]
        self.private_ip = droplet.ipv4_address_private
        self.volume_id = volume.id
        self.region = region
        self.register_outputs(
            {"publicIp": self.public_ip, "privateIp": self.private_ip, "volumeId": self.volume_id}
        )

    def _place_files_and_activate(
        self,
        host: RemoteHost,
        host_manifest: manifest.HostManifest,
        stack_values: dict[str, pulumi.Input[object]],
        install: command.remote.Command,
        after: Sequence[pulumi.Resource] = (),
        triggers: Sequence[pulumi.Input[str]] = (),
        issue_after: Sequence[pulumi.Resource] = (),
    ) -> None:
        """Place every file of the manifest once the packages are in, then run its activation
        (also after `after`); it runs again whenever a placed file changes, or `triggers` do.
        publicTls: the certificate is asked for after the activation and `issue_after` (the
        name's DNS record, which the CA resolves)."""
        # Compose labels the registry (and the Docker Hub cache) with its config's hash, so a
        # changed config recreates it.
        config = rendered(host_manifest.file("registry_config"), stack_values)
        stack_values = {
            **stack_values,
            "registry_config_sha256": pulumi.Output.from_input(config).apply(sha256_hex),
        }
        if "hub_cache_config_sha256" in host_manifest.stack_values:
            cache_config = rendered(host_manifest.file("hub_cache_config"), stack_values)
            stack_values["hub_cache_config_sha256"] = pulumi.Output.from_input(cache_config).apply(
                sha256_hex
            )
        files = rendered_files(host_manifest, stack_values)
        placed = [
            host.place_file(host_file, content, depends_on=[install])
            for host_file, content in files
        ]
        self.files_fingerprint = pulumi.Output.all(*(content for _, content in files)).apply(
            lambda texts: sha256_hex(*texts)
        )
        public_tls = host_manifest in (
            manifest.REGISTRY_HOST_PUBLIC_TLS,
            manifest.REGISTRY_HOST_PUBLIC_TLS_HUB_CACHE,
        )
        # publicTls: nginx gets the certificate to serve before it (re)starts.
        serve = (
            [
                host.run_script(
                    host_manifest.script("serve_certificate"),
                    stack_values,
                    depends_on=[install, *after, *placed],
                    triggers=[self.files_fingerprint, *triggers],
                )
            ]
            if public_tls
            else []
        )
        self.ready = host.run_script(
            host_manifest.script("activate"),
            stack_values,
            depends_on=[install, *after, *placed, *serve],
            triggers=[self.files_fingerprint, *triggers],
        )
        if public_tls:
            # Asks for the public certificate once the registry runs. Switching publicTls off
            # deletes this command, which stops the renewals (nginx then serves the private
            # certificate again, from the files placed in the same update). Replaced (a changed
            # file re-runs it), the old command's delete must run first, or it would disable
            # the timer the new one has just enabled.
            host.run_script(
                host_manifest.script("issue_certificate"),
                stack_values,
                depends_on=[self.ready, *issue_after],
                triggers=[self.files_fingerprint, *triggers],
                delete="systemctl disable --now "
                + PurePosixPath(host_manifest.file("acme_timer").path).name,
                delete_before_replace=True,
            )

    def _spaces_node(self, name: str, args: RegistryServerArgs, spaces: SpacesStorage) -> None:
        """A node of storage `spaces`: the same host, its data in the shared bucket; no volume
        to mount or release, and the shared certificate."""
        if args.certificate is None:
            raise ValueError("a node of storage spaces takes the shared certificate")
        host = RemoteHost.create(name, args.host, parent=self)
        droplet = host.droplet
        valkey = spaces.cache_address is not None
        host_manifest = (
            manifest.REGISTRY_HOST_SPACES_VALKEY if valkey else manifest.REGISTRY_HOST_SPACES
        )
        storage_driver = spaces.bucket.apply(
            lambda bucket: manifest.spaces_storage_driver(
                spaces.region, spaces.endpoint, bucket, spaces.redirect, manifest.REGISTRY_LAYOUT
            )
        )
        stack_values: dict[str, pulumi.Input[object]] = {
            **_common_stack_values(args, args.certificate, droplet),
            "storage_driver": storage_driver,
            "spaces_access_key": spaces.access_key,
            "spaces_secret_key": spaces.secret_key,
        }
        if spaces.cache_address is not None and spaces.cache_password is not None:
            stack_values["redis_section"] = spaces.cache_address.apply(manifest.redis_section)
            stack_values["redis_password"] = spaces.cache_password
        install = host.run_script(host_manifest.script("install_packages"), stack_values)
        self._place_files_and_activate(host, host_manifest, stack_values, install)
        self.public_ip = droplet.ipv4_address
        self.private_ip = droplet.ipv4_address_private
        self.droplet_id = droplet.id
        self.owned_urns = [droplet.droplet_urn]
        self.region = pulumi.Output.from_input(args.host.region)
        self.register_outputs({"publicIp": self.public_ip, "privateIp": self.private_ip})

    def _data_volume(self, name: str, args: RegistryServerArgs) -> DataVolume:
        """The stack's own volume, or the adopted one (read only: never changed or deleted)."""
        existing = args.existing_volume
        if existing is not None and VOLUME_ID.fullmatch(existing):
            found = digitalocean.Volume.get(
                f"{name}-adopted-data", existing, opts=pulumi.ResourceOptions(parent=self)
            )
            return DataVolume(found.id, found.name, found.region, found.size)
        if existing is not None:
            # The lookup fails when no volume (or more than one) has this name.
            looked_up = digitalocean.get_volume_output(
                name=existing, opts=pulumi.InvokeOptions(parent=self)
            )
            return DataVolume(
                looked_up.id, looked_up.name, looked_up.region.apply(str), looked_up.size
            )
        # `ignore_changes` on the region: a changed region must not replace (and so delete) the
        # volume; the droplets' region check then refuses the change with a clear message.
        volume = digitalocean.Volume(
            f"{name}-data",
            name=args.volume_name,
            region=args.host.region,
            size=args.volume_size_gb,
            initial_filesystem_type="ext4",
            initial_filesystem_label="registry-data",
            description="private registry image data",
            opts=pulumi.ResourceOptions(
                parent=self,
                retain_on_delete=args.retain_volume_on_destroy,
                ignore_changes=["region"],
            ),
        )
        return DataVolume(volume.id, volume.name, volume.region, volume.size, volume.volume_urn)


def _hub_cache_stack_values(hub_cache: HubCache) -> dict[str, pulumi.Input[object]]:
    """The stack values of the Docker Hub cache's files (its credentials stay secret)."""
    credentials: pulumi.Input[str] = ""
    user, token = hub_cache.docker_hub_user, hub_cache.docker_hub_token
    if user is not None and token is not None:
        account = user
        credentials = token.apply(lambda password: manifest.proxy_credentials(account, password))
    return {
        "hub_cache_port": hub_cache.port,
        "hub_cache_address": hub_cache.address,
        "hub_cache_ttl": hub_cache.ttl,
        "hub_cache_allow": pulumi.Output.from_input(hub_cache.anonymous_sources).apply(
            manifest.hub_cache_allow
        ),
        "proxy_credentials": credentials,
    }


def _common_stack_values(
    args: RegistryServerArgs,
    certificate: ServerCertificate,
    droplet: digitalocean.Droplet,
) -> dict[str, pulumi.Input[object]]:
    """The stack values every registry host takes, whatever its storage."""
    return {
        # nginx's metrics listener: published on this address only, for this user only.
        "private_ip": droplet.ipv4_address_private,
        "metrics_user": METRICS_USER,
        "registry_name": args.registry_name,
        "server_names": " ".join(args.server_names),
        "port": args.port,
        "registry_image": args.registry_image,
        "nginx_image": args.nginx_image,
        "http_secret": args.http_secret,
        "htpasswd": args.htpasswd,
        "server_cert_pem": certificate.cert_pem,
        "server_key_pem": certificate.private_key_pem,
        "ca_cert_pem": args.ca.cert_pem,
        "access_maps": access_maps(tuple(args.accounts)),
    }
