"""Access control against real TLS servers: the auth matrix, audit, producer, TLS rotation.

Certificates and tokens are made in the test (tests/security_support.py). Every RPC is tried
with every refused credential: each must fail with the expected code and none may succeed;
the allowed credentials must succeed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import CapturingLogger

from clients.lookup import GssClient, channel_credentials, make_record
from contract.settings import TlsSettings
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2
from contract.v1.signal_service_pb2_grpc import SignalServiceStub
from gss import service
from gss.auth import interceptor
from gss.auth.policy import token_digest
from gss.cli import main as gss_cli
from gss.server import GssServer, start_server
from tests.conftest import server_settings
from tests.helpers import image_id
from tests.security_support import AUDIENCE, ISSUER, Authority, Signer

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
STATIC_TOKEN = "static-loader-token-0123456789"

POLICY = f"""
grants:
  - scopes: [images.read]
    galaxies: [images]
    permissions: [read]
  - scopes: [images.write]
    galaxies: [images]
    permissions: [read, write]
  - scopes: [images.admin]
    galaxies: [images]
    permissions: [admin]
  - scopes: [pins.read]
    galaxies: [pins]
    permissions: [read]
  - identities: ["cert:reader.test"]
    galaxies: [images]
    permissions: [read]
tokens:
  - name: loader
    sha256: {token_digest(STATIC_TOKEN)}
    scopes: [images.write]
