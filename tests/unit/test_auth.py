"""Access control without a server: the policy, the authenticator and its token cache."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from contract.errors import InvalidArgumentError
from contract.settings import AuthSettings, JwtSettings, TlsSettings
from contract.v1 import envelope_pb2, signal_service_pb2
from gss.auth import authenticator as authenticator_module
from gss.auth.authenticator import Authenticator, Unauthenticated
from gss.auth.identity import Permission
from gss.auth.interceptor import required
from gss.auth.policy import load_policy, token_digest
from gss.auth.tls import server_credentials
from tests.security_support import AUDIENCE, ISSUER, Signer

POLICY = f"""
grants:
  - identities: ["cert:ops.test"]
    galaxies: ["*"]
    permissions: [admin]
  - scopes: [pins.write]
    galaxies: [pins]
    permissions: [write]
  - identities: [anonymous]
    galaxies: [images]
    permissions: [read]
tokens:
  - name: loader
    sha256: {token_digest("s3cret-token")}
    scopes: [pins.write]
"""


def _auth(tmp_path: Path, policy: str = POLICY, **settings: object) -> tuple[Authenticator, Signer]:
    signer = Signer.create("k")
    (tmp_path / "policy.yaml").write_text(policy)
    auth = Authenticator(
        AuthSettings(
            policy_file=tmp_path / "policy.yaml",
            jwt=JwtSettings(
                keys_file=signer.write_jwks(tmp_path / "jwks.json"),
                issuer=ISSUER,
                audience=AUDIENCE,
            ),
            **settings,  # type: ignore[arg-type]
        )
    )
    return auth, signer


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_policy_grants_by_identity_and_scope_and_admin_implies_the_rest(tmp_path: Path) -> None:
    """Grants match identities or scopes, per galaxy or '*'; admin includes write and read;
    write does not include read."""
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    ops = policy.caller("cert:ops.test")
    assert all(ops.may(p, g) for p in Permission for g in ("images", "pins", "new"))
    writer = policy.caller("jwt:svc", scopes=["pins.write"])
    assert writer.may(Permission.WRITE, "pins")
    assert not writer.may(Permission.READ, "pins")
    assert not writer.may(Permission.ADMIN, "pins")
    assert not writer.may(Permission.WRITE, "images")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("grants: [{galaxies: [pins], permissions: [own]}]", "permissions"),
        ("tokens: [{name: a, sha256: plaintext-token}]", "sha256"),
        ("grant: []", "grant"),
    ],
)
def test_bad_policy_is_refused_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    """Unknown permissions, tokens not stored as hashes, unknown keys: refused at load."""
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(InvalidArgumentError, match=problem):
        load_policy(tmp_path / "p.yaml")


def test_static_token_and_jwt_identify_callers(tmp_path: Path) -> None:
    """A static token by its hash, a JWT by its subject and scopes; a bad one is refused
    without repeating it."""
    auth, signer = _auth(tmp_path)
    loader = auth.authenticate(_bearer("s3cret-token"), dict)
    assert (loader.identity, loader.may(Permission.WRITE, "pins")) == ("token:loader", True)
    svc = auth.authenticate(_bearer(signer.token("svc", ["pins.write"])), dict)
    assert (svc.identity, svc.scopes) == ("jwt:svc", frozenset({"pins.write"}))
    expired = signer.token("svc", [], expires_in=-300)
    with pytest.raises(Unauthenticated, match="expired") as err:
        auth.authenticate(_bearer(expired), dict)
    assert expired not in str(err.value)


def test_verified_tokens_are_cached_until_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token is verified once, then served from the cache; refusals are cached too."""
    auth, signer = _auth(tmp_path)
    calls = []
    real = jwt.decode

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(authenticator_module.jwt, "decode", counting)
    token, forged = signer.token("svc", []), Signer.create("k").token("svc", [])
    for _ in range(50):
        auth.authenticate(_bearer(token), dict)
        with pytest.raises(Unauthenticated):
            auth.authenticate(_bearer(forged), dict)
    assert len(calls) == 2


