"""Storage `spaces` under mocks: the bucket and its keys through an explicit provider, several
registry droplets that are the same host, the load balancer in TLS passthrough in front of them,
and what reaches the hosts (the s3 driver config, the key as a secret file on stdin only).

Runs: three nodes in fra1 with a domain (shared by the module), one node, and the volume mode's
dev stack (which must not change)."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml
from cryptography import x509

from components.manifest import REGISTRY_HOST_SPACES, REGISTRY_LAYOUT, SPACES_CHUNK_BYTES
from components.rendering.templates import sha256_hex
from components.settings import BUCKET_SUFFIX_BYTES
from tests.harness import ProgramRun, Registration, run_program
from tests.remote_commands import PlacedFile, commands_placing_secret

pytestmark = pytest.mark.program

COMMAND = "command:remote:Command"
DROPLET = "digitalocean:index/droplet:Droplet"
FIREWALL = "digitalocean:index/firewall:Firewall"
LOAD_BALANCER = "digitalocean:index/loadBalancer:LoadBalancer"
SPACES_KEY = "digitalocean:index/spacesKey:SpacesKey"
BUCKET = "digitalocean:index/spacesBucket:SpacesBucket"
PROVIDER = "pulumi:providers:digitalocean"
VOLUME = "digitalocean:index/volume:Volume"
ATTACHMENT = "digitalocean:index/volumeAttachment:VolumeAttachment"
DNS_RECORD = "digitalocean:index/dnsRecord:DnsRecord"
NODES = ("registry-0", "registry-1", "registry-2")
SPACES = {"storage": "spaces", "registryCount": 3, "region": "fra1", "domain": "example.com"}


@pytest.fixture(scope="module")
def spaces_run() -> ProgramRun:
    return run_program(overrides=SPACES)


def only(run: ProgramRun, type_token: str, name: str | None = None) -> Registration:
    found = [r for r in run.of_type(type_token) if name is None or r.name == name]
    assert len(found) == 1, f"{type_token} {name}: {[r.name for r in found]}"
    return found[0]


def file_text(run: ProgramRun, node: str, role: str) -> str:
    text: str = run.named(f"{node}-file-{role.replace('_', '-')}").inputs["stdin"]
    return text


def env_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def bucket_name(run: ProgramRun) -> str:
    """The derived bucket name: the stack's prefix, then the hex of the RandomId the stack keeps
    (bucket names are shared with every other Spaces customer)."""
    suffix = only(run, "random:index/randomId:RandomId", "object-storage-bucket-suffix")
    assert suffix.inputs["byteLength"] == BUCKET_SUFFIX_BYTES
    return f"registry-dev-images-{suffix.outputs['hex']}"


def test_bucket_name_is_given_or_the_stacks_prefix_with_kept_random_hex() -> None:
    given = run_program(overrides={**SPACES, "spacesBucket": "acme-registry"})
    assert only(given, BUCKET).inputs["name"] == "acme-registry"
    assert given.of_type("random:index/randomId:RandomId") == []


def test_bucket_is_private_unversioned_and_aborts_incomplete_uploads(
    spaces_run: ProgramRun,
) -> None:
    bucket = only(spaces_run, BUCKET).inputs
    assert (bucket["name"], bucket["region"], bucket["acl"]) == (
        bucket_name(spaces_run),
        "fra1",
        "private",
    )
    assert bucket["versioning"] == {"enabled": False}
    assert bucket["lifecycleRules"] == [{"enabled": True, "abortIncompleteMultipartUploadDays": 1}]
    assert spaces_run.outputs["spacesBucket"] == {
        "name": bucket_name(spaces_run),
        "region": "fra1",
        "endpoint": "https://fra1.digitaloceanspaces.com",
    }


@pytest.mark.parametrize("retain", [False, True])
def test_destroy_empties_and_deletes_the_bucket_unless_retained(retain: bool) -> None:
    # The provider deletes a bucket that still holds objects only with `force_destroy`
    # (BucketNotEmpty otherwise: terraform-provider-digitalocean
    # digitalocean/spaces/resource_spaces_bucket.go, resourceDigitalOceanBucketDelete), so
    # without it `pulumi destroy` of a stack with images stops at the bucket.
    run = run_program(overrides={**SPACES, "retainVolumeOnDestroy": retain})
    bucket = only(run, BUCKET)
    assert bucket.inputs["forceDestroy"] is (not retain)
    assert bucket.retain_on_delete is retain


def test_bucket_is_managed_through_a_provider_with_the_stacks_own_spaces_key(
    spaces_run: ProgramRun,
) -> None:
    bucket = only(spaces_run, BUCKET)
    provider = only(spaces_run, PROVIDER)
    assert bucket.provider == f"{provider.urn}::{provider.id}"
    stack_key = only(spaces_run, SPACES_KEY, "object-storage-stack-key")
    assert stack_key.inputs["grants"] == [{"bucket": "", "permission": "fullaccess"}]
    assert provider.inputs["spacesAccessId"] == stack_key.outputs["accessKey"]
    assert provider.inputs["spacesSecretKey"] == stack_key.outputs["secretKey"]
    assert provider.is_secret_input("spacesSecretKey")
    assert stack_key.urn in provider.dependencies


def test_nodes_key_is_scoped_to_the_bucket_and_reaches_the_hosts_only_as_a_secret_file(
    spaces_run: ProgramRun,
) -> None:
    nodes_key = only(spaces_run, SPACES_KEY, "object-storage-registry-key")
    assert nodes_key.inputs["grants"] == [
        {"bucket": bucket_name(spaces_run), "permission": "readwrite"}
    ]
    access, secret = nodes_key.outputs["accessKey"], nodes_key.outputs["secretKey"]
    env_file = PlacedFile(REGISTRY_HOST_SPACES.file("registry_env").path, "0:0", "0600")
    assert commands_placing_secret(spaces_run, secret) == {
        f"{node}-file-registry-env": env_file for node in NODES
    }
    env = env_values(file_text(spaces_run, "registry-0", "registry_env"))
    assert (env["REGISTRY_STORAGE_S3_ACCESSKEY"], env["REGISTRY_STORAGE_S3_SECRETKEY"]) == (
        access,
        secret,
    )
    assert not any(secret in json.dumps(value) for value in spaces_run.outputs.values())


def test_every_node_is_the_same_host_with_the_same_http_secret(spaces_run: ProgramRun) -> None:
    droplets = [only(spaces_run, DROPLET, f"{node}-droplet").inputs for node in NODES]
    assert [d["name"] for d in droplets] == [f"registry-dev-{node}" for node in NODES]
    assert len({(d["region"], d["size"], d["image"], tuple(d["tags"])) for d in droplets}) == 1
    private_ips = [
        only(spaces_run, DROPLET, f"{node}-droplet").outputs["ipv4AddressPrivate"] for node in NODES
    ]
    for host_file in REGISTRY_HOST_SPACES.files:
        role = host_file.role
        # The same file on every node, but for the node's own private address (where compose
        # publishes the metrics listener).
        texts = {
            file_text(spaces_run, node, role).replace(ip, "<private ip>")
            for node, ip in zip(NODES, private_ips, strict=True)
        }
        assert len(texts) == 1, f"{role} differs between nodes"
    secret = env_values(file_text(spaces_run, "registry-0", "registry_env"))["REGISTRY_HTTP_SECRET"]
    assert len(secret) == 48


def test_spaces_mode_has_no_volume_mount_release_or_scheduled_gc(spaces_run: ProgramRun) -> None:
    assert spaces_run.of_type(VOLUME) == [] and spaces_run.of_type(ATTACHMENT) == []
    names = {registration.name for registration in spaces_run.commands()}
    for node in NODES:
        assert f"{node}-activate" in names
        assert not {f"{node}-mount-data-volume", f"{node}-release-data-volume"} & names
        assert not any(name.startswith(f"{node}-file-gc") for name in names)
    assert "dataVolumeId" not in spaces_run.outputs


@pytest.mark.parametrize(("redirect", "disabled"), [(False, True), (True, False)])
def test_registry_config_uses_the_s3_driver_for_the_bucket(redirect: bool, disabled: bool) -> None:
    run = (
        run_program(overrides={**SPACES, "registryCount": 1, "spacesRedirect": True})
        if redirect
        else run_program(overrides={**SPACES, "registryCount": 1})
    )
    config = yaml.safe_load(file_text(run, "registry", "registry_config"))
    assert config["storage"]["s3"] == {
        "region": "fra1",
        "regionendpoint": "https://fra1.digitaloceanspaces.com",
        "forcepathstyle": True,
        "bucket": bucket_name(run),
        "rootdirectory": REGISTRY_LAYOUT.spaces_root_directory,
        "secure": True,
        "v4auth": True,
        "chunksize": SPACES_CHUNK_BYTES,
    }
    assert config["storage"]["redirect"] == {"disable": disabled}
    assert "filesystem" not in config["storage"]
    assert config["health"]["storagedriver"]["enabled"] is True
    assert "accesskey" not in json.dumps(config).lower()
    # The registry container is recreated when its config changes.
    compose = yaml.safe_load(file_text(run, "registry", "compose"))
    label = compose["services"]["registry"]["labels"]["io.private-registry.config-sha256"]
    assert label == sha256_hex(file_text(run, "registry", "registry_config"))


def test_load_balancer_passes_tls_through_with_proxy_protocol_and_checks_the_health_path(
    spaces_run: ProgramRun,
) -> None:
    balancer = only(spaces_run, LOAD_BALANCER)
    tag = only(spaces_run, DROPLET, "registry-0-droplet").inputs["tags"][0]
    assert (balancer.inputs["region"], balancer.inputs["dropletTag"]) == ("fra1", tag)
    balancer_port = REGISTRY_LAYOUT.balancer_port
    assert balancer.inputs["forwardingRules"] == [
        {
            "entryPort": 5043,
            "entryProtocol": "https",
            "targetPort": balancer_port,
            "targetProtocol": "https",
            "tlsPassthrough": True,
        }
    ]
    # Each connection opens with a PROXY line naming the client (nginx's balancer listener).
    assert balancer.inputs["enableProxyProtocol"] is True
    check = balancer.inputs["healthcheck"]
    assert (check["protocol"], check["port"], check["path"]) == ("https", balancer_port, "/healthz")
    assert check["path"] == REGISTRY_LAYOUT.health_path
    assert spaces_run.outputs["loadBalancerIp"] == balancer.outputs["ip"]


def test_nodes_admit_the_load_balancer_only_to_its_listener(spaces_run: ProgramRun) -> None:
    balancer = only(spaces_run, LOAD_BALANCER)
    rules = only(spaces_run, FIREWALL, "network-server-firewall").inputs["inboundRules"]
    by_port = {rule["portRange"]: rule for rule in rules}
    # SSH, nginx's balancer listener, and the metrics listener (the metrics scraper's tag only);
    # the registry port itself is the balancer's.
    balancer_port = str(REGISTRY_LAYOUT.balancer_port)
    assert set(by_port) == {"22", balancer_port, str(REGISTRY_LAYOUT.metrics_port)}
    assert "sourceAddresses" not in by_port[str(REGISTRY_LAYOUT.metrics_port)]
    assert by_port[balancer_port] == {
        "protocol": "tcp",
        "portRange": balancer_port,
        "sourceLoadBalancerUids": [balancer.id],
    }


def test_certificate_names_the_balancer_and_clients_reach_it(spaces_run: ProgramRun) -> None:
    ip = spaces_run.outputs["loadBalancerIp"]
    pems = {file_text(spaces_run, node, "server_cert") for node in NODES}
    assert len(pems) == 1
    cert = x509.load_pem_x509_certificate(pems.pop().encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "registry.internal",
        "registry.example.com",
    }
    assert sans.get_values_for_type(x509.IPAddress)[0] == ipaddress.ip_address(ip)
    record = only(spaces_run, DNS_RECORD).inputs
    assert (record["name"], record["value"], record["type"]) == ("registry", ip, "A")
    verify = spaces_run.named("client-0-verify-registry")
    activations = {spaces_run.named(f"{node}-activate").urn for node in NODES}
    assert activations <= set(verify.dependencies)


def test_certificate_names_every_nodes_private_ip_for_the_metrics_scraper(
    spaces_run: ProgramRun,
) -> None:
    # A scraper reaches each node's metrics listener at `<private IP>:9443` (metricsTargets)
    # and verifies it against the CA (README, Scraping): the shared certificate must name
    # every node's private address, as the single droplet's certificate names its own.
    cert = x509.load_pem_x509_certificate(file_text(spaces_run, NODES[0], "server_cert").encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    targets = spaces_run.outputs["metricsTargets"]
    assert len(targets) == len(NODES)
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(spaces_run.outputs["loadBalancerIp"]),
        *(ipaddress.ip_address(target.rsplit(":", 1)[0]) for target in targets),
    }


def test_metrics_urls_list_only_what_the_nodes_serve(
    spaces_run: ProgramRun, program_run: ProgramRun
) -> None:
    # Spaces nodes have no data volume, so no disk check writes /metrics/disk (a 404 there).
    ip = spaces_run.outputs["registryPrivateIp"]
    assert spaces_run.outputs["metricsUrls"] == {
        name: f"https://{ip}:9443/metrics/{name}" for name in ("registry", "nginx", "requests")
    }
    assert set(program_run.outputs["metricsUrls"]) == {"registry", "nginx", "requests", "disk"}
    assert not any(f.path.endswith("disk.sh") for f in REGISTRY_HOST_SPACES.files)


def test_without_a_domain_clients_map_the_name_to_the_balancer() -> None:
    run = run_program(overrides={**SPACES, "domain": "", "registryCount": 2})
    ip = run.outputs["loadBalancerIp"]
    assert run.named("client-0-trust-registry").inputs["create"].endswith(f" {ip}")
    assert f"echo '{ip} registry.internal'" in run.outputs["trustCaSteps"]
    assert [node["name"] for node in run.outputs["registryNodes"]] == [
        "registry-dev-registry-0",
        "registry-dev-registry-1",
    ]


def test_volume_mode_creates_nothing_of_the_spaces_mode(program_run: ProgramRun) -> None:
    for type_token in (LOAD_BALANCER, SPACES_KEY, BUCKET, PROVIDER):
        assert program_run.of_type(type_token) == [], type_token
    assert {"loadBalancerIp", "registryNodes", "spacesBucket"}.isdisjoint(program_run.outputs)
