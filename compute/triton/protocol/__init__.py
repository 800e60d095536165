"""Triton's gRPC inference protocol messages (a subset; see inference.proto)."""
