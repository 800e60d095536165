"""Lookup clients for GSS: :class:`GssClient` (blocking) and :class:`AsyncGssClient` (asyncio).

    with GssClient("127.0.0.1:50051") as gss:
        rows = gss.get("images", ["9f0c...", ...], ["dominant_colors", "dhash@1"])
        rows[0].signals["dominant_colors"].value   # a decoded gss.v1.DominantColors

- Deadlines: every call has one (``timeout`` seconds, default 5).
- Retries: UNAVAILABLE only, with exponential backoff, by gRPC's own retry policy (writes are
  idempotent, so retrying PutSignals is safe).
- Large lookups are split into calls of at most ``max_cells_per_call`` cells (sent
  concurrently by the asyncio client); large writes into batches of ``max_records_per_call``
  (each batch is all-or-nothing on its own).
- Security (docs/security.md): ``tls`` (a ``TlsSettings``: the CA to trust, and a client
  certificate for mutual TLS) and ``token`` (a bearer token, sent only over TLS);
  ``GssClient.from_settings(settings.client)`` takes both from the settings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from contract.settings import ClientSettings, TlsSettings
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2  # noqa: F401 - registers value types
from contract.v1.signal_service_pb2_grpc import SignalServiceStub

if TYPE_CHECKING:
    from contract.v1.signal_service_pb2_grpc import SignalServiceAsyncStub

EntityId = int | str | bytes
_TYPE_PREFIX = "type.googleapis.com/"
DEFAULT_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "gss.v1.SignalService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
CHANNEL_OPTIONS = [
    ("grpc.service_config", json.dumps(DEFAULT_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]

Metadata = tuple[tuple[str, str], ...]


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """TLS credentials of a client: trust ``ca_file`` (else the system's roots) and present
    ``cert_file``/``key_file`` when both are set (mutual TLS)."""
    cert, key, ca = tls.files()
    if (cert is None) != (key is None):
        raise ValueError("client TLS needs both cert_file and key_file for mutual TLS, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def _options(tls: TlsSettings | None, retry: bool = True) -> list[tuple[str, object]]:
    options = list(CHANNEL_OPTIONS)
    if not retry:
        # The caller fails over to another replica itself, at once.
        options = [o for o in options if o[0] != "grpc.service_config"]
        options = [
            *(o for o in options if o[0] != "grpc.enable_retries"),
            ("grpc.enable_retries", 0),
        ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def open_channel(
    target: str, tls: TlsSettings | None = None, *, retry: bool = True
) -> grpc.Channel:
    """A blocking channel to ``target``: TLS when ``tls`` is enabled, plaintext otherwise.
    ``retry=False`` turns gRPC's own retries of UNAVAILABLE off (for callers that fail over)."""
    if tls is not None and tls.enabled:
        return grpc.secure_channel(target, channel_credentials(tls), options=_options(tls, retry))
    return grpc.insecure_channel(target, options=_options(None, retry))


def open_aio_channel(
    target: str, tls: TlsSettings | None = None, *, retry: bool = True
) -> grpc.aio.Channel:
    """The asyncio form of :func:`open_channel`."""
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            target, channel_credentials(tls), options=_options(tls, retry)
        )
    return grpc.aio.insecure_channel(target, options=_options(None, retry))


def auth_metadata(token: str | None, tls: TlsSettings | None) -> Metadata:
    """The call metadata carrying ``token``; refuses to send a token in clear."""
    if not token:
        return ()
    if tls is None or not tls.enabled:
        raise ValueError("a bearer token is sent only over TLS: configure tls for the client")
    return (("authorization", f"Bearer {token}"),)


def settings_token(settings: ClientSettings) -> str | None:
    """The client's token: ``token``, else the contents of ``token_file``."""
    if settings.token:
        return settings.token
    if settings.token_file is not None:
        return settings.token_file.read_text().strip() or None
    return None


STATUS_NAMES = {
    signal_service_pb2.CELL_STATUS_FOUND: "found",
    signal_service_pb2.CELL_STATUS_NOT_FOUND: "not_found",
    signal_service_pb2.CELL_STATUS_EXPIRED: "expired",
}


@dataclass(frozen=True, slots=True)
class SignalValue:
    """One looked-up cell: ``status`` is "found", "not_found" or "expired"."""

    status: str
    version: int
    value: Message | None
    envelope: envelope_pb2.Envelope | None

    @property
    def found(self) -> bool:
        return self.status == "found"


@dataclass(frozen=True, slots=True)
class EntityResult:
    """The signals of one requested entity, keyed by the signal strings of the request."""

    entity_id: str
    signals: dict[str, SignalValue] = field(default_factory=dict)


def entity_text(entity_id: EntityId) -> str:
    """The API's text form: decimal for ints, hex for bytes, strings as given."""
    if isinstance(entity_id, bytes):
        return entity_id.hex()
    return str(entity_id)


def parse_signal_ref(ref: str) -> envelope_pb2.SignalRef:
    """``"name"`` (the server resolves it to the name's pinned default version) or ``"name@3"``."""
    name, _, version = ref.partition("@")
    if not name or (version and not version.isdigit()):
        raise ValueError(f"signal {ref!r} is not 'name' or 'name@version'")
    return envelope_pb2.SignalRef(name=name, version=int(version or 0))


