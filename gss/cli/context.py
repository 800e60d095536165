"""What every ``gss`` verb shares: settings (loaded once, lazily) and logging set-up."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import click

from contract import logs
from contract.registry import Registry, load_registry
from contract.settings import Settings, load_settings


@dataclass
class CliContext:
    config_file: str | None = None
    log_level: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        """Settings from file and environment, with CLI-flag overrides (nested dicts)."""
        if self._settings is None or overrides:
            merged = {**self.overrides, **overrides}
            if self.log_level:
                merged["log_level"] = self.log_level
            try:
                self._settings = load_settings(self.config_file, **merged)
            except Exception as exc:  # pydantic and file errors both become usage errors
                raise click.UsageError(f"bad settings: {exc}") from exc
            logs.configure(self._settings.log_level, self._settings.log_format)
        return self._settings

    def registry(self) -> Registry:
        try:
            return load_registry(self.settings().registry_path)
        except Exception as exc:
            raise click.ClickException(str(exc)) from exc


pass_cli = click.make_pass_decorator(CliContext)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: long-running verbs stop cleanly on either."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


duration_option = click.option(
    "--duration",
    type=float,
    default=None,
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
