"""Callers and what they may do: the identity the interceptor attaches to every call.

A :class:`Caller` is named by how it proved who it is: ``cert:<name>`` (a client certificate;
one name per subject common name and per subject alternative name), ``jwt:<sub>`` (a signed
token), ``token:<name>`` (a static token of the policy), or ``anonymous``. Its grants are
resolved from the policy once, when it is authenticated, so a call's check is two lookups.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

ANONYMOUS = "anonymous"
# A grant for every galaxy.
ANY_GALAXY = "*"


class Permission(enum.StrEnum):
    """What a caller may do in a galaxy. ``admin`` includes ``write`` and ``read``."""

    READ = "read"  # GetSignals, WatchSignals, DescribeGalaxy (and the galaxy in ListGalaxies)
    WRITE = "write"  # PutSignals: values and tombstones (deletes)
    ADMIN = "admin"  # PutSignals records with override_ordering

    def implied(self) -> frozenset[Permission]:
        if self is Permission.ADMIN:
            return frozenset(Permission)
        return frozenset((self,))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and the permissions the policy gives it per galaxy (``*``: all)."""

    identity: str
    # Every name grants may match (a certificate has several); identity is the first.
    names: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    grants: Mapping[str, frozenset[Permission]] = field(default_factory=dict)
    authenticated: bool = True

    def may(self, permission: Permission, galaxy: str) -> bool:
        """True if the caller holds ``permission`` in ``galaxy``."""
        held = self.grants.get(galaxy)
        if held is not None and permission in held:
            return True
        held = self.grants.get(ANY_GALAXY)
        return held is not None and permission in held


# Every permission on every galaxy: the caller of a server without a policy (the default).
UNRESTRICTED = Caller(
    ANONYMOUS,
    frozenset((ANONYMOUS,)),
    grants={ANY_GALAXY: frozenset(Permission)},
    authenticated=False,
)

# The caller of the call being served, set by the server interceptor (gss.auth.interceptor).
CURRENT_CALLER: ContextVar[Caller] = ContextVar("gss_caller", default=UNRESTRICTED)
