"""A private Docker registry on DigitalOcean: read settings, build components, export outputs."""

import functools
from collections.abc import Callable

import pulumi

from components.access import METRICS_USER
from components.credentials import Credentials, CredentialsArgs
from components.manifest import REGISTRY_LAYOUT
from components.monitoring import Monitoring, MonitoringArgs
from components.network import Network, NetworkArgs
from components.object_storage import ObjectStorage, ObjectStorageArgs
from components.pki import (
    CertificateAuthority,
    CertificateAuthorityArgs,
    ServerCertificate,
    ServerCertificateArgs,
)
from components.registry_client import RegistryClient, RegistryClientArgs
from components.registry_server import HubCache, RegistryServer, RegistryServerArgs, SpacesStorage
from components.remote import DropletArgs
from components.rendering import instructions
from components.rendering.templates import sha256_hex
from components.settings import docker_hub_token, load_settings
from components.shared_cache import SharedCache, SharedCacheArgs

settings = load_settings()
name_prefix = settings.name_prefix
# Storage spaces: the balancer admits the client droplets, whose addresses exist only once they
# do (they depend on nothing of the balancer's): resolved below, after the clients.
client_public_ips: pulumi.Output[list[str]]
resolve_client_public_ips: Callable[[pulumi.Output[list[str]]], None]
client_public_ips, resolve_client_public_ips = pulumi.deferred_output()
# The Docker Hub cache serves the client droplets without credentials: their addresses (private
# and public), resolved below too.
client_addresses: pulumi.Output[list[str]]
resolve_client_addresses: Callable[[pulumi.Output[list[str]]], None]
client_addresses, resolve_client_addresses = pulumi.deferred_output()

credentials = Credentials(
    "credentials",
    CredentialsArgs(
        users=settings.users, rotation=settings.password_rotation, metrics_user=METRICS_USER
    ),
)
ca = CertificateAuthority(
    "ca",
    CertificateAuthorityArgs(
        common_name=f"{name_prefix} CA", key_algorithm=settings.tls_key_algorithm
    ),
)
network = Network(
    "network",
    NetworkArgs(
        name_prefix=name_prefix,
        registry_port=settings.port,
        metrics_port=REGISTRY_LAYOUT.metrics_port,
        admin_cidrs=settings.admin_cidrs,
        allowed_cidrs=settings.allowed_cidrs,
        load_balancer_region=settings.region if settings.spaces else None,
        load_balancer_record=(
            (settings.domain, settings.dns_name.removesuffix(f".{settings.domain}"))
            if settings.spaces and settings.domain and settings.dns_name
            else None
        ),
        load_balancer_clients=client_public_ips,
        acme_http_port=REGISTRY_LAYOUT.acme_http_port if settings.public_tls else None,
        hub_cache_port=settings.hub_cache_port if settings.hub_cache else None,
    ),
)
spaces = None
shared_certificate = None
shared_cache = None
if settings.spaces:
    storage = ObjectStorage(
        "object-storage",
        ObjectStorageArgs(
            name_prefix=name_prefix,
            bucket=settings.spaces_bucket_setting,
            bucket_prefix=settings.spaces_bucket_prefix,
            region=settings.spaces_region,
            retain_on_destroy=settings.retain_volume_on_destroy,
        ),
    )
    shared_cache = (
        SharedCache(
            "shared-cache", SharedCacheArgs(name_prefix=name_prefix, region=settings.region)
        )
        if settings.spaces_cache == "valkey"
        else None
    )
    spaces = SpacesStorage(
        region=settings.spaces_region,
        endpoint=storage.endpoint,
        bucket=storage.bucket,
        access_key=storage.access_key,
        secret_key=storage.secret_key,
        redirect=settings.spaces_redirect,
        cache_address=shared_cache.address if shared_cache else None,
        cache_password=shared_cache.password if shared_cache else None,
    )
    # One certificate on every node: clients reach them by the names and the balancer's IP, a
    # metrics scraper each node by its private IP (which exists once the node does: resolved
    # below, after the nodes).
    node_private_ips: list[tuple[pulumi.Output[str], Callable[[pulumi.Output[str]], None]]] = [
        pulumi.deferred_output() for _ in range(settings.registry_count)
    ]
    shared_certificate = ServerCertificate(
        "registry-tls",
        ServerCertificateArgs(
            ca=ca,
            dns_names=settings.server_names,
            ip_addresses=[
                *([network.load_balancer_ip] if network.load_balancer_ip else []),
                *(private_ip for private_ip, _ in node_private_ips),
            ],
            key_algorithm=settings.tls_key_algorithm,
            validity_hours=settings.cert_validity_hours,
            early_renewal_hours=settings.cert_early_renewal_hours,
        ),
    )


