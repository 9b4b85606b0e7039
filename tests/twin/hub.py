"""Docker Hub's stand-in in the twin: Debian's registry, TLS with a twin CA, on the public
network, serving the two images the hosts pull, built from the cached trees laid out as the
official images are. The one deliberate difference from a real deployment: the stack's
`registryImage` and `nginxImage` name these images (`Hub.image_config`)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.twin.droplets import PUBLIC_GATEWAY, Twin, run

HUB_PORT = 5000
HUB = f"{PUBLIC_GATEWAY}:{HUB_PORT}"
# Where a droplet finds the hub's CA (Docker's per-registry trust).
HUB_CA_PATH = f"/etc/docker/certs.d/{HUB}/ca.crt"
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
    """A twin CA and the hub's certificate for its address: (ca, certificate, key) files."""
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(PUBLIC_GATEWAY))]),
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


def _layer(tree: Path) -> bytes:
    """The tree as one reproducible tar (owner root, no times)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(tree.rglob("*")):
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg():
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
                    "log": {"level": "warn"},
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
            directory / "hub.log",
        )
        self._curl("-f", "-o", "/dev/null", f"https://{HUB}/v2/", attempts=50)
        self.references = {key: self._push(spec) for key, spec in IMAGES.items()}

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
        layer = _layer(tree)
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
