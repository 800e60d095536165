"""The access policy: one YAML file of grants and static tokens (docs/security.md).

    grants:
      - identities: ["cert:ranker.prod.svc", "jwt:svc-ranker"]
        galaxies: ["*"]
        permissions: [read]
      - scopes: ["gss.pins.write"]
        galaxies: [pins]
        permissions: [read, write]
      - identities: ["token:oncall"]
        galaxies: ["*"]
        permissions: [admin]
    tokens:
      - name: loader                  # authenticates as "token:loader"
        sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
        scopes: [gss.pins.write]

A grant gives its permissions in its galaxies to every caller with one of its identities or
one of its scopes. Static tokens are stored only as the hex SHA-256 of the token
(``printf %s "$TOKEN" | sha256sum``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.errors import InvalidArgumentError
from gss.auth.identity import Caller, Permission


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    identities: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    galaxies: list[str]
    permissions: list[Permission]


class StaticToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    scopes: list[str] = Field(default_factory=list)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be the 64 hex digits of the token's SHA-256")
        return value


class Policy(BaseModel):
    """Grants and static tokens, as loaded from the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grants: list[Grant] = Field(default_factory=list)
    tokens: list[StaticToken] = Field(default_factory=list)

    def caller(
        self, identity: str, names: Iterable[str] = (), scopes: Iterable[str] = ()
    ) -> Caller:
        """The caller ``identity`` (also known as ``names``, holding ``scopes``) with the
        permissions the grants give it."""
        all_names = frozenset((identity, *names))
        held_scopes = frozenset(scopes)
        grants: dict[str, set[Permission]] = {}
        for grant in self.grants:
            if all_names.isdisjoint(grant.identities) and held_scopes.isdisjoint(grant.scopes):
                continue
            for galaxy in grant.galaxies:
                for permission in grant.permissions:
                    grants.setdefault(galaxy, set()).update(permission.implied())
        return Caller(
            identity,
            all_names,
            held_scopes,
            {galaxy: frozenset(held) for galaxy, held in grants.items()},
        )

    def static_callers(self) -> dict[str, Caller]:
        """Static tokens' callers by the hex SHA-256 of the token."""
        return {
            token.sha256: self.caller(f"token:{token.name}", scopes=token.scopes)
            for token in self.tokens
        }


def token_digest(token: str) -> str:
    """The hex SHA-256 a static token is stored as."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_policy(path: Path) -> Policy:
    """Load and check the policy file; raises InvalidArgumentError naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return Policy.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise InvalidArgumentError(f"access policy {path}: {exc}") from None