hub_cache = (
    HubCache(
        port=settings.hub_cache_port,
        address=settings.hub_cache_address,
        ttl=settings.hub_cache_ttl,
        docker_hub_user=settings.docker_hub_user,
        docker_hub_token=docker_hub_token() if settings.docker_hub_user else None,
        anonymous_sources=client_addresses.apply(
            lambda addresses: [*addresses, *settings.allowed_cidrs]
        ),
    )
    if settings.hub_cache
    else None
)


def host(
    droplet_name: str, region: pulumi.Input[str], size: str, tag: pulumi.Output[str]
) -> DropletArgs:
    """A droplet of this stack: in its region, behind a firewall tag, with its keys."""
    return DropletArgs(
        droplet_name=droplet_name,
        region=region,
        size=size,
        image=settings.image,
        tag=tag,
        ssh_key_fingerprint=network.ssh_key_fingerprint,
        ssh_private_key=network.ssh_private_key,
        extra_ssh_public_keys=settings.ssh_public_keys,
    )


servers = [
    RegistryServer(
        # One node keeps the name it has always had (an existing stack keeps its resources).
        droplet_name.removeprefix(f"{name_prefix}-"),
        RegistryServerArgs(
            host=host(droplet_name, settings.region, settings.registry_size, network.server_tag),
            volume_name=settings.volume_name,
            volume_size_gb=settings.volume_size_gb,
            retain_volume_on_destroy=settings.retain_volume_on_destroy,
            existing_volume=settings.existing_volume,
            server_names=settings.server_names,
            domain=settings.domain,
            dns_name=settings.dns_name,
            port=settings.port,
            registry_image=settings.registry_image,
            nginx_image=settings.nginx_image,
            ca=ca,
            key_algorithm=settings.tls_key_algorithm,
            cert_validity_hours=settings.cert_validity_hours,
            cert_early_renewal_hours=settings.cert_early_renewal_hours,
            htpasswd=credentials.htpasswd,
            accounts=settings.accounts,
            gc_schedule=settings.gc_schedule,
            gc_delete_untagged=settings.gc_delete_untagged,
            http_secret=credentials.http_secret,
            disk_alert_percent=settings.disk_alert_percent,
            spaces=spaces,
            certificate=shared_certificate,
            acme_directory=settings.acme_directory,
            hub_cache=hub_cache,
        ),
    )
    for droplet_name in settings.registry_droplet_names()
]
server = servers[0]
if settings.spaces:
    for (_, resolve_private_ip), node in zip(node_private_ips, servers, strict=True):
        resolve_private_ip(node.private_ip)
# The shared cache admits the registry droplets alone; clients prove the registry through it.
cache_firewall = (
    [shared_cache.admit_only([node.droplet_id for node in servers])] if shared_cache else []
)
# Clients reach the one droplet, or the balancer in front of every node.
registry_ip = network.load_balancer_ip or server.public_ip

proof_user = settings.proof_user
clients = [
    RegistryClient(
        f"client-{index}",
        RegistryClientArgs(
            # In the region the server checked against its data volume.
            host=host(
                f"{name_prefix}-client-{index}",
                server.region,
                settings.client_size,
                network.client_tag,
            ),
            registry_name=settings.client_name,
            port=settings.port,
            hosts_ip=None if settings.dns_name else (network.load_balancer_ip or server.private_ip),
            ca_cert_pem=ca.cert_pem,
            user=proof_user,
            password=credentials.passwords[proof_user],
            registry_ready=[*(node.ready for node in servers), *cache_firewall],
            registry_fingerprint=pulumi.Output.all(
                *(node.files_fingerprint for node in servers)
            ).apply(lambda prints: prints[0] if len(prints) == 1 else sha256_hex(*prints)),
            hub_cache_port=settings.hub_cache_port if settings.hub_cache else None,
        ),
    )
    for index in range(settings.client_count)
]

