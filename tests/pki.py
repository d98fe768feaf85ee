"""A throw-away PKI for tests that need real TLS: CA, broker, terminals, CRL.

Mirrors the production layout the broker config expects (one CA signs the
broker and every client; a terminal's certificate CN is its terminal id and
becomes its MQTT username), so a test exercises the same checks mosquitto
makes in the field: chain, validity dates, revocation. EC P-256 keys keep
generation in the milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unionterm test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, and where they were written."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


@dataclass
class CertificateAuthority:
    """A self-signed root that issues into ``directory`` and keeps its revocation list."""

    directory: Path
    common_name: str = "unionterm test CA"
    key: ec.EllipticCurvePrivateKey = field(init=False)
    certificate: x509.Certificate = field(init=False)
    revoked: list[x509.Certificate] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key()
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(self.common_name))
            .issuer_name(_name(self.common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    def issue(
        self,
        common_name: str,
        *,
        server_hosts: tuple[str, ...] = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """Sign a leaf: a server certificate if ``server_hosts`` is given, else a client one.

        Hosts that parse as IP addresses become IP SANs, the rest DNS SANs, as
        TLS clients check the one matching what they dialled.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY)
            .not_valid_after(not_after or now + 7 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server_hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in server_hosts]), critical=False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = self.directory / common_name
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(certificate, key, cert_path, key_path)

    def revoke(self, issued: Issued) -> None:
        """Add a certificate to the CRL and rewrite ``crl.pem``."""
        self.revoked.append(issued.certificate)
        self.write_crl()

    def write_crl(self) -> Path:
        """Publish the current CRL (also when empty: a broker with CRL checks needs one)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + DAY)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .add_extension(x509.CRLNumber(len(self.revoked) + 1), critical=False)
        )
        for certificate in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(certificate.serial_number)
                .revocation_date(now - datetime.timedelta(minutes=1))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        self.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class BrokerPki:
    """Everything a TLS broker test needs, written to one directory."""

    ca: CertificateAuthority
    server: Issued
    clients: dict[str, Issued]
    revoked: Issued
    expired: Issued


def make_broker_pki(
    directory: Path,
    client_names: tuple[str, ...] = ("T1", "T2", "backoffice"),
) -> BrokerPki:
    """CA, broker cert for 127.0.0.1/localhost, good clients, one revoked and one expired client.

    The revoked and expired certificates carry terminal ids the ACL would
    otherwise accept (``T-REVOKED``, ``T-EXPIRED``), so a refused connection
    is due to the certificate alone.
    """
    ca = CertificateAuthority(directory)
    server = ca.issue("broker", server_hosts=("127.0.0.1", "localhost"))
    clients = {name: ca.issue(name) for name in client_names}
    revoked = ca.issue("T-REVOKED")
    ca.revoke(revoked)
    now = _now()
    expired = ca.issue("T-EXPIRED", not_before=now - 30 * DAY, not_after=now - DAY)
    return BrokerPki(ca=ca, server=server, clients=clients, revoked=revoked, expired=expired)
