"""pins/save_count_1h@1: how often the pin was saved in each one-hour event-time window."""

from datetime import timedelta

from compute import Count, GroupBy, Tumbling, WindowSpan, signal
from compute.examples.pins.sources import PINS
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.signals_pb2 import WindowedCount


@signal(
    galaxy="pins",
    name="save_count_1h",
    version=1,
    source=PINS,
    group_by=GroupBy(
        window=Tumbling(timedelta(hours=1)),
        aggregate=Count(where=lambda event: event.action == PinEngagementEvent.SAVE),
        allowed_lateness=timedelta(minutes=10),
    ),
)
def save_count_1h(count: int, window: WindowSpan) -> WindowedCount:
    value = WindowedCount(count=count)
    value.window_start.FromDatetime(window.start)
    value.window_end.FromDatetime(window.end)
    return value
