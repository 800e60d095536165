"""The steady load of the chaos run, each part a thread that survives the faults:

- :class:`Writer`: PutSignals batches (``wait_readable``) of images/dhash@1 over a fixed set
  of its own entities, with strictly increasing event times; it keeps the model of the
  expected state (the last acknowledged value per key, and the values of a batch whose
  outcome is unknown) and retries a failed batch as is until it is acknowledged.
- :class:`ContentLoad`: image content events to ``content.images`` (acks=all, idempotent
  producer); the acknowledged ones are the compute oracle's input.
- :class:`EventLog`: a subscriber (:class:`clients.subscriber.Subscriber` in a consumer
  group, its own dedupe off so every delivery is kept) recording every availability event
  in arrival order; :meth:`EventLog.stall` and :meth:`EventLog.slow` are its faults.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import structlog

from clients.lookup import GssClient, make_record
from contract.v1 import envelope_pb2, signals_pb2

log = structlog.get_logger(__name__)

WRITER_PREFIX = b"\xc4\xa0\x5e"  # entity ids of the writer's own images (16 bytes)
WRITER_SIGNAL = "dhash@1"


def writer_entity(n: int) -> str:
    return (WRITER_PREFIX + n.to_bytes(16 - len(WRITER_PREFIX), "big")).hex()


@dataclass
class WriterModel:
    """What the store must hold for the writer's keys."""

    acked: dict[str, int] = field(default_factory=dict)  # entity -> hash of its last acked write
    # entity -> hashes written after the last acknowledgement, outcome unknown (a failed call).
    pending: dict[str, list[int]] = field(default_factory=dict)
    acked_records: int = 0
    acked_batches: int = 0
    failed_calls: Counter[str] = field(default_factory=Counter)


class Writer(threading.Thread):
    def __init__(
        self, address: str, *, seed: int, keys: int = 400, batch: int = 20, rate: float = 100.0
    ) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.address = address
        self.rng = random.Random(seed)
        self.keys = keys
        self.batch = batch
        self.pause = batch / rate
        self.model = WriterModel()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self._last_us = 0

    def _event_time(self) -> datetime:
        now = int(datetime.now(UTC).timestamp() * 1_000_000)
        self._last_us = max(now, self._last_us + 1)
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self._last_us)

    def _next_batch(self) -> list[tuple[str, int, envelope_pb2.SignalRecord]]:
        out = []
        for n in self.rng.sample(range(self.keys), self.batch):
            entity = writer_entity(n)
            value = self.rng.getrandbits(63)
            record = make_record(
                "images",
                entity,
                WRITER_SIGNAL,
                signals_pb2.DHash(hash=value),
                event_time=self._event_time(),
                producer="chaos-writer",
            )
            out.append((entity, value, record))
        return out

    def run(self) -> None:
        client = GssClient(self.address, timeout=15)
        try:
            while not self.stopping.is_set():
                batch = self._next_batch()
                with self.lock:
                    for entity, value, _ in batch:
                        self.model.pending.setdefault(entity, []).append(value)
                # The same batch again until it is acknowledged (or the run ends).
                while True:
                    try:
                        client.put([r for _, _, r in batch], wait_readable=True)
                    except grpc.RpcError as exc:
                        with self.lock:
                            self.model.failed_calls[exc.code().name] += 1
                        if self.stopping.wait(0.3):
                            return
                        continue
                    with self.lock:
                        for entity, value, _ in batch:
                            self.model.acked[entity] = value
                            self.model.pending.pop(entity, None)
                        self.model.acked_records += len(batch)
                        self.model.acked_batches += 1
                    break
                self.stopping.wait(self.pause)
        finally:
            client.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