def decode_value(packed: any_pb2.Any) -> Message:
    """The typed message inside an Any; the Any itself if its type is not known here."""
    try:
        cls = symbol_database.Default().GetSymbol(packed.type_url.removeprefix(_TYPE_PREFIX))
    except KeyError:
        return packed
    value: Message = cls()
    value.ParseFromString(packed.value)
    return value


def decode_cell(cell: signal_service_pb2.SignalCell) -> SignalValue:
    return SignalValue(
        status=STATUS_NAMES.get(cell.status, "unspecified"),
        version=cell.version,
        value=decode_value(cell.value) if cell.HasField("value") else None,
        envelope=cell.envelope if cell.HasField("envelope") else None,
    )


def make_record(
    galaxy: str,
    entity_id: EntityId,
    signal: str,
    value: Message,
    *,
    event_time: datetime | None = None,
    producer: str = "python-client",
    model_name: str = "",
    model_version: str = "",
) -> envelope_pb2.SignalRecord:
    """A SignalRecord for PutSignals; ``signal`` must name its version (``"dhash@1"``)."""
    ref = parse_signal_ref(signal)
    if ref.version == 0:
        raise ValueError(f"writes must name a version: {signal!r} -> e.g. {signal}@1")
    record = envelope_pb2.SignalRecord(galaxy=galaxy, entity_id=entity_text(entity_id), signal=ref)
    record.value.Pack(value)
    record.envelope.event_time.FromDatetime(event_time or datetime.now(UTC))
    record.envelope.producer = producer
    record.envelope.model_name = model_name
    record.envelope.model_version = model_version
    return record


def make_tombstone(
    galaxy: str,
    entity_id: EntityId,
    signal: str,
    *,
    event_time: datetime | None = None,
    producer: str = "python-client",
) -> envelope_pb2.SignalRecord:
    """A delete for PutSignals (needs the galaxy's write permission): the value of
    ``signal`` (``"dhash@1"``) stops being readable if the tombstone is newer than it, by
    ``event_time`` (default now), like any write."""
    ref = parse_signal_ref(signal)
    if ref.version == 0:
        raise ValueError(f"deletes must name a version: {signal!r} -> e.g. {signal}@1")
    record = envelope_pb2.SignalRecord(
        galaxy=galaxy, entity_id=entity_text(entity_id), signal=ref, tombstone=True
    )
    record.envelope.event_time.FromDatetime(event_time or datetime.now(UTC))
    record.envelope.producer = producer
    return record


