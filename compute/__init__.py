"""GSS compute: signals as decorated Python functions, run in-process or on Flink.

The signal developer's whole API (see docs/compute.md)::

    from compute import signal, Source, GroupBy, Tumbling, Sliding, Count, Join, Match

The plumbing lives below: :mod:`compute.harness` (local runs, ``gss signal test``),
:mod:`compute.execution` (what happens to each record, wherever it runs), :mod:`compute.flink`
(the Flink job), :mod:`compute.triton` (models). Compute imports only the contract layer and
reaches the store only through the changelog (docs/architecture.md).
"""

from compute.inference import Model
from compute.plugin import (
    Aggregation,
    Collect,
    Count,
    GroupBy,
    Inputs,
    Join,
    Match,
    Plugin,
    Retry,
    Sliding,
    Source,
    Sum,
    Tumbling,
    WindowSpan,
    signal,
)

__all__ = [
    "Aggregation",
    "Collect",
    "Count",
    "GroupBy",
    "Inputs",
    "Join",
    "Match",
    "Model",
    "Plugin",
    "Retry",
    "Sliding",
    "Source",
    "Sum",
    "Tumbling",
    "WindowSpan",
    "signal",
]