class ContentLoad(threading.Thread):
    """Image events (small synthetic shapes) at ``rate`` a second."""

    def __init__(self, bootstrap: str, *, seed: int, rate: float = 2.0) -> None:
        from confluent_kafka import Producer

        from gss.local.generator import ContentGenerator

        super().__init__(name="chaos-content", daemon=True)
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
            }
        )
        self.generator = ContentGenerator(seed=seed, duplicate_fraction=0.0, images="shapes")
        self.pause = 1.0 / rate
        self.sent: dict[str, bytes] = {}  # entity (hex) -> the event's bytes
        self.acked: dict[str, bytes] = {}
        self.errors: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def _delivered(self, err: object, msg: object) -> None:
        key = msg.key()  # type: ignore[attr-defined]
        with self.lock:
            if err is not None:
                self.errors[str(err)[:80]] += 1
            else:
                entity = bytes(key).hex()
                self.acked[entity] = self.sent[entity]

    def run(self) -> None:
        while not self.stopping.is_set():
            topic, key, event = self.generator.next_image(datetime.now(UTC))
            payload = event.SerializeToString()
            with self.lock:
                self.sent[bytes(key).hex()] = payload
            while not self.stopping.is_set():
                try:
                    self.producer.produce(
                        topic, key=key, value=payload, on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.2)
            self.producer.poll(0)
            self.stopping.wait(self.pause)

    def stop(self) -> int:
        """Stop producing; flush (bounded); the number of events still unacknowledged."""
        self.stopping.set()
        self.join(30)
        return int(self.producer.flush(120))


@dataclass(frozen=True, slots=True)
class Delivered:
    event_id: str
    entity_id: str
    signal: str
    event_time_us: int
    partition: int
    offset: int
    value_hash: bytes
    deleted: bool


class EventLog(threading.Thread):
    """Every availability event of ``images`` as delivered, in order (see the module)."""

    def __init__(self, bootstrap: str, *, max_poll_interval_ms: int = 10_000) -> None:
        super().__init__(name="chaos-subscriber", daemon=True)
        self.bootstrap = bootstrap
        self.max_poll_interval_ms = max_poll_interval_ms
        self.delivered: list[Delivered] = []
        self.arrived: list[float] = []  # monotonic arrival time of each delivery
        self.errors: Counter[str] = Counter()
        self.reopened = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._stall_until = 0.0
        self._slow_until = 0.0

    def stall(self, seconds: float) -> None:
        """Stop polling for ``seconds``: past max.poll.interval the member leaves its group
        and, back, gets the uncommitted events again."""
        self._stall_until = time.monotonic() + seconds

    def slow(self, seconds: float) -> None:
        """Take a few events every half second for ``seconds``: a lagging subscriber."""
        self._slow_until = time.monotonic() + seconds

    def _open(self) -> object:
        from clients.subscriber import Subscriber

        return Subscriber(
            self.bootstrap,
            "images",
            "chaos-subscriber",
            dedupe_window=0,  # keep every delivery: the oracle counts and dedupes them
            config={"max.poll.interval.ms": str(self.max_poll_interval_ms)},
        )

    def run(self) -> None:
        sub = None
        while not self.stopping.is_set():
            now = time.monotonic()
            if now < self._stall_until:
                time.sleep(0.2)
                continue
            try:
                if sub is None:
                    sub = self._open()
                slow = now < self._slow_until
                events = sub.poll(0.5, max_events=5 if slow else 500)  # type: ignore[attr-defined]
            except Exception as exc:  # a fatal consumer error: a new member takes over
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                    self.reopened += 1
                if sub is not None:
                    with contextlib.suppress(Exception):
                        sub.close()  # type: ignore[attr-defined]
                sub = None
                time.sleep(1.0)
                continue
            got = [
                Delivered(
                    e.event.event_id,
                    e.event.entity_id,
                    f"{e.event.signal.name}@{e.event.signal.version}",
                    e.event.event_time.ToMicroseconds(),
                    e.event.position.partition,
                    e.event.position.offset,
                    bytes(e.event.value_hash),
                    e.event.deleted,
                )
                for e in events
            ]
            with self.lock:
                self.delivered.extend(got)
                self.arrived.extend([time.monotonic()] * len(got))
            if slow:
                time.sleep(0.5)
        if sub is not None:
            with contextlib.suppress(Exception):
                sub.close()  # type: ignore[attr-defined]

    def snapshot(self) -> list[Delivered]:
        with self.lock:
            return list(self.delivered)

    def first_seen_after(self, moment: float) -> int:
        """Event ids whose first delivery came after ``moment`` (monotonic)."""
        seen: set[str] = set()
        late = 0
        with self.lock:
            for d, at in zip(self.delivered, self.arrived, strict=True):
                if d.event_id not in seen:
                    seen.add(d.event_id)
                    late += at > moment
        return late

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
