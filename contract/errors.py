"""Errors a caller can act on. The server maps each kind to one gRPC status code."""

from __future__ import annotations


class GssError(Exception):
    """Base of every error GSS raises on purpose."""


class NotFoundError(GssError):
    """A galaxy, signal or version the registry does not know (gRPC NOT_FOUND)."""


class InvalidArgumentError(GssError, ValueError):
    """Input that can never succeed as sent (gRPC INVALID_ARGUMENT)."""


class UnavailableError(GssError):
    """A dependency (broker, Triton, the store while closing) cannot serve now (UNAVAILABLE)."""


class WrongNodeError(GssError):
    """An entity this node does not host (a cluster node hosts some partitions only): the
    message names the partition and the nodes that host it (gRPC FAILED_PRECONDITION)."""
