"""The stack's private PKI: a CA, and the registry's server certificate signed by it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

CA_VALIDITY_HOURS = 87600  # 10 years
CA_EARLY_RENEWAL_HOURS = 8760  # renewed (and re-trusted by the clients) in its last year
SERVER_KEY_USES = ["digital_signature", "key_encipherment", "server_auth"]


def private_key(name: str, algorithm: str, opts: pulumi.ResourceOptions) -> tls.PrivateKey:
    """ECDSA P-256 (small, fast handshakes) or RSA 3072."""
    if algorithm == "ECDSA":
        return tls.PrivateKey(name, algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    return tls.PrivateKey(name, algorithm="RSA", rsa_bits=3072, opts=opts)


@dataclass
class CertificateAuthorityArgs:
    common_name: str
    key_algorithm: str


class CertificateAuthority(pulumi.ComponentResource):
    """CA key and self-signed CA certificate. `cert_pem` is public; the key stays secret."""

    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]

    def __init__(
        self, name: str, args: CertificateAuthorityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:CertificateAuthority", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = private_key(f"{name}-key", args.key_algorithm, child)
        cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=args.common_name, organization="private-registry"
            ),
            is_ca_certificate=True,
            allowed_uses=["cert_signing", "crl_signing"],
            validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
            set_subject_key_id=True,
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.private_key_pem = key.private_key_pem
        self.register_outputs({"certPem": self.cert_pem})


@dataclass
class ServerCertificateArgs:
    ca: CertificateAuthority
    dns_names: Sequence[str]
    ip_addresses: Sequence[pulumi.Input[str]]
    key_algorithm: str
    validity_hours: int
    early_renewal_hours: int


class ServerCertificate(pulumi.ComponentResource):
    """Server key, CSR and CA-signed certificate whose SANs hold every name and IP clients use."""

    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]

    def __init__(
        self, name: str, args: ServerCertificateArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:ServerCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = private_key(f"{name}-key", args.key_algorithm, child)
        request = tls.CertRequest(
            f"{name}-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(
                common_name=args.dns_names[0], organization="private-registry"
            ),
            dns_names=list(args.dns_names),
            ip_addresses=list(args.ip_addresses),
            opts=child,
        )
        cert = tls.LocallySignedCert(
            f"{name}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_cert_pem=args.ca.cert_pem,
            ca_private_key_pem=args.ca.private_key_pem,
            allowed_uses=SERVER_KEY_USES,
            validity_period_hours=args.validity_hours,
            early_renewal_hours=args.early_renewal_hours,
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.private_key_pem = key.private_key_pem
        self.register_outputs({"certPem": self.cert_pem})
