"""Triton-served models: the local server, the batched model client and the model inputs.

See docs/models.md. The model repository itself is compute/models/.
"""