"""


def _record(
    n: int, *, tombstone: bool = False, override: bool = False
) -> envelope_pb2.SignalRecord:
    record = make_record(
        "images", image_id(n), "dhash@1", signals_pb2.DHash(hash=n), producer="claimed"
    )
    if tombstone:
        record.ClearField("value")
        record.tombstone = True
    record.override_ordering = override
    return record


def _call(stub: SignalServiceStub, rpc: str, metadata: tuple[tuple[str, str], ...]) -> Any:
    """Make one call; return the response (or the list of streamed responses)."""
    pb = signal_service_pb2
    kw: dict[str, Any] = {"metadata": metadata, "timeout": 5}
    if rpc == "get":
        return stub.GetSignals(
            pb.GetSignalsRequest(
                galaxy="images",
                entity_ids=[image_id(1)],
                signals=[envelope_pb2.SignalRef(name="dhash")],
            ),
            **kw,
        )
    if rpc == "describe":
        return stub.DescribeGalaxy(pb.DescribeGalaxyRequest(galaxy="images"), **kw)
    if rpc == "list":
        return stub.ListGalaxies(pb.ListGalaxiesRequest(), **kw)
    if rpc == "watch":
        return list(stub.WatchSignals(pb.WatchSignalsRequest(galaxy="images"), **kw))
    records = {
        "put": [_record(1)],
        "delete": [_record(2, tombstone=True)],
        "override": [_record(3, override=True)],
    }[rpc]
    return stub.PutSignals(pb.PutSignalsRequest(records=records), **kw)


RPCS = ("get", "describe", "watch", "put", "delete", "override", "list")


def _code(
    stub: SignalServiceStub, rpc: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return OK, "", _call(stub, rpc, metadata)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    server_ca = Authority.create(root / "server", "server-ca")
    client_ca = Authority.create(root / "client", "client-ca")
    other_ca = Authority.create(root / "other", "other-ca")
    cert, key = server_ca.issue("gss.test", server=True)
    signer, forger = Signer.create("k1"), Signer.create("k1")
    return {
        "root": root,
        "server_ca": server_ca,
        "client_ca": client_ca,
        "other_ca": other_ca,
        "server_cert": cert,
        "server_key": key,
        "signer": signer,
        "forger": forger,
        "jwks": signer.write_jwks(root / "jwks.json"),
        "policy": _write(root / "policy.yaml", POLICY),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _start(tmp: Path, pki: dict[str, Any], *, mutual: bool) -> GssServer:
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    if mutual:
        tls["ca_file"] = str(pki["client_ca"].ca_file)
    auth = {
        "policy_file": str(pki["policy"]),
        "jwt": {"keys_file": str(pki["jwks"]), "issuer": ISSUER, "audience": AUDIENCE},
    }
    settings = server_settings(tmp)
    settings.server.health_port = 0
    settings.server.tls = TlsSettings.model_validate(tls)
    settings.server.auth = settings.server.auth.model_validate(auth)
    return start_server(settings, registry_poll_seconds=None)


@pytest.fixture(scope="module")
def token_server(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any]
) -> Iterator[GssServer]:
    server = _start(tmp_path_factory.mktemp("token-server"), pki, mutual=False)
    try:
        yield server
    finally:
        server.stop(grace=0.5)


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any]
) -> Iterator[GssServer]:
    server = _start(tmp_path_factory.mktemp("mtls-server"), pki, mutual=True)
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def _stub(server: GssServer, tls: TlsSettings) -> tuple[grpc.Channel, SignalServiceStub]:
    channel = grpc.secure_channel(
        f"127.0.0.1:{server.port}",
        channel_credentials(tls),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    return channel, SignalServiceStub(channel)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_token_matrix_refuses_every_bad_credential_on_every_rpc(
    token_server: GssServer, pki: dict[str, Any]
) -> None:
    """Missing, expired, wrong-audience, wrong-issuer, forged and unknown tokens: every RPC is
    UNAUTHENTICATED, 0 succeed, and no refusal repeats the token it was given."""
    signer, forger = pki["signer"], pki["forger"]
    refused = {
        "missing": (),
        "expired": _bearer(signer.token("svc", ["images.admin"], expires_in=-120)),
        "wrong_audience": _bearer(signer.token("svc", ["images.admin"], audience="other")),
        "wrong_issuer": _bearer(signer.token("svc", ["images.admin"], issuer="https://evil")),
        "wrong_signature": _bearer(forger.token("svc", ["images.admin"])),
        "not_a_jwt": _bearer("not-a-token"),
        "unknown_static": _bearer("static-loader-token-0123456780"),
        "not_bearer": (("authorization", "Basic dXNlcjpwYXNz"),),
    }
    channel, stub = _stub(token_server, TlsSettings(ca_file=pki["server_ca"].ca_file))
    with channel:
        results = {
            (case, rpc): _code(stub, rpc, metadata)
            for case, metadata in refused.items()
            for rpc in RPCS
        }
    assert len(results) == len(refused) * len(RPCS)
    wrong = {
        key: (code, details)
        for key, (code, details, _) in results.items()
        if code != UNAUTHENTICATED
    }
    assert wrong == {}
    for (case, _), (_, details, _) in results.items():
        for _, value in refused[case]:
            assert value.removeprefix("Bearer ") not in details


def test_token_matrix_enforces_per_galaxy_permissions(
    token_server: GssServer, pki: dict[str, Any]
) -> None:
    """A valid token without the galaxy's scope, a read-only token writing, a write token
    overriding: PERMISSION_DENIED naming the permission; allowed calls succeed."""
    signer = pki["signer"]
    tokens = {
        "pins_reader": signer.token("pins-svc", ["pins.read"]),
        "images_reader": signer.token("reader-svc", ["images.read"]),
        "images_writer": signer.token("writer-svc", ["images.write"]),
        "images_admin": signer.token("admin-svc", ["images.admin"]),
        "static_loader": STATIC_TOKEN,
    }
    # What each token may do: anything not listed must be PERMISSION_DENIED. WatchSignals gets
    # past access control and then finds no broker (UNAVAILABLE): access was granted.
    allowed = {
        "pins_reader": {"list"},
        "images_reader": {"get", "describe", "watch", "list"},
        "images_writer": {"get", "describe", "watch", "list", "put", "delete"},
        "images_admin": set(RPCS),
        "static_loader": {"get", "describe", "watch", "list", "put", "delete"},
    }
    channel, stub = _stub(token_server, TlsSettings(ca_file=pki["server_ca"].ca_file))
    refusals, successes = [], []
    with channel:
        for name, token in tokens.items():
            for rpc in RPCS:
                code, details, response = _code(stub, rpc, _bearer(token))
                if rpc in allowed[name]:
                    expected = UNAVAILABLE if rpc == "watch" else OK
                    assert code == expected, (name, rpc, code, details)
                    if rpc == "watch":
                        assert "broker" in details
                    if rpc == "list":
                        listed = {g.name for g in response.galaxies}
                        assert ("images" in listed) == (name != "pins_reader"), (name, listed)
                    successes.append((name, rpc))
                else:
                    assert code == DENIED, (name, rpc, code, details)
                    permission = (
                        "admin"
                        if rpc == "override"
                        else ("write" if rpc in ("put", "delete") else "read")
                    )
                    assert f"lacks the {permission} permission on galaxy 'images'" in details
                    assert token not in details
                    refusals.append((name, rpc))
    assert len(refusals) == 6 + 3 + 1 + 1
    assert len(successes) == len(tokens) * len(RPCS) - len(refusals)


def test_mutual_tls_refuses_missing_foreign_and_expired_certificates(
    mtls_server: GssServer, pki: dict[str, Any]
) -> None:
    """Without a certificate, with one from another CA, or an expired one: no call gets
    through (the handshake fails: UNAVAILABLE)."""
    server_ca = pki["server_ca"].ca_file
    cases = {
        "no_certificate": TlsSettings(ca_file=server_ca),
        "other_ca": pki["other_ca"].client_tls(server_ca, "reader.test"),
        "expired": pki["client_ca"].client_tls(server_ca, "old.test", expired=True),
    }
    for case, tls in cases.items():
        channel, stub = _stub(mtls_server, tls)
        with channel:
            codes = {rpc: _code(stub, rpc, ())[0] for rpc in RPCS}
        assert set(codes.values()) == {UNAVAILABLE}, (case, codes)


def test_client_certificate_identifies_the_caller(
    mtls_server: GssServer, pki: dict[str, Any]
) -> None:
    """A certificate of the client CA names the caller (subject and SAN): its grants apply."""
    server_ca = pki["server_ca"].ca_file
    reader = pki["client_ca"].client_tls(server_ca, "reader.test")
    stranger = pki["client_ca"].client_tls(server_ca, "stranger.test", dns="stranger.example")
    channel, stub = _stub(mtls_server, reader)
    with channel:
        assert _code(stub, "get", ())[0] == OK
        code, details, _ = _code(stub, "put", ())
        assert (code, "cert:reader.test lacks the write permission" in details) == (DENIED, True)
    channel, stub = _stub(mtls_server, stranger)
    with channel:
        codes = {rpc: _code(stub, rpc, ())[0] for rpc in RPCS if rpc != "list"}
        assert set(codes.values()) == {DENIED}


def test_writes_are_audited_and_record_the_caller_as_producer(
    token_server: GssServer, pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The envelope's producer is the authenticated caller, not what the record claims, and
    every write (allowed or refused) leaves a log line naming the caller."""
    # An earlier test's logging set-up may have cached processors and a level filter in the
    # loggers: capture at the logger objects, unfiltered.
    capture = CapturingLogger()
    for module in (service, interceptor):
        monkeypatch.setattr(
            module,
            "log",
            structlog.wrap_logger(capture, processors=[], wrapper_class=structlog.BoundLogger),
        )
    tls = TlsSettings(ca_file=pki["server_ca"].ca_file, server_name="localhost")
    writer = pki["signer"].token("writer-svc", ["images.write"])
    reader = pki["signer"].token("reader-svc", ["images.read"])
    target = f"127.0.0.1:{token_server.port}"
    with GssClient(target, tls=tls, token=writer) as client:
        assert client.put([_record(40)]) == [signal_service_pb2.WRITE_OUTCOME_APPLIED]
        (row,) = client.get("images", [image_id(40)], ["dhash@1"])
        with GssClient(target, tls=tls, token=reader) as read_only, pytest.raises(grpc.RpcError):
            read_only.put([_record(41)])
    envelope = row.signals["dhash@1"].envelope
    assert envelope is not None
    assert envelope.producer == "jwt:writer-svc"
    logs = [call.kwargs for call in capture.calls]
    audited = [e for e in logs if e["event"] == "write_audited"]
    assert [(e["caller"], e["outcome"], e["galaxies"]) for e in audited] == [
        ("jwt:writer-svc", "done", ["images"])
    ]
    denied = [e for e in logs if e["event"] == "access_denied"]
    assert [(e["caller"], e["permission"], e["galaxy"]) for e in denied] == [
        ("jwt:reader-svc", "write", "images")
    ]


