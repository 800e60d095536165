"""The server's TLS credentials, read again whenever the certificate files change.

grpcio asks :func:`server_credentials`' fetcher for the configuration at every new TLS
handshake; the fetcher answers a new one only when a file's (mtime, size, inode) changed and
the new certificate and key belong together, so a rotation (cert-manager swapping a Secret's
files) takes effect for new connections without a restart, and a half-written rotation never
breaks handshakes: the previous configuration stays until the files agree.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from contract.errors import InvalidArgumentError
from contract.settings import TlsSettings

log = structlog.get_logger(__name__)

_FileState = tuple[tuple[int, int, int] | None, ...]


def _states(paths: tuple[Path | None, ...]) -> _FileState:
    out = []
    for path in paths:
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        out.append((stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None)
    return tuple(out)


def _read(cert: Path, key: Path, ca: Path | None) -> grpc.ServerCertificateConfiguration:
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    certificate = x509.load_pem_x509_certificate(cert_pem)
    private_key = load_pem_private_key(key_pem, password=None)
    spki = PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        Encoding.PEM, spki
    ) != private_key.public_key().public_bytes(Encoding.PEM, spki):
        raise ValueError(f"the key in {key} does not belong to the certificate in {cert}")
    return grpc.ssl_server_certificate_configuration(
        [(key_pem, cert_pem)], root_certificates=ca.read_bytes() if ca is not None else None
    )


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS credentials of ``tls`` (mutual TLS when it names a client CA), reloaded on change.
    Raises InvalidArgumentError if the files are missing or do not belong together."""
    cert, key, ca = tls.files()
    if cert is None or key is None:
        raise InvalidArgumentError(
            "server TLS needs a certificate and a key: set server.tls.cert_file and key_file "
            "(or server.tls.directory holding tls.crt and tls.key)"
        )
    paths = (cert, key, ca)
    try:
        initial = _read(cert, key, ca)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"server TLS: {exc}") from None
    lock = threading.Lock()
    seen = [_states(paths)]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        state = _states(paths)
        with lock:
            if state == seen[0]:
                return None
            try:
                config = _read(cert, key, ca)
            except (OSError, ValueError) as exc:
                log.error("tls_reload_refused", cert_file=str(cert), error=str(exc))
                return None
            seen[0] = state
        log.info("tls_reloaded", cert_file=str(cert), client_ca_file=str(ca) if ca else None)
        return config

    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetch,  # type: ignore[arg-type]  # grpcio documents None as "keep the current one"
        require_client_authentication=ca is not None,
    )