def test_anonymous_callers(tmp_path: Path) -> None:
    """With a policy, anonymous callers are refused unless allowed, then get the grants to
    'anonymous'; without a policy every caller may do everything."""
    auth, _ = _auth(tmp_path)
    with pytest.raises(Unauthenticated, match="no credentials"):
        auth.authenticate([], dict)
    (tmp_path / "open").mkdir()
    allowed, _ = _auth(tmp_path / "open", allow_anonymous=True)
    anonymous = allowed.authenticate([], dict)
    assert anonymous.may(Permission.READ, "images")
    assert not anonymous.may(Permission.READ, "pins")
    open_server = Authenticator(AuthSettings())
    assert open_server.authenticate([], dict).may(Permission.ADMIN, "pins")


def test_certificate_names_identify_the_caller(tmp_path: Path) -> None:
    """The verified certificate's SANs and common name are the caller's names."""
    auth, _ = _auth(tmp_path)
    context = {"x509_subject_alternative_name": [b"ops.test"], "x509_common_name": [b"Ops"]}
    caller = auth.authenticate([], lambda: context)
    assert caller.identity == "cert:ops.test"
    assert caller.names == {"cert:ops.test", "cert:Ops"}
    assert caller.may(Permission.ADMIN, "images")


def test_policy_and_keys_reload_on_change_and_bad_files_are_refused(tmp_path: Path) -> None:
    """Editing the policy takes effect; a broken edit is refused and the running policy kept;
    a PEM public key file works as the key set."""
    auth, signer = _auth(tmp_path)
    token = signer.token("svc", ["pins.write"])
    assert auth.authenticate(_bearer(token), dict).may(Permission.WRITE, "pins")
    (tmp_path / "policy.yaml").write_text("grants: []\n")
    auth._checked_at = 0.0
    assert not auth.authenticate(_bearer(token), dict).may(Permission.WRITE, "pins")
    (tmp_path / "policy.yaml").write_text("grants: [{oops: 1}]\n")
    auth._checked_at = 0.0
    auth.refresh()
    assert auth.policy.grants == []
    pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "policy.yaml").write_text(POLICY)
    by_pem = Authenticator(
        AuthSettings(
            policy_file=tmp_path / "policy.yaml",
            jwt=JwtSettings(keys_file=tmp_path / "key.pem", issuer=ISSUER, audience=AUDIENCE),
        )
    )
    assert by_pem.authenticate(_bearer(token), dict).identity == "jwt:svc"


def test_jwt_keys_need_issuer_and_audience(tmp_path: Path) -> None:
    """A key set without issuer and audience would accept tokens minted for anyone: refused."""
    with pytest.raises(InvalidArgumentError, match="issuer and audience"):
        Authenticator(AuthSettings(jwt=JwtSettings(keys_file=tmp_path / "k.json")))


def test_required_permissions_per_rpc() -> None:
    """Reads need read on the request's galaxy; PutSignals write per record's galaxy, admin
    for override records."""
    get = signal_service_pb2.GetSignalsRequest(galaxy="images")
    assert required("/gss.v1.SignalService/GetSignals", get) == [
        (Permission.READ, "images", "galaxy")
    ]
    put = signal_service_pb2.PutSignalsRequest(
        records=[
            envelope_pb2.SignalRecord(galaxy="pins"),
            envelope_pb2.SignalRecord(galaxy="pins", tombstone=True),
            envelope_pb2.SignalRecord(galaxy="images", override_ordering=True),
        ]
    )
    assert required("/gss.v1.SignalService/PutSignals", put) == [
        (Permission.WRITE, "pins", "records[0]"),
        (Permission.ADMIN, "images", "records[2]"),
    ]
    assert (
        required("/gss.v1.SignalService/ListGalaxies", signal_service_pb2.ListGalaxiesRequest())
        == []
    )


def test_tls_configured_without_files_fails_instead_of_serving_plaintext(tmp_path: Path) -> None:
    """A TLS directory without a certificate is an error at start, not a plaintext server."""
    tls = TlsSettings(directory=tmp_path)
    assert tls.enabled
    with pytest.raises(InvalidArgumentError, match="needs a certificate and a key"):
        server_credentials(tls)


def test_a_token_is_never_sent_in_clear() -> None:
    """The clients refuse to attach a bearer token to a plaintext channel (a client-side
    check: no server involved, so a unit test; it was marked integration before)."""
    from clients.lookup import GssClient

    with pytest.raises(ValueError, match="only over TLS"):
        GssClient("127.0.0.1:1", token="secret")
