"""The local harness as a pytest fixture, for signal developers' own tests.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["compute.testing"]``, then::

    def test_dhash(signal_harness):
        harness = signal_harness(dhash)             # any number of plugins
        harness.send("content.images", event)
        assert harness.latest("images", event.image_signature, "dhash@1").hash == 0x...

The fixture loads GSS's settings as every entry point does (``GSS_*`` variables,
``GSS_CONFIG``), so ``GSS_REGISTRY_PATH`` points the harness at another registry; pass
``settings=`` to choose them in code. Model plugins need ``signal_harness(plugin, models=client)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from compute.harness import LocalHarness
from compute.plugin import Plugin
from contract.settings import load_settings


@pytest.fixture
def signal_harness() -> Iterator[Callable[..., LocalHarness]]:
    """A factory: ``signal_harness(*plugins, **options)`` -> a LocalHarness, closed after the test."""
    made: list[LocalHarness] = []

    def make(*plugins: Plugin, **options: Any) -> LocalHarness:
        options.setdefault("settings", load_settings())
        harness = LocalHarness(list(plugins), **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