def _chunks(ids: list[str], signals: Sequence[str], max_cells: int) -> list[list[str]]:
    per_call = max(1, max_cells // max(1, len(signals)))
    return [ids[i : i + per_call] for i in range(0, len(ids), per_call)] or [[]]


def _request(
    galaxy: str,
    ids: list[str],
    refs: list[envelope_pb2.SignalRef],
    min_positions: Sequence[envelope_pb2.ChangelogPosition] = (),
) -> signal_service_pb2.GetSignalsRequest:
    return signal_service_pb2.GetSignalsRequest(
        galaxy=galaxy, entity_ids=ids, signals=refs, min_positions=min_positions
    )


def _rows(
    ids: list[str], signals: Sequence[str], response: signal_service_pb2.GetSignalsResponse
) -> list[EntityResult]:
    return [
        EntityResult(
            entity_id,
            {name: decode_cell(cell) for name, cell in zip(signals, row.cells, strict=True)},
        )
        for entity_id, row in zip(ids, response.entities, strict=True)
    ]


def _put_requests(
    records: Iterable[envelope_pb2.SignalRecord], per_call: int, wait_readable: bool
) -> list[signal_service_pb2.PutSignalsRequest]:
    batch = list(records)
    return [
        signal_service_pb2.PutSignalsRequest(
            records=batch[i : i + per_call], wait_readable=wait_readable
        )
        for i in range(0, len(batch), per_call)
    ]


class GssClient:
    """A blocking client. Thread-safe; reuse one per process."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        max_cells_per_call: int = 10_000,
        max_records_per_call: int = 5_000,
        channel: grpc.Channel | None = None,
        tls: TlsSettings | None = None,
        token: str | None = None,
    ) -> None:
        self._metadata = auth_metadata(token, tls)
        self._channel = channel or open_channel(target, tls)
        self._stub = SignalServiceStub(self._channel)
        self.timeout = timeout
        self.max_cells_per_call = max_cells_per_call
        self.max_records_per_call = max_records_per_call

    def get(
        self,
        galaxy: str,
        entity_ids: Iterable[EntityId],
        signals: Sequence[str],
        *,
        timeout: float | None = None,
        min_positions: Sequence[envelope_pb2.ChangelogPosition] = (),
    ) -> list[EntityResult]:
        """Values of ``signals`` for ``entity_ids``, one EntityResult per id in request order.

        ``min_positions`` (an event's or a PutSignals result's changelog positions): answer only
        from a server that has applied them (UNAVAILABLE from one that has not, after a brief
        wait: docs/cluster.md, "Consistency")."""
        ids = [entity_text(e) for e in entity_ids]
        refs = [parse_signal_ref(s) for s in signals]
        rows: list[EntityResult] = []
        for chunk in _chunks(ids, signals, self.max_cells_per_call):
            response = self._stub.GetSignals(
                _request(galaxy, chunk, refs, min_positions),
                timeout=timeout or self.timeout,
                metadata=self._metadata,
            )
            rows.extend(_rows(chunk, signals, response))
        return rows

    def put(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> list[int]:
        """Write records; returns a ``WriteOutcome`` per record, in order."""
        return list(
            self.put_response(records, wait_readable=wait_readable, timeout=timeout).outcomes
        )

    def put_response(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> signal_service_pb2.PutSignalsResponse:
        """Write records; the outcomes and (with a broker) the changelog position of each
        record, in order: positions to read your writes with (``get(min_positions=...)``)."""
        merged = signal_service_pb2.PutSignalsResponse()
        for request in _put_requests(records, self.max_records_per_call, wait_readable):
            response = self._stub.PutSignals(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
            merged.outcomes.extend(response.outcomes)
            merged.positions.extend(response.positions)
        return merged

    def galaxies(self) -> list[signal_service_pb2.Galaxy]:
        return list(
            self._stub.ListGalaxies(
                signal_service_pb2.ListGalaxiesRequest(),
                timeout=self.timeout,
                metadata=self._metadata,
            ).galaxies
        )

    def describe(self, galaxy: str) -> signal_service_pb2.Galaxy:
        return self._stub.DescribeGalaxy(
            signal_service_pb2.DescribeGalaxyRequest(galaxy=galaxy),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    def cluster_map(self, *, timeout: float | None = None) -> signal_service_pb2.ClusterMap:
        """The cluster map as the server knows it (docs/cluster.md)."""
        return self._stub.DescribeCluster(
            signal_service_pb2.DescribeClusterRequest(),
            timeout=timeout or self.timeout,
            metadata=self._metadata,
        )

    def watch(
        self, request: signal_service_pb2.WatchSignalsRequest
    ) -> grpc._CallIterator[signal_service_pb2.WatchSignalsResponse]:
        """WatchSignals: a stream of availability events (no deadline; ``cancel()`` it)."""
        return self._stub.WatchSignals(request, metadata=self._metadata)

    @classmethod
    def from_settings(
        cls, settings: ClientSettings, target: str | None = None, *, timeout: float = 5.0
    ) -> GssClient:
        """A client for ``target`` (else ``settings.target``) with the TLS and token of
        ``settings`` (``Settings.client``)."""
        address = target or settings.target
        if not address:
            raise ValueError("no target: pass one or set client.target (GSS_CLIENT__TARGET)")
        return cls(address, tls=settings.tls, token=settings_token(settings), timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGssClient:
    """The asyncio client; lookups over many chunks run concurrently."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        max_cells_per_call: int = 10_000,
        max_records_per_call: int = 5_000,
        channel: grpc.aio.Channel | None = None,
        tls: TlsSettings | None = None,
        token: str | None = None,
    ) -> None:
        self._metadata = auth_metadata(token, tls)
        self._channel = channel or open_aio_channel(target, tls)
        self._stub = cast("SignalServiceAsyncStub", SignalServiceStub(self._channel))
        self.timeout = timeout
        self.max_cells_per_call = max_cells_per_call
        self.max_records_per_call = max_records_per_call

    async def get(
        self,
        galaxy: str,
        entity_ids: Iterable[EntityId],
        signals: Sequence[str],
        *,
        timeout: float | None = None,
        min_positions: Sequence[envelope_pb2.ChangelogPosition] = (),
    ) -> list[EntityResult]:
        """As :meth:`GssClient.get`."""
        ids = [entity_text(e) for e in entity_ids]
        refs = [parse_signal_ref(s) for s in signals]
        chunks = _chunks(ids, signals, self.max_cells_per_call)
        responses = await asyncio.gather(
            *(
                self._stub.GetSignals(
                    _request(galaxy, chunk, refs, min_positions),
                    timeout=timeout or self.timeout,
                    metadata=self._metadata,
                )
                for chunk in chunks
            )
        )
        return [
            row
            for chunk, response in zip(chunks, responses, strict=True)
            for row in _rows(chunk, signals, response)
        ]

    async def put(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> list[int]:
        response = await self.put_response(records, wait_readable=wait_readable, timeout=timeout)
        return list(response.outcomes)

    async def put_response(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> signal_service_pb2.PutSignalsResponse:
        """As :meth:`GssClient.put_response`."""
        merged = signal_service_pb2.PutSignalsResponse()
        for request in _put_requests(records, self.max_records_per_call, wait_readable):
            response = await self._stub.PutSignals(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
            merged.outcomes.extend(response.outcomes)
            merged.positions.extend(response.positions)
        return merged

    async def galaxies(self) -> list[signal_service_pb2.Galaxy]:
        response = await self._stub.ListGalaxies(
            signal_service_pb2.ListGalaxiesRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return list(response.galaxies)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
