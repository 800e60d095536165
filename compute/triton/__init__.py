"""Triton-served models: the batched model client, its transport and the model inputs.

See docs/models.md. The example model repository is compute/models/; the local Triton
launcher over it is :mod:`gss.local.triton`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract.settings import TritonSettings

EXAMPLE_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "models"


def model_repository(triton: TritonSettings) -> Path:
    """The model repository the settings name, or the example repository shipped in compute/."""
    return triton.model_repository or EXAMPLE_MODEL_REPOSITORY