def test_rotated_certificate_files_are_served_without_a_restart(
    tmp_path: Path, pki: dict[str, Any]
) -> None:
    """Replacing the certificate and key in the TLS directory (a cert-manager rotation) takes
    effect for new connections; the old CA no longer verifies the server."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    first = Authority.create(tmp_path / "ca1", "ca1")
    second = Authority.create(tmp_path / "ca2", "ca2")

    def install(authority: Authority) -> None:
        cert, key = authority.issue("gss.test", server=True)
        (tls_dir / "tls.key").write_bytes(key.read_bytes())
        (tls_dir / "tls.crt").write_bytes(cert.read_bytes())

    install(first)
    settings = server_settings(tmp_path)
    settings.server.tls = TlsSettings(directory=tls_dir)
    server = start_server(settings, registry_poll_seconds=None)
    target = f"127.0.0.1:{server.port}"
    ask: Callable[[Authority], list[Any]] = lambda ca: GssClient(  # noqa: E731
        target, tls=TlsSettings(ca_file=ca.ca_file, server_name="localhost"), timeout=2
    ).galaxies()
    try:
        assert ask(first)
        install(second)
        assert ask(second)
        with pytest.raises(grpc.RpcError) as err:
            ask(first)
        assert err.value.code() == UNAVAILABLE
    finally:
        server.stop(grace=0.5)


def test_far_future_event_time_is_refused_naming_the_record(gss_server: GssServer) -> None:
    """A write dated beyond server.max_future_event_seconds is INVALID_ARGUMENT, nothing stored."""
    future = datetime(2100, 1, 1, tzinfo=UTC)
    with GssClient(gss_server.address) as client:
        fine = make_record("images", image_id(7), "dhash@1", signals_pb2.DHash(hash=1))
        frozen = make_record(
            "images", image_id(8), "dhash@1", signals_pb2.DHash(hash=2), event_time=future
        )
        with pytest.raises(grpc.RpcError) as err:
            client.put([fine, frozen])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "records[1]" in err.value.details()
        assert "2100-01-01" in err.value.details()
        rows = client.get("images", [image_id(7), image_id(8)], ["dhash@1"])
        assert [row.signals["dhash@1"].status for row in rows] == ["not_found", "not_found"]


def test_cli_speaks_tls_with_a_token_from_the_client_settings(
    token_server: GssServer, pki: dict[str, Any], tmp_path: Path
) -> None:
    """`gss galaxies` / `gss get` over TLS with client.tls and client.token_file from the
    environment; without the token the server refuses them."""
    token_file = tmp_path / "token"
    token_file.write_text(pki["signer"].token("cli-user", ["images.read"]) + "\n")
    env = {
        "GSS_CLIENT__TARGET": f"127.0.0.1:{token_server.port}",
        "GSS_CLIENT__TLS__CA_FILE": str(pki["server_ca"].ca_file),
        "GSS_CLIENT__TLS__SERVER_NAME": "localhost",
        "GSS_CLIENT__TOKEN_FILE": str(token_file),
    }
    runner = CliRunner()
    listed = runner.invoke(gss_cli, ["galaxies", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [g["name"] for g in json.loads(listed.output)] == ["images"]
    got = runner.invoke(gss_cli, ["get", "images", image_id(1), "-s", "dhash"], env=env)
    assert got.exit_code == 0, got.output
    refused = runner.invoke(
        gss_cli,
        ["get", "images", image_id(1), "-s", "dhash"],
        env={**env, "GSS_CLIENT__TOKEN_FILE": None},
    )
    assert refused.exit_code != 0
    assert "UNAUTHENTICATED" in refused.output


def test_probes_get_a_plaintext_health_port_and_nothing_else(token_server: GssServer) -> None:
    """Kubernetes' gRPC probes cannot speak TLS: server.health_port serves grpc.health.v1 in
    plaintext without credentials, and no other service."""
    assert token_server.health_port
    with grpc.insecure_channel(f"127.0.0.1:{token_server.health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gss.v1.SignalService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        code, _, _ = _code(SignalServiceStub(channel), "list", ())
        assert code == grpc.StatusCode.UNIMPLEMENTED