monitoring = Monitoring(
    "monitoring",
    MonitoringArgs(
        name_prefix=name_prefix,
        stack=pulumi.get_stack(),
        region=settings.region,
        endpoint=pulumi.Output.concat(
            "https://", settings.dns_name or registry_ip, f":{settings.port}"
        ),
        registry_droplet_ids=[node.droplet_id for node in servers],
        allowed_cidrs=settings.allowed_cidrs,
        alert_emails=settings.alert_emails,
        disk_alert_percent=settings.disk_alert_percent,
        public_tls=settings.public_tls,
        project_resources=[
            *(urn for node in servers for urn in node.owned_urns),
            *(client.droplet_urn for client in clients),
        ],
    ),
)
resolve_client_public_ips(pulumi.Output.all(*(client.public_ip for client in clients)))
resolve_client_addresses(
    pulumi.Output.all(*(ip for client in clients for ip in (client.private_ip, client.public_ip)))
)

pulumi.export("registryAddress", settings.address)
pulumi.export("registryPublicIp", server.public_ip)
pulumi.export("registryPrivateIp", server.private_ip)
pulumi.export("clientPublicIps", [client.public_ip for client in clients])
pulumi.export("clientPrivateIps", [client.private_ip for client in clients])
pulumi.export("users", list(settings.users))
pulumi.export("userAccess", {account.name: account.describe() for account in settings.accounts})
pulumi.export("passwords", pulumi.Output.secret(credentials.passwords))
pulumi.export("caCertificatePem", ca.cert_pem)
pulumi.export("metricsUser", METRICS_USER)
pulumi.export("metricsScraperTag", network.metrics_tag)
pulumi.export("metricsPassword", pulumi.Output.secret(credentials.metrics_password))
pulumi.export(
    "metricsUrls",
    server.private_ip.apply(
        lambda ip: {
            name: f"https://{ip}:{REGISTRY_LAYOUT.metrics_port}/metrics/{name}"
            # The disk check watches the data volume: spaces nodes have none.
            for name in ("registry", "nginx", "requests", *(() if settings.spaces else ("disk",)))
        }
    ),
)
# Every node's metrics listener, for a scraper's static targets (the paths are in metricsUrls).
pulumi.export(
    "metricsTargets",
    [node.private_ip.apply(lambda ip: f"{ip}:{REGISTRY_LAYOUT.metrics_port}") for node in servers],
)
pulumi.export("sshPrivateKey", pulumi.Output.secret(network.ssh_private_key))
if settings.spaces:
    pulumi.export("loadBalancerIp", network.load_balancer_ip)
    pulumi.export(
        "registryNodes",
        [
            {"name": name, "publicIp": node.public_ip, "privateIp": node.private_ip}
            for name, node in zip(settings.registry_droplet_names(), servers, strict=True)
        ],
    )
    pulumi.export(
        "spacesBucket",
        {"name": storage.bucket, "region": settings.spaces_region, "endpoint": storage.endpoint},
    )
else:
    pulumi.export("dataVolumeId", server.volume_id)
pulumi.export(
    "dockerLoginCommand", instructions.login_command("passwords", proof_user, settings.address)
)
pulumi.export(
    "dockerLoginCommands",
    {
        user: instructions.login_command("passwords", user, settings.address)
        for user in settings.users
    },
)
# Ready-made logins for Kubernetes (`kubernetes.io/dockerconfigjson`) and CI, one per user.
pulumi.export(
    "dockerConfigJson",
    pulumi.Output.secret(
        {
            user: credentials.passwords[user].apply(
                functools.partial(instructions.docker_config_json, settings.address, user)
            )
            for user in settings.users
        }
    ),
)
pulumi.export("containerdHostsToml", instructions.containerd_hosts_toml(settings.address))
pulumi.export(
    "trustCaSteps",
    registry_ip.apply(
        lambda ip: instructions.trust_steps(
            settings.client_name, settings.port, ip, hosts_entry_needed=settings.dns_name is None
        )
    ),
)
if hub_cache is not None:
    pulumi.export("hubCacheAddress", hub_cache.address)
    pulumi.export(
        "hubCacheContainerdHostsToml",
        instructions.docker_hub_hosts_toml(hub_cache.address, REGISTRY_LAYOUT.hub_cache_remote_url),
    )
