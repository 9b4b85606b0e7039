"""Mocks that behave like the real providers, so a mocked run's outputs work for real.

- tls: real keys (ECDSA/RSA/ED25519), a real self-signed CA, real CSRs, and certificates really
  signed by the CA key they are given, with SANs and key usages taken from the inputs.
- random: passwords that follow the inputs' character rules (no `bcryptHash`: the program does
  not read it), random bytes.
- digitalocean: numeric droplet ids, public and VPC-private IPv4 addresses, MD5 key fingerprints.
- Outputs the providers mark secret (`additional_secret_outputs`) come back wrapped as secrets,
  as the engine would mark them.
- Like the engine with its state file: a resource registered again with identical inputs keeps
  its outputs (no new key, password or IP), so two runs of the program can be compared; one whose
  changed inputs the provider updates in place (`tests/lifecycle/schema.py`) keeps its id and
  computed outputs; ignored inputs (`ignore_changes`) keep their stored values; a certificate
  past its early renewal time (see `advance_clock`) is issued anew, as the tls provider does.
- An account: volumes outlive the stack that made them (`after_destroy`), `getVolume` and
  `Volume.get` find them, and a second volume with the same name in a region fails (409).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import secrets
import string
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret, wrap_rpc_secret

from tests.lifecycle import schema

# Outputs each provider marks secret (copied from the SDKs' additional_secret_outputs).
SECRET_OUTPUTS = {
    "tls:index/privateKey:PrivateKey": {"privateKeyOpenssh", "privateKeyPem", "privateKeyPemPkcs8"},
    "tls:index/selfSignedCert:SelfSignedCert": {"privateKeyPem"},
    "tls:index/certRequest:CertRequest": {"privateKeyPem"},
    "tls:index/locallySignedCert:LocallySignedCert": {"caPrivateKeyPem"},
    "random:index/randomPassword:RandomPassword": {"result", "bcryptHash"},
    "random:index/randomBytes:RandomBytes": {"base64", "hex"},
    "command:remote:Command": {"connection"},
    "digitalocean:index/spacesKey:SpacesKey": {"secretKey"},
    "digitalocean:index/databaseCluster:DatabaseCluster": {
        "password",
        "privateUri",
        "uiPassword",
        "uiUri",
        "uri",
    },
}


def unwrap(value: Any) -> Any:
    """Strip secret wrappers at every depth."""
    value = unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def contains_secret(value: Any) -> bool:
    if is_rpc_secret(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_secret(item) for item in value)
    return False


def _pem_private(key: Any, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def _load_private_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _signing_hash(key: Any) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(subject: dict[str, Any] | None) -> x509.Name:
    subject = subject or {}
    attributes = []
    if subject.get("organization"):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    if subject.get("commonName"):
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"]))
    return x509.Name(attributes)


def _sans(dns_names: list[str] | None, ips: list[str] | None) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names or []]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
    return names


def _add_usages(
    builder: x509.CertificateBuilder, uses: list[str], is_ca: bool
) -> x509.CertificateBuilder:
    flags = {
        "digital_signature": "digital_signature",
        "content_commitment": "content_commitment",
        "key_encipherment": "key_encipherment",
        "data_encipherment": "data_encipherment",
        "key_agreement": "key_agreement",
        "cert_signing": "key_cert_sign",
        "crl_signing": "crl_sign",
    }
    chosen = {flag: False for flag in flags.values()}
    for use in uses:
        if use in flags:
            chosen[flags[use]] = True
    if any(chosen.values()):
        builder = builder.add_extension(
            x509.KeyUsage(encipher_only=False, decipher_only=False, **chosen), critical=True
        )
    extended = {
        "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
        "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ekus = [extended[use] for use in uses if use in extended]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)


class ProviderMocks(Mocks):
    """Provider-like mocks with engine-like state across program runs (see module doc)."""

    def __init__(self) -> None:
        # (type, name) -> (inputs, id, outputs): the engine's state of this stack.
        self._state: dict[tuple[str, str], tuple[dict[str, Any], str, dict[str, Any]]] = {}
        # (type, name) -> the inputs registered with `ignore_changes` (set by the monitor).
        self.ignored_inputs: dict[tuple[str, str], list[str]] = {}
        # The account's volumes by id, whichever stack made them.
        self.volumes: dict[str, dict[str, Any]] = {}
        self._next_droplet = 0
        self._clock = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

    @property
    def now(self) -> datetime.datetime:
        return self._clock

    def advance_clock(self, delta: datetime.timedelta) -> None:
        """Let time pass before the next run (certificates come due for renewal)."""
        self._clock += delta

    def after_destroy(self, deleted_volume_ids: set[str]) -> ProviderMocks:
        """The account after `pulumi destroy`: an empty stack; volumes not deleted remain."""
        after = ProviderMocks()
        after.volumes = {
            volume_id: dict(volume)
            for volume_id, volume in self.volumes.items()
            if volume_id not in deleted_volume_ids
        }
        after._next_droplet = self._next_droplet
        after._clock = self._clock
        return after

    # -- the Mocks interface --------------------------------------------------------------
    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = unwrap(args.inputs)
        if args.resource_id and args.custom is None:  # `Resource.get`: read, never owned
            resource_id, outputs = self._read(args.typ, args.resource_id)
        else:
            resource_id, outputs = self._register(args.typ, args.name, inputs, args.custom)
        secret = SECRET_OUTPUTS.get(args.typ, set())
        return resource_id, {
            name: wrap_rpc_secret(value) if name in secret else value
            for name, value in outputs.items()
        }

    def _register(
        self, typ: str, name: str, inputs: dict[str, Any], custom: bool | None
    ) -> tuple[str, dict[str, Any]]:
        key = (typ, name)
        if key not in self._state:
            resource_id, outputs = self._create(typ, name, inputs, custom)
            self._state[key] = (inputs, resource_id, outputs)
            return resource_id, outputs
        old_inputs, resource_id, outputs = self._state[key]
        for ignored in self.ignored_inputs.get(key, []):
            if ignored in old_inputs:
                inputs[ignored] = old_inputs[ignored]
        changed = schema.changed_inputs(old_inputs, inputs)
        if not custom or not (changed or schema.due_for_renewal(typ, outputs, self._clock)):
            return resource_id, outputs
        if schema.replacing_inputs(typ, changed) or schema.due_for_renewal(
            typ, outputs, self._clock
        ):
            resource_id, outputs = self._create(typ, name, inputs, custom)
        else:  # an in-place update: same id, computed outputs kept, inputs as given
            outputs = {**{k: v for k, v in outputs.items() if k not in old_inputs}, **inputs}
            if typ == schema.VOLUME:
                self.volumes[resource_id] = outputs
        self._state[key] = (inputs, resource_id, outputs)
        return resource_id, outputs

    def _read(self, typ: str, resource_id: str) -> tuple[str, dict[str, Any]]:
        if typ != schema.VOLUME:
            raise NotImplementedError(f"the program should not read a {typ}")
        if resource_id not in self.volumes:
            raise ValueError(f"digitalocean: volume {resource_id} not found (404)")
        return resource_id, self.volumes[resource_id]

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token != "digitalocean:index/getVolume:getVolume":
            raise NotImplementedError(f"the program should not call {args.token}")
        wanted = unwrap(args.args)
        found = [
            {"id": volume_id, **volume}
            for volume_id, volume in self.volumes.items()
            if volume["name"] == wanted["name"] and wanted.get("region") in (None, volume["region"])
        ]
        # The data source's own errors (datasource_volume.go, findVolumeByName).
        if not found:
            raise ValueError(f"no volumes found with name {wanted['name']}")
        if len(found) > 1:
            raise ValueError(
                f"too many volumes found with name {wanted['name']} "
                f"(found {len(found)}, expected 1)"
            )
        volume = found[0]
        return {
            key: volume[key]
            for key in (
                "id",
                "name",
                "region",
                "size",
                "urn",
                "description",
                "filesystemType",
                "filesystemLabel",
                "dropletIds",
            )
        }, []

    def provided(self, typ: str, name: str) -> tuple[str, dict[str, Any]]:
        """The id and outputs this provider returned for a resource (to check what the program
        did with them)."""
        _, resource_id, outputs = self._state[(typ, name)]
        return resource_id, outputs

    # -- providers ------------------------------------------------------------------------
    def _create(
        self, typ: str, name: str, inputs: dict[str, Any], custom: bool | None
    ) -> tuple[str, dict[str, Any]]:
        if not custom:  # component resources have no provider
            return f"{name}-component", {}
        handler = {
            "tls:index/privateKey:PrivateKey": self._private_key,
            "tls:index/selfSignedCert:SelfSignedCert": self._self_signed_cert,
            "tls:index/certRequest:CertRequest": self._cert_request,
            "tls:index/locallySignedCert:LocallySignedCert": self._locally_signed_cert,
            "random:index/randomPassword:RandomPassword": self._random_password,
            "random:index/randomBytes:RandomBytes": self._random_bytes,
            "random:index/randomId:RandomId": self._random_id,
            "digitalocean:index/droplet:Droplet": self._droplet,
            "digitalocean:index/volume:Volume": self._volume,
            "digitalocean:index/volumeAttachment:VolumeAttachment": self._volume_attachment,
            "digitalocean:index/sshKey:SshKey": self._ssh_key,
            "digitalocean:index/tag:Tag": self._tag,
            "digitalocean:index/firewall:Firewall": self._with_uuid("firewall"),
            "digitalocean:index/dnsRecord:DnsRecord": self._dns_record,
            "digitalocean:index/uptimeCheck:UptimeCheck": self._with_uuid("uptimecheck"),
            "digitalocean:index/uptimeAlert:UptimeAlert": self._with_uuid("uptimealert"),
            "digitalocean:index/monitorAlert:MonitorAlert": self._monitor_alert,
            "digitalocean:index/project:Project": self._with_uuid("project"),
            "command:remote:Command": self._remote_command,
            "digitalocean:index/loadBalancer:LoadBalancer": self._load_balancer,
            "digitalocean:index/spacesKey:SpacesKey": self._spaces_key,
            "digitalocean:index/spacesBucket:SpacesBucket": self._spaces_bucket,
            "digitalocean:index/databaseCluster:DatabaseCluster": self._database_cluster,
            "digitalocean:index/databaseFirewall:DatabaseFirewall": self._with_uuid("dbfirewall"),
            "pulumi:providers:digitalocean": lambda name, inputs: (f"{name}-provider", inputs),
        }.get(typ)
        if handler is None:
            raise NotImplementedError(f"no provider-like mock for {typ}")
        return handler(name, dict(inputs))

    def _private_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        algorithm = inputs.get("algorithm", "RSA")
        key: Any
        if algorithm == "ECDSA":
            curve = {
                "P224": ec.SECP224R1(),
                "P256": ec.SECP256R1(),
                "P384": ec.SECP384R1(),
                "P521": ec.SECP521R1(),
            }[inputs.get("ecdsaCurve", "P224")]
            key = ec.generate_private_key(curve)
            traditional = _pem_private(key, serialization.PrivateFormat.TraditionalOpenSSL)
        elif algorithm == "RSA":
            key = rsa.generate_private_key(65537, int(inputs.get("rsaBits", 2048)))
            traditional = _pem_private(key, serialization.PrivateFormat.TraditionalOpenSSL)
        elif algorithm == "ED25519":
            key = ed25519.Ed25519PrivateKey.generate()
            traditional = _pem_private(key, serialization.PrivateFormat.PKCS8)
        else:
            raise ValueError(f"tls: invalid algorithm {algorithm}")
        public = key.public_key()
        openssh_public = public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        blob = base64.b64decode(openssh_public.split()[1])
        md5 = hashlib.md5(blob).hexdigest()
        return f"{name}-{uuid.uuid4().hex[:8]}", {
            **inputs,
            "privateKeyPem": traditional,
            "privateKeyPemPkcs8": _pem_private(key, serialization.PrivateFormat.PKCS8),
            "privateKeyOpenssh": _pem_private(key, serialization.PrivateFormat.OpenSSH),
            "publicKeyPem": public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode(),
            "publicKeyOpenssh": openssh_public + "\n",
            "publicKeyFingerprintMd5": ":".join(md5[i : i + 2] for i in range(0, 32, 2)),
            "publicKeyFingerprintSha256": "SHA256:"
            + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="),
        }

    def _validity(self, inputs: dict[str, Any]) -> tuple[datetime.datetime, datetime.datetime]:
        start = self._clock
        return start, start + datetime.timedelta(hours=int(inputs["validityPeriodHours"]))

    def _self_signed_cert(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = _load_private_key(inputs["privateKeyPem"])
        start, end = self._validity(inputs)
        subject = _name(inputs.get("subject"))
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        builder = _add_usages(
            builder, inputs.get("allowedUses", []), bool(inputs.get("isCaCertificate"))
        )
        if inputs.get("setSubjectKeyId"):
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        sans = _sans(inputs.get("dnsNames"), inputs.get("ipAddresses"))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(key, _signing_hash(key))
        return str(serial), {**inputs, **self._cert_outputs(cert, inputs)}

    def _cert_outputs(self, cert: x509.Certificate, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "validityStartTime": cert.not_valid_before_utc.isoformat(),
            "validityEndTime": cert.not_valid_after_utc.isoformat(),
            "readyForRenewal": False,
            "earlyRenewalHours": inputs.get("earlyRenewalHours", 0),
        }

    def _cert_request(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = _load_private_key(inputs["privateKeyPem"])
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        sans = _sans(inputs.get("dnsNames"), inputs.get("ipAddresses"))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(key, _signing_hash(key))
        request_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        return f"{name}-csr", {**inputs, "certRequestPem": request_pem}

    def _locally_signed_cert(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        ca_key = _load_private_key(inputs["caPrivateKeyPem"])
        if ca_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != ca_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ValueError("tls: the CA private key does not match the CA certificate")
        start, end = self._validity(inputs)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        builder = _add_usages(
            builder, inputs.get("allowedUses", []), bool(inputs.get("isCaCertificate"))
        )
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            builder = builder.add_extension(sans.value, critical=False)
        except x509.ExtensionNotFound:
            pass
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        cert = builder.sign(ca_key, _signing_hash(ca_key))
        return str(serial), {**inputs, **self._cert_outputs(cert, inputs)}

    def _random_password(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        length = int(inputs["length"])
        classes = []
        for flag, minimum_key, alphabet in [
            ("upper", "minUpper", string.ascii_uppercase),
            ("lower", "minLower", string.ascii_lowercase),
            ("numeric", "minNumeric", string.digits),
            ("special", "minSpecial", inputs.get("overrideSpecial", "!@#$%&*()-_=+[]{}<>:?")),
        ]:
            if inputs.get(flag, True):
                classes.append((int(inputs.get(minimum_key, 0)), alphabet))
        chars = [secrets.choice(alphabet) for minimum, alphabet in classes for _ in range(minimum)]
        everything = "".join(alphabet for _, alphabet in classes)
        chars += [secrets.choice(everything) for _ in range(length - len(chars))]
        secrets.SystemRandom().shuffle(chars)
        return "none", {**inputs, "result": "".join(chars)}

    def _random_bytes(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = secrets.token_bytes(int(inputs["length"]))
        return "none", {**inputs, "base64": base64.b64encode(data).decode(), "hex": data.hex()}

    def _random_id(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """As terraform-provider-random's random_id: its id is the base64url form."""
        data = secrets.token_bytes(int(inputs["byteLength"]))
        b64_url = base64.urlsafe_b64encode(data).decode().rstrip("=")
        return b64_url, {
            **inputs,
            "hex": data.hex(),
            "b64Url": b64_url,
            "b64Std": base64.b64encode(data).decode(),
            "dec": str(int.from_bytes(data, "big")),
        }

    def _droplet(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._next_droplet += 1
        droplet_id = 500000000 + self._next_droplet
        return str(droplet_id), {
            **inputs,
            "ipv4Address": f"203.0.113.{10 + self._next_droplet}",
            "ipv4AddressPrivate": f"10.110.0.{10 + self._next_droplet}",
            "urn": f"do:droplet:{droplet_id}",
            "dropletUrn": f"do:droplet:{droplet_id}",
            "status": "active",
        }

    @staticmethod
    def _with_uuid(kind: str) -> Any:
        def create(name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            resource_id = str(uuid.uuid4())
            return resource_id, {**inputs, "urn": f"do:{kind}:{resource_id}"}

        return create

    def _volume(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        for volume in self.volumes.values():
            if (volume["name"], volume["region"]) == (inputs["name"], inputs["region"]):
                raise ValueError(
                    f"Error creating Volume: POST https://api.digitalocean.com/v2/"
                    f"volumes: 409 a volume named {inputs['name']} already exists "
                    f"in {inputs['region']}"
                )
        volume_id = str(uuid.uuid4())
        outputs = {
            **inputs,
            "urn": f"do:volume:{volume_id}",
            "volumeUrn": f"do:volume:{volume_id}",
            "filesystemType": inputs.get("initialFilesystemType", ""),
            "filesystemLabel": inputs.get("initialFilesystemLabel", ""),
            "dropletIds": [],
        }
        self.volumes[volume_id] = outputs
        return volume_id, outputs

    def _volume_attachment(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not isinstance(inputs.get("dropletId"), (int, float)):
            raise TypeError("digitalocean: VolumeAttachment.droplet_id must be a number")
        return f"{int(inputs['dropletId'])}-{inputs['volumeId']}", inputs

    def _ssh_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        blob = base64.b64decode(inputs["publicKey"].split()[1])
        md5 = hashlib.md5(blob).hexdigest()
        return str(40000000 + len(self._state)), {
            **inputs,
            "fingerprint": ":".join(md5[i : i + 2] for i in range(0, 32, 2)),
        }

    def _tag(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return inputs["name"], {**inputs, "dropletsCount": 0}

    @staticmethod
    def _monitor_alert(name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        alert_id = str(uuid.uuid4())
        return alert_id, {**inputs, "uuid": alert_id}

    def _dns_record(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(30000000 + len(self._state)), {
            **inputs,
            "fqdn": f"{inputs['name']}.{inputs['domain']}",
        }

    def _load_balancer(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        balancer_id = str(uuid.uuid4())
        return balancer_id, {
            **inputs,
            "ip": f"198.51.100.{10 + len(self._state) % 200}",
            "urn": f"do:loadbalancer:{balancer_id}",
            "status": "active",
        }

    def _spaces_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        access_key = "DO" + hashlib.sha256(name.encode()).hexdigest()[:18].upper()
        secret = base64.b64encode(hashlib.sha256(b"secret " + name.encode()).digest()).decode()
        return access_key, {**inputs, "accessKey": access_key, "secretKey": secret}

    def _spaces_bucket(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        region, bucket = inputs["region"], inputs["name"]
        return f"{region}:{bucket}", {
            **inputs,
            "bucketDomainName": f"{bucket}.{region}.digitaloceanspaces.com",
            "endpoint": f"{region}.digitaloceanspaces.com",
            "urn": f"do:space:{bucket}",
        }

    def _database_cluster(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cluster_id = str(uuid.uuid4())
        host = f"{inputs['name']}-do-user-1.db.ondigitalocean.com"
        private_host = f"private-{host}"
        password = "AVNS_" + secrets.token_urlsafe(18)
        user, port = "default", 25061
        return cluster_id, {
            **inputs,
            "host": host,
            "privateHost": private_host,
            "port": port,
            "user": user,
            "password": password,
            "uri": f"rediss://{user}:{password}@{host}:{port}",
            "privateUri": f"rediss://{user}:{password}@{private_host}:{port}",
            "urn": f"do:dbaas:{cluster_id}",
        }

    def _remote_command(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"{name}-{uuid.uuid4().hex[:8]}", {**inputs, "stdout": "", "stderr": ""}
