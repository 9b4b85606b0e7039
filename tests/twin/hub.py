"""Docker Hub's stand-in in the twin: Debian's registry, TLS with a twin CA, on the public
network, serving the two images the hosts pull, built from the cached trees laid out as the
official images are. The one deliberate difference from a real deployment: the stack's
`registryImage` and `nginxImage` name these images (`Hub.image_config`).

It is also Docker Hub by name, for the Docker Hub cache (hubCache): the twin's DNS server (on
the same address, every droplet's resolver) answers Docker Hub's registry name with the
stand-in's address, port 443 leads to it, its certificate names it, and the twin CA is in the
images' CA bundle, as public CAs are in the real images' bundles."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.manifest import REGISTRY_LAYOUT
from tests.twin.droplets import PUBLIC_GATEWAY, Twin, run

HUB_PORT = 5000
HUB = f"{PUBLIC_GATEWAY}:{HUB_PORT}"
# Where a droplet finds the hub's CA (Docker's per-registry trust).
HUB_CA_PATH = f"/etc/docker/certs.d/{HUB}/ca.crt"
# Docker Hub's registry, as the cache reaches it (its name, on the HTTPS port).
DOCKER_HUB = urlparse(REGISTRY_LAYOUT.hub_cache_remote_url)
# Every droplet's resolver: the twin's DNS server (a lookup of another name fails at once).
RESOLV_CONF = f"nameserver {PUBLIC_GATEWAY}\noptions timeout:1 attempts:1\n"
# In an image's tree, the CA bundle Go and curl read.
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"

# The twin's DNS server: an A record for NAME, nothing for other types, NXDOMAIN for other
# names. argv: ADDRESS NAME.
DNS_SERVER = r"""
import socket, struct, sys
address, name = sys.argv[1:]
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((address, 53))
while True:
    query, client = server.recvfrom(512)
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1 : at + 1 + query[at]].decode().lower())
        at += 1 + query[at]
    question = query[12 : at + 5]
    qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
    known = ".".join(labels) == name
    answer = b""
    if known and qtype == 1:
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    flags = 0x8180 if known else 0x8183
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0)
    server.sendto(header + question + answer, client)
"""
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSpec:
    """An image as its official Dockerfile makes it: the tree's name in the cache, and config."""

    repository: str
    tag: str
    cmd: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    stop_signal: str = ""


