"""What a model plugin calls: ``await model.infer(item)``.

A model plugin (``@signal(..., model="image_embedding")``) is ``async def f(event, model)``.
``model`` is a :class:`Model`: one view per record of the process-wide batched client
(:class:`compute.triton.client.ModelClient`), so concurrent records' calls share Triton
requests, and the model version that answered is recorded for the value's envelope.

Anything with ``submit(model_name, item) -> concurrent.futures.Future`` of an object with
``model_name``/``model_version`` attributes can stand in for the client (tests use a small
in-process fake; the real Triton is used by the integration tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from contract.settings import TritonSettings

Tensor = npt.NDArray[Any]
Item = Tensor | Mapping[str, Tensor]


class Outputs(Protocol):
    """One item's outputs (a mapping of output name to array), and who made them."""

    model_name: str
    model_version: str

    def __getitem__(self, name: str) -> Tensor: ...


class Submitter(Protocol):
    """The part of :class:`compute.triton.client.ModelClient` the runtime uses."""

    def submit(self, model_name: str, item: Item) -> Future[Any]: ...


class Model:
    """A model as one record's plugin sees it: ``await model.infer(item)``.

    ``item`` is one input without the batch dimension: an array for single-input models, or
    a mapping of input name to array. The result maps output names to arrays (no batch dim).
    """

    __slots__ = ("_client", "name", "used_version")

    def __init__(self, client: Submitter, name: str) -> None:
        self._client = client
        self.name = name
        # The version that answered this record's latest call; goes into the envelope.
        self.used_version = ""

    async def infer(self, item: Item) -> Outputs:
        """The model's outputs for one item, computed in a micro-batch with other records."""
        if isinstance(item, np.ndarray | Mapping):
            future = self._client.submit(self.name, item)
        else:
            raise TypeError(f"model {self.name}: an item is an array or a mapping of arrays")
        outputs: Outputs = await asyncio.wrap_future(future)
        self.used_version = str(getattr(outputs, "model_version", ""))
        return outputs


def connect(triton: TritonSettings, url: str | None = None) -> Submitter:
    """A batched Triton client for ``url`` (``triton.url`` unless given), batching and retrying
    as ``triton`` says."""
    from compute.triton.client import ModelClient

    return ModelClient.from_settings(triton, url)
