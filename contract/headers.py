"""Kafka record header names and values GSS writes and reads.

Headers are an aid for routing and tooling; every fact a consumer needs is also in the record's
value (a subscriber may ignore headers). Names are lower-case; values are bytes.

| topic kind | headers |
|---|---|
| changelog | ``content-type`` (optional) |
| available | ``gss-event-id``, ``gss-signal`` (``name@version``), ``content-type`` |
| dlq | ``content-type`` (ingester only: PyFlink's Kafka sink writes no headers) |
| any topic ``gss replay`` writes | the archived record's own headers, then ``gss-replay-of`` |
"""

from __future__ import annotations

from confluent_kafka import Message

CONTENT_TYPE = "content-type"
# The availability event's id, the same as SignalAvailable.event_id: dedupe on it.
EVENT_ID = "gss-event-id"
# The signal an availability event announces, ``name@version``: filter without decoding.
SIGNAL = "gss-signal"
# Added by ``gss replay`` to every record it produces again: ``topic:partition:offset`` (ASCII)
# of the archived original, so a replayed record is never mistaken for production traffic.
REPLAY_OF = "gss-replay-of"

SIGNAL_RECORD_CONTENT_TYPE = b"application/x-protobuf; messageType=gss.v1.SignalRecord"
SIGNAL_AVAILABLE_CONTENT_TYPE = b"application/x-protobuf; messageType=gss.v1.SignalAvailable"


def header_items(msg: Message) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs (absent values become empty bytes)."""
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in items
    ]


def header_value(msg: Message, name: str) -> bytes | None:
    """The value of a record's first header called ``name``; None when it has none."""
    for key, value in header_items(msg):
        if key == name:
            return value
    return None
