"""Certificates and tokens made in the test: a small PKI (``cryptography``) and JWTs (PyJWT)."""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.settings import TlsSettings

ISSUER = "https://issuer.test"
AUDIENCE = "gss"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass
class Authority:
    """A CA that issues server and client certificates into ``directory``."""

    directory: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        authority = cls(directory, name, key, cert)
        authority.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return authority

    @property
    def ca_file(self) -> Path:
        return self.directory / f"{self.name}-ca.crt"

    def issue(
        self, common_name: str, *, server: bool = False, expired: bool = False, dns: str = ""
    ) -> tuple[Path, Path]:
        """(certificate file, key file) for ``common_name``; servers get localhost/127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start, end = (
            (now - timedelta(days=10), now - timedelta(days=1))
            if expired
            else (now - timedelta(days=1), now + timedelta(days=10))
        )
        names: list[x509.GeneralName] = (
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            if server
            else ([x509.DNSName(dns)] if dns else [])
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.directory / f"{common_name}.crt"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_file, _write_key(key, self.directory / f"{common_name}.key")

    def client_tls(self, server_ca: Path, common_name: str | None = None, **kw: Any) -> TlsSettings:
        """Client TLS trusting ``server_ca``, with a certificate of this CA if ``common_name``."""
        if common_name is None:
            return TlsSettings(ca_file=server_ca, server_name="localhost")
        cert, key = self.issue(common_name, **kw)
        return TlsSettings(ca_file=server_ca, cert_file=cert, key_file=key, server_name="localhost")


@dataclass
class Signer:
    """Signs JWTs with one EC key; ``jwks_file`` holds its public half."""

    key: ec.EllipticCurvePrivateKey
    kid: str

    @classmethod
    def create(cls, kid: str) -> Signer:
        return cls(ec.generate_private_key(ec.SECP256R1()), kid)

    def write_jwks(self, path: Path) -> Path:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="ES256")
        path.write_text(json.dumps({"keys": [jwk]}))
        return path

    def token(
        self,
        subject: str,
        scopes: list[str],
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        expires_in: float = 600.0,
    ) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "scope": " ".join(scopes),
            "aud": audience,
            "iss": issuer,
            "iat": now,
            "exp": now + int(expires_in),
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})
