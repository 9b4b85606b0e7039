"""A stand-in for Docker Hub on the simulated Internet (the host sim's public namespace).

Debian's `docker-registry` with its own TLS certificate (for `registry-1.docker.io` and the
Internet address, from a CA of its own that the cache's container gets as its CA bundle), and
Docker Hub's kind of auth: bearer tokens from a token server that checks the account's
user name and access token (HTTP Basic), as auth.docker.io does. The token server logs each
request and whether its credentials matched, never the credentials.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.realstack.hostsim import CURL_STATUS, LOG_FIELD, RegistryHostSim, sh

HUB_NAME = "registry-1.docker.io"
TOKEN_PORT = 8080
SERVICE = "registry.docker.io"
ISSUER = "auth.docker.io"

# The token server: a bearer token (ES256 JWT with the signing certificate in x5c) for the
# scope asked, to the one account; 401 otherwise. Run with the venv's Python in the public
# namespace. argv: ADDRESS PORT KEY CERT USER TOKEN_FILE LOG.
TOKEN_SERVER = r"""
import base64, hashlib, hmac, json, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

address, port, key_file, cert_file, user, token_file, log_file = sys.argv[1:]
key = serialization.load_pem_private_key(open(key_file, "rb").read(), None)
cert = x509.load_pem_x509_certificate(open(cert_file, "rb").read())
x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
expected = base64.b64encode(f"{user}:{open(token_file).read().strip()}".encode()).decode()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(scopes):
    access = []
    for scope in scopes:
        kind, name, actions = scope.split(":")
        access.append({"type": kind, "name": name, "actions": actions.split(",")})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "ES256", "x5c": [x5c]}
    claims = {"iss": "ISSUER", "sub": user, "aud": "SERVICE", "exp": now + 300,
              "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        sent = self.headers.get("Authorization", "")
        matched = hmac.compare_digest(sent, f"Basic {expected}")
        with open(log_file, "a") as log:
            entry = {"client": self.client_address[0], "path": urlparse(self.path).path,
                     "credentials": bool(sent), "matched": matched}
            log.write(json.dumps(entry) + "\n")
        if not matched:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="stand-in"')
            self.end_headers()
            return
        scopes = parse_qs(urlparse(self.path).query).get("scope", [])
        body = json.dumps({"token": jwt(scopes), "access_token": jwt(scopes),
                           "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((address, int(port)), Handler).serve_forever()
""".replace("ISSUER", ISSUER).replace("SERVICE", SERVICE)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class DockerHubStandIn:
    """The stand-in's files under `workdir`, its processes in the sim's public namespace."""

    sim: RegistryHostSim
    workdir: Path
    user: str
    token: str

    def __post_init__(self) -> None:
        self.address = self.sim.internet_ip
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("Docker Hub stand-in CA", ca_key, None, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _certificate(
            HUB_NAME,
            server_key,
            (ca, ca_key),
            [x509.DNSName(HUB_NAME), x509.IPAddress(ipaddress.ip_address(self.address))],
        )
        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing = _certificate(ISSUER, signing_key, None)
        self.ca_pem = _pem(ca).decode()
        files = {
            "ca.crt": _pem(ca),
            "server.crt": _pem(server),
            "server.key": _pem_key(server_key),
            "signing.crt": _pem(signing),
            "signing.key": _pem_key(signing_key),
            "token": self.token.encode(),
            "token_server.py": TOKEN_SERVER.encode(),
        }
        for name, data in files.items():
            (self.workdir / name).write_bytes(data)
            (self.workdir / name).chmod(0o600)
        (self.workdir / "certs").mkdir(exist_ok=True)  # for skopeo's --dest-cert-dir
        (self.workdir / "certs" / "ca.crt").write_bytes(_pem(ca))
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": {
                "addr": f"{self.address}:443",
                "secret": "stand-in",
                "tls": {
                    "certificate": str(self.workdir / "server.crt"),
                    "key": str(self.workdir / "server.key"),
                },
            },
            "auth": {
                "token": {
                    "realm": f"http://{self.address}:{TOKEN_PORT}/token",
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.workdir / "signing.crt"),
                }
            },
        }
        (self.workdir / "config.yml").write_text(json.dumps(config))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def registry_log(self) -> Path:
        return self.workdir / "registry.log"

    @property
    def token_log(self) -> Path:
        return self.workdir / "token.log"

    def start(self) -> None:
        self._spawn(
            "token",
            [
                sys.executable,
                str(self.workdir / "token_server.py"),
                self.address,
                str(TOKEN_PORT),
                str(self.workdir / "signing.key"),
                str(self.workdir / "signing.crt"),
                self.user,
                str(self.workdir / "token"),
                str(self.token_log),
            ],
            self.workdir / "token-server.log",
        )
        self._spawn(
            "registry",
            ["docker-registry", "serve", str(self.workdir / "config.yml")],
            self.registry_log,
        )
        for url in (f"https://{self.address}/v2/", f"http://{self.address}:{TOKEN_PORT}/token"):
            self._wait_for_401(url)

    def _wait_for_401(self, url: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            argv = [*CURL_STATUS, "--cacert", str(self.workdir / "ca.crt"), url]
            if sh(*self.sim.public_argv(argv), check=False).stdout.decode() == "401":
                return
            time.sleep(0.1)
        logs = [self.registry_log, self.workdir / "token-server.log"]
        raise AssertionError(
            f"stand-in not up at {url}:\n" + "\n".join(log.read_text()[-2000:] for log in logs)
        )

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            # No AWS_CA_BUNDLE (see DESIGN.md) and nothing else of the machine's environment.
            self.processes[name] = subprocess.Popen(
                self.sim.public_argv(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                start_new_session=True,
            )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
        self.processes.clear()

    def requests(self) -> list[dict[str, str]]:
        """The `http.request.*` fields of every request the stand-in answered, oldest first (its
        log is written at once)."""
        return [
            {key: value.strip('"') for key, value in LOG_FIELD.findall(line)}
            for line in self.registry_log.read_text(errors="replace").splitlines()
            if 'msg="response completed"' in line
        ]

    def blob_gets(self, client: str) -> list[str]:
        """The URIs of the blob GETs `client` (an address) made, oldest first."""
        return [
            request["http.request.uri"]
            for request in self.requests()
            if request.get("http.request.method") == "GET"
            and request.get("http.request.remoteaddr", "").rsplit(":", 1)[0] == client
            and "/blobs/" in request.get("http.request.uri", "")
        ]

    def token_requests(self) -> list[dict[str, Any]]:
        if not self.token_log.exists():
            return []
        return [json.loads(line) for line in self.token_log.read_text().splitlines()]
