"""pins/save_count_last_hour@1: how often the pin was saved in the trailing hour, kept current.

A sliding one-hour window every ten minutes, fired early: at most a fifth of a second after
each save the count of the window that ends next is written (bench/report.json
"freshness_window_*" says how soon it is readable), and each window's final count once the
watermark passes its end. Only that trailing window writes early (a window reaching
further ahead has seen only the newest saves), so a lookup reads the saves of the last hour
up to the next ten-minute boundary (the last 50 to 60 minutes). Each save is in six
windows; a shorter slide follows the trailing hour more closely for proportionally more work.
"""

from datetime import timedelta

from compute import Count, GroupBy, Sliding, WindowSpan, signal
from compute.examples.pins.sources import PINS
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.signals_pb2 import WindowedCount


@signal(
    galaxy="pins",
    name="save_count_last_hour",
    version=1,
    source=PINS,
    group_by=GroupBy(
        window=Sliding(size=timedelta(hours=1), slide=timedelta(minutes=10)),
        aggregate=Count(where=lambda event: event.action == PinEngagementEvent.SAVE),
        allowed_lateness=timedelta(minutes=10),
        early_firing=timedelta(milliseconds=200),
    ),
)
def save_count_last_hour(count: int, window: WindowSpan) -> WindowedCount:
    value = WindowedCount(count=count)
    value.window_start.FromDatetime(window.start)
    value.window_end.FromDatetime(window.end)
    return value
