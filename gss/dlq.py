"""A galaxy's dead letters, read back: list, filter and count them (`gss dlq`, docs/debugging.md).

Both writers of dead letters (the changelog ingester and the compute job) put one
``gss.v1.DeadLetter`` per record on ``gss.<galaxy>.dlq``; this reads them from a time on (the
broker's ``offsets_for_times``) or from the beginning, until the topic has been idle for a
moment, and never joins a consumer group or commits anything: reading is free of side effects.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from contract import deadletter
from contract.errors import InvalidArgumentError, UnavailableError
from contract.kafka import consumer_config
from contract.settings import KafkaSettings
from contract.topics import TopicKind, topic_name

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter and where it sits on the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    letter: deadletter.DeadLetter

    @property
    def position(self) -> str:
        """``partition:offset`` on the dead-letter topic (what `gss dlq show` takes)."""
        return f"{self.partition}:{self.offset}"

    @property
    def signal(self) -> str:
        """``name@version`` of the signal the input was for ("" when unknown)."""
        s = self.letter.signal
        return f"{s.name}@{s.version}" if s.name else ""

    @property
    def reason(self) -> str:
        return deadletter.reason_label(self.letter.reason)

    @property
    def input_position(self) -> str:
        """``topic/partition:offset`` of the input, when the writer knew it."""
        d = self.letter
        if not d.HasField("input_offset"):
            return d.input_topic
        return f"{d.input_topic}/{d.input_partition}:{d.input_offset}"


@dataclass(frozen=True)
class Selection:
    """Which dead letters a verb works on; empty fields select everything."""

    signals: frozenset[str] = frozenset()  # "name" or "name@version"
    reasons: frozenset[str] = frozenset()  # reason labels: "plugin_error", ...
    producer: str | None = None  # "gss-ingester", "flink:<job>", or a prefix ending in ":"
    until_ms: int | None = None

    def __post_init__(self) -> None:
        known = {deadletter.reason_label(r) for r in deadletter.Reason.values()}
        unknown = set(self.reasons) - known
        if unknown:
            raise InvalidArgumentError(
                f"unknown dead-letter reason(s) {sorted(unknown)}; the reasons are "
                + ", ".join(sorted(known - {"reason_unspecified"}))
            )

    def __call__(self, letter: Letter) -> bool:
        d = letter.letter
        if self.signals and not {letter.signal, d.signal.name} & self.signals:
            return False
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.producer is not None and not (
            d.producer == self.producer
            or (self.producer.endswith(":") and d.producer.startswith(self.producer))
        ):
            return False
        return self.until_ms is None or letter.timestamp_ms < self.until_ms


def read_letters(
    kafka: KafkaSettings,
    galaxy: str,
    *,
    since_ms: int | None = None,
    idle_seconds: float = 2.0,
    max_seconds: float = 120.0,
) -> Iterator[Letter]:
    """The galaxy's dead letters written from ``since_ms`` on (all, if None), in offset order
    per partition, until the topic has been idle ``idle_seconds`` (at most ``max_seconds``).
    A record that is not a DeadLetter is logged and skipped."""
    topic = topic_name(kafka, TopicKind.DLQ, galaxy)
    consumer = Consumer(
        {
            **consumer_config(kafka, "gss-dlq-reader", f"gss-dlq-reader-{uuid.uuid4()}"),
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise UnavailableError(
                f"cannot read dead-letter topic {topic}: {meta.error if meta else 'not found'}"
            )
        partitions = [
            TopicPartition(topic, p, since_ms if since_ms is not None else -2)
            for p in sorted(meta.partitions)
        ]
        if since_ms is not None:
            partitions = consumer.offsets_for_times(partitions, timeout=10)
        consumer.assign(partitions)
        deadline = time.monotonic() + max_seconds
        idle_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < idle_seconds:
            msgs = consumer.consume(500, 0.2)
            if msgs:
                idle_since = time.monotonic()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                value = msg.value()
                try:
                    letter = deadletter.parse(value or b"")
                except DecodeError:
                    log.warning(
                        "dead_letter_unreadable",
                        topic=topic,
                        partition=msg.partition(),
                        offset=msg.offset(),
                    )
                    continue
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None  # a consumed record has both
                assert offset is not None
                yield Letter(topic, partition, offset, msg.timestamp()[1], letter)
    finally:
        consumer.close()


def letter_dict(letter: Letter) -> dict[str, Any]:
    """A dead letter as JSON-ready fields (bytes as base64, as protobuf's JSON mapping does),
    with its place on the topic; ``reason`` as a label (``plugin_error``) and ``signal`` as
    ``name@version``."""
    return {
        **MessageToDict(letter.letter, preserving_proto_field_name=True),
        "dlq_topic": letter.topic,
        "dlq_position": letter.position,
        "reason": letter.reason,
        "signal": letter.signal,
        "input_position": letter.input_position,
    }


@dataclass
class Stats:
    """Counts of dead letters by signal and reason, and by input topic and partition."""

    total: int = 0
    by_signal_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_input: Counter[tuple[str, int]] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, letter: Letter) -> None:
        self.total += 1
        self.by_signal_reason[(letter.signal or "-", letter.reason)] += 1
        d = letter.letter
        self.by_input[
            (d.input_topic, d.input_partition if d.HasField("input_partition") else -1)
        ] += 1
        ts = letter.timestamp_ms
        self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
        self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)
