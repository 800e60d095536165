"""Triton-served models: the local server, the batched gRPC client and the model inputs.

See docs/models.md. The model repository itself is compute/models/.
"""
