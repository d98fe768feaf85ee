"""The terminal's TLS material for the broker link: building the client's parameters and judging the files.

A terminal proves who it is to the broker with its own client certificate
(the broker turns the certificate's CN into the MQTT username, and the ACL
confines that username to the terminal's own topics). So a wrong file here
does not degrade gracefully: the broker refuses the connection, or accepts it
under another identity that the ACL then silences. :func:`inspect_material`
names each of those mistakes while a technician is still on site
(``unionterm provision`` and ``unionterm doctor`` both use it), instead of
leaving a terminal that quietly never reports.
"""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from .config import Config
from .exceptions import ConfigError

#: A certificate closer than this to its end is worth a warning: renewal takes a CA round trip.
RENEW_WARNING = datetime.timedelta(days=30)


def tls_params(cfg: Config) -> aiomqtt.TLSParameters | None:
    """What the MQTT client needs for ``[tls]``, or ``None`` for a plain connection.

    The broker's certificate is always verified (chain to ``ca_file`` and host
    name): a terminal that would talk to any broker would take member lists
    and commands from anyone who can redirect its traffic.
    """
    tls = cfg.tls
    if not tls.ca_file:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(cfg.config_path(tls.ca_file)),
        certfile=str(cfg.config_path(tls.cert_file)) if tls.cert_file else None,
        keyfile=str(cfg.config_path(tls.key_file)) if tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


@dataclass(frozen=True)
class ClientCertificate:
    """What a technician needs to know about the terminal's certificate."""

    subject_cn: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int

    def days_left(self, now: datetime.datetime) -> int:
        """Whole days of validity left: renewal needs a CA round trip, so it is announced early."""
        return (self.not_after - now).days


@dataclass(frozen=True)
class TlsMaterial:
    """The checked files behind ``[tls]``; ``certificate`` is None without a client certificate."""

    ca_subjects: tuple[str, ...]
    certificate: ClientCertificate | None
    warnings: tuple[str, ...] = ()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"unreadable: {exc.strerror}") from None


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def load_ca(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; an empty or non-PEM file is refused."""
    try:
        certificates = x509.load_pem_x509_certificates(_read(path))
    except ValueError:
        raise ConfigError(str(path), None, "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    return certificates


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the terminal's own)."""
    return load_ca(path)[0]


def load_private_key(path: Path) -> PrivateKeyTypes:
    """An unencrypted PEM private key (the service starts unattended, so no passphrase)."""
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:
        raise ConfigError(str(path), None, "the key is encrypted; the terminal needs it unencrypted (mode 0600)") from None
    except ValueError:
        raise ConfigError(str(path), None, "not a PEM private key") from None


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(certificate: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private half of ``certificate``."""
    return _public_der(certificate.public_key()) == _public_der(key.public_key())


def issued_by(certificate: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    """Whether one of ``authorities`` signed ``certificate`` (one level: the unionterm CA signs terminals)."""
    for ca in authorities:
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def inspect_material(cfg: Config, now: datetime.datetime | None = None) -> TlsMaterial | None:
    """Check the ``[tls]`` files as the broker will; ``None`` when TLS is off.

    Raises :class:`ConfigError` naming the file for anything that makes the
    broker refuse the terminal (missing or unreadable file, key of another
    certificate, certificate not from this CA, expired or not yet valid) or
    that leaks the identity (a key others may read). A CN other than the
    terminal id is an error too: the broker would accept the connection and
    the ACL would then drop everything the terminal publishes.
    """
    tls = cfg.tls
    if not tls.ca_file:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    authorities = load_ca(cfg.config_path(tls.ca_file))
    subjects = tuple(_cn(ca.subject) for ca in authorities)
    if not tls.cert_file:
        return TlsMaterial(subjects, None, ("no client certificate: a broker with require_certificate refuses",))
    cert_path, key_path = cfg.config_path(tls.cert_file), cfg.config_path(tls.key_file)
    certificate = load_certificate(cert_path)
    mode = stat.S_IMODE(os.stat(key_path).st_mode) if key_path.exists() else 0
    if mode & 0o077:
        raise ConfigError(str(key_path), None, f"mode {mode:04o} lets others read the terminal's private key; chmod 600 it")
    key = load_private_key(key_path)
    if not key_matches(certificate, key):
        raise ConfigError(str(key_path), None, f"this key does not belong to the certificate {cert_path.name} "
                          "(wrong key file, or a certificate issued for another key)")
    if not issued_by(certificate, authorities):
        raise ConfigError(str(cert_path), None, f"not issued by the CA in {Path(tls.ca_file).name} "
                          f"({', '.join(subjects) or 'no CA'}); the broker will refuse it")
    info = ClientCertificate(_cn(certificate.subject), certificate.not_valid_before_utc,
                             certificate.not_valid_after_utc, certificate.serial_number)
    if now >= info.not_after:
        raise ConfigError(str(cert_path), None, f"certificate expired on {info.not_after:%Y-%m-%d %H:%M} UTC; "
                          "request a new one (unionterm provision --generate-key, then install the signed certificate)")
    if now < info.not_before:
        raise ConfigError(str(cert_path), None, f"certificate is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC "
                          "(or this terminal's clock is wrong)")
    if info.subject_cn != cfg.terminal.id:
        raise ConfigError(str(cert_path), None, f"certificate is for {info.subject_cn!r}, this terminal is "
                          f"{cfg.terminal.id!r}: the broker's ACL would drop everything it publishes")
    warnings = ()
    if info.not_after - now < RENEW_WARNING:
        warnings = (f"certificate expires in {info.days_left(now)} days ({info.not_after:%Y-%m-%d}); renew it",)
    return TlsMaterial(subjects, info, warnings)
