"""The one logging setup: structlog, JSON lines by default, readable on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console", "auto"]


def configure(level: str = "INFO", fmt: LogFormat = "auto") -> None:
    """Route structlog and stdlib logging to stderr as JSON lines (or pretty on a terminal).

    Durations are logged in seconds under ``*_seconds`` keys; events use domain words
    (galaxy, signal, entity_count, changelog_position, ...) as field names. The same set-up
    serves the CLI, the server and Flink's Python workers (whose ``print`` takes no ``flush``,
    so lines are written to the stream directly).
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