IMAGES = {
    "registryImage": ImageSpec(
        "library/registry",
        "3-twin",
        ("/etc/distribution/config.yml",),
        entrypoint=("registry", "serve"),
    ),
    "nginxImage": ImageSpec(
        "library/nginx", "alpine-twin", ("nginx", "-g", "daemon off;"), stop_signal="SIGQUIT"
    ),
}


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A twin CA and the hub's certificate for its address and Docker Hub's registry name:
    (ca, certificate, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twin hub CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_GATEWAY)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address(PUBLIC_GATEWAY)),
                    x509.DNSName(str(DOCKER_HUB.hostname)),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "hub.crt", directory / "hub.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def _layer(tree: Path, replaced: Mapping[str, bytes]) -> bytes:
    """The tree as one reproducible tar (owner root, no times), with the files named in
    `replaced` (paths in the tree) holding its bytes instead."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(tree.rglob("*")):
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg() and info.name in replaced:
                info.size = len(replaced[info.name])
                archive.addfile(info, io.BytesIO(replaced[info.name]))
            elif info.isreg():
                with path.open("rb") as content:
                    archive.addfile(info, content)
            else:
                archive.addfile(info)
    return data.getvalue()


class Hub:
    def __init__(self, twin: Twin, directory: Path) -> None:
        self.twin = twin
        self.directory = directory
        directory.mkdir()
        self.ca, certificate, key = _certificates(directory)
        config = directory / "config.yml"
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    # info: each request's line ("response completed"), for the cache's tests.
                    "log": {"level": "info"},
                    "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}},
                    "http": {
                        "addr": HUB,
                        "tls": {"certificate": str(certificate), "key": str(key)},
                    },
                }
            )
        )
        twin.start_process(
            twin.deployer("env", "-u", "AWS_CA_BUNDLE", "docker-registry", "serve", str(config)),
            self.log,
        )
        self._curl("-f", "-o", "/dev/null", f"https://{HUB}/v2/", attempts=50)
        self.references = {key: self._push(spec) for key, spec in IMAGES.items()}
        twin.start_process(
            twin.deployer(
                sys.executable, "-c", DNS_SERVER, PUBLIC_GATEWAY, str(DOCKER_HUB.hostname)
            ),
            directory / "dns.log",
        )
        self._docker_hub_port("-A")

    @property
    def log(self) -> Path:
        return self.directory / "hub.log"

    def _docker_hub_port(self, action: str) -> None:
        """Docker Hub's HTTPS port on the hub's address leads to the hub (`-A`), or is closed
        (`-D`: connections are refused)."""
        port = str(DOCKER_HUB.port or 443)
        run(self.twin.deployer(
            "iptables", "-t", "nat", action, "PREROUTING", "-d", PUBLIC_GATEWAY, "-p", "tcp",
            "--dport", port, "-j", "REDIRECT", "--to-ports", str(HUB_PORT),
        ))  # fmt: skip

    @contextmanager
    def docker_hub_down(self) -> Iterator[None]:
        """Docker Hub refuses connections meanwhile (an outage, as the cache sees it)."""
        self._docker_hub_port("-D")
        try:
            yield
        finally:
            self._docker_hub_port("-A")

    @property
    def ca_pem(self) -> str:
        return self.ca.read_text()

    def image_config(self) -> dict[str, str]:
        """The stack config that makes the hosts pull the hub's images."""
        return dict(self.references)

    def _curl(self, *argv: str, attempts: int = 1, stdin: bytes | None = None) -> str:
        """curl from the deployer's network, trusting the hub's CA; `attempts` tries."""
        command = self.twin.deployer("curl", "-sS", "--cacert", str(self.ca), *argv)
        for _ in range(attempts - 1):
            try:
                return run(command, stdin=stdin)
            except RuntimeError:
                time.sleep(0.1)
        return run(command, stdin=stdin)

    def _put_blob(self, repository: str, data: bytes) -> str:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        headers = self._curl(
            "-f", "-D", "-", "-o", "/dev/null", "-X", "POST",
            f"https://{HUB}/v2/{repository}/blobs/uploads/",
        )  # fmt: skip
        location = next(
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith("location:")
        )
        separator = "&" if "?" in location else "?"
        if location.startswith("/"):
            location = f"https://{HUB}{location}"
        self._curl(
            "-f", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
            "--data-binary", "@-", f"{location}{separator}digest={digest}", stdin=data,
        )  # fmt: skip
        return digest

    def _push(self, spec: ImageSpec) -> str:
        tree = self.twin.build / "images" / spec.repository.rsplit("/", 1)[-1]
        bundle = tree / CA_BUNDLE
        replaced = (
            {CA_BUNDLE: bundle.read_bytes() + self.ca.read_bytes()} if bundle.exists() else {}
        )
        layer = _layer(tree, replaced)
        compressed = gzip.compress(layer, mtime=0)
        layer_digest = self._put_blob(spec.repository, compressed)
        container_config: dict[str, object] = {"Env": [PATH_ENV], "Cmd": list(spec.cmd)}
        if spec.entrypoint:
            container_config["Entrypoint"] = list(spec.entrypoint)
        if spec.stop_signal:
            container_config["StopSignal"] = spec.stop_signal
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": container_config,
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"],
                },
            },
            sort_keys=True,
        ).encode()
        config_digest = self._put_blob(spec.repository, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest,
                        "size": len(compressed),
                    }
                ],
            },
            sort_keys=True,
        ).encode()
        self._curl(
            "-f", "-o", "/dev/null", "-X", "PUT",
            "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary", "@-", f"https://{HUB}/v2/{spec.repository}/manifests/{spec.tag}",
            stdin=manifest,
        )  # fmt: skip
        digest = hashlib.sha256(manifest).hexdigest()
        return f"{HUB}/{spec.repository}:{spec.tag}@sha256:{digest}"
