"""Who is calling: a bearer token (JWT or static) or else the client certificate.

JWTs are verified with PyJWT against the configured key set (a JWKS or PEM file): signature,
``exp``/``nbf``/``iat`` with the configured leeway, ``iss`` and ``aud``; ``sub`` names the
caller. Static tokens are looked up by their SHA-256 in the policy. A verified token's caller
(or, for 10 s, the reason it was refused) is remembered until the token expires or for
``token_cache_seconds``, whichever is first, in a bounded LRU keyed by the token's SHA-256: a
token is verified once, not per call. The policy file and the key file are read again when
they change (checked at most once a second), which empties the cache.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from contract.errors import InvalidArgumentError
from contract.settings import AuthSettings
from gss.auth.identity import ANONYMOUS, UNRESTRICTED, Caller
from gss.auth.policy import Policy, load_policy, token_digest

log = structlog.get_logger(__name__)

# How often (at most) the policy and key files are checked for changes.
FILE_CHECK_SECONDS = 1.0
_BEARER = "bearer "
# How long a refused token's refusal is remembered (repeated bad tokens cost no verification).
REFUSAL_CACHE_SECONDS = 10.0


class Unauthenticated(Exception):
    """The caller could not be identified (gRPC UNAUTHENTICATED); the text never holds a secret."""


@dataclass(frozen=True, slots=True)
class _Cached:
    caller: Caller | None
    refusal: str | None
    until: float


def _file_state(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def load_keys(path: Path) -> list[Any]:
    """Verification keys from a JWKS (JSON) file or a file of PEM public keys."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        return list(jwt.PyJWKSet.from_dict(json.loads(text)).keys)
    marker = "-----END PUBLIC KEY-----"
    blocks = [block + marker for block in text.split(marker) if "BEGIN" in block]
    if not blocks:
        raise InvalidArgumentError(f"{path}: neither a JWKS document nor PEM public keys")
    return [load_pem_public_key(block.strip().encode()) for block in blocks]


class Authenticator:
    """Turns a call's credentials into a :class:`Caller` (used on the server's event loop)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.enabled = settings.policy_file is not None
        self.allow_anonymous = (
            settings.allow_anonymous if settings.allow_anonymous is not None else not self.enabled
        )
        jwt_settings = settings.jwt
        if jwt_settings.keys_file is not None and not (
            jwt_settings.issuer and jwt_settings.audience
        ):
            raise InvalidArgumentError(
                "server.auth.jwt needs issuer and audience along with keys_file: a token is "
                "accepted only for this service, from this issuer"
            )
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._checked_at = 0.0
        self._states: tuple[object, object] = (None, None)
        self.policy = Policy()
        self._static: dict[str, Caller] = {}
        self._keys: list[Any] = []
        self._anonymous = UNRESTRICTED
        self._load()

    def _load(self) -> None:
        """Read the policy and key files (raises on a bad file: at start, that stops the server)."""
        policy_file, keys_file = self.settings.policy_file, self.settings.jwt.keys_file
        states = (_file_state(policy_file), _file_state(keys_file))
        policy = load_policy(policy_file) if policy_file is not None else Policy()
        try:
            keys = load_keys(keys_file) if keys_file is not None else []
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise InvalidArgumentError(f"JWT keys {keys_file}: {exc}") from None
        self.policy, self._keys, self._states = policy, keys, states
        self._static = policy.static_callers()
        self._anonymous = (
            dataclasses.replace(policy.caller(ANONYMOUS), authenticated=False)
            if self.enabled
            else UNRESTRICTED
        )
        self._cache.clear()

    def refresh(self) -> None:
        """Reload the policy and keys if their files changed; a bad new file is refused (logged)
        and the running policy kept."""
        now = time.monotonic()
        if now - self._checked_at < FILE_CHECK_SECONDS:
            return
        self._checked_at = now
        policy_file, keys_file = self.settings.policy_file, self.settings.jwt.keys_file
        if (_file_state(policy_file), _file_state(keys_file)) == self._states:
            return
        try:
            self._load()
        except InvalidArgumentError as exc:
            log.error("access_policy_reload_refused", error=str(exc))
            return
        log.info(
            "access_policy_reloaded",
            policy_file=str(policy_file),
            grants=len(self.policy.grants),
            static_tokens=len(self._static),
            jwt_keys=len(self._keys),
        )

    def authenticate(self, metadata: Iterable[tuple[str, Any]], auth: Any) -> Caller:
        """The caller of a call with ``metadata`` (for ``authorization: Bearer ...``) whose
        ``auth`` is a callable returning the TLS auth context (called only when needed).
        Raises :class:`Unauthenticated`."""
        if not self.enabled:
            return UNRESTRICTED
        self.refresh()
        token = _bearer(metadata)
        if token is not None:
            return self._token_caller(token)
        caller = _certificate_caller(self.policy, auth())
        if caller is not None:
            return caller
        if self.allow_anonymous:
            return self._anonymous
        raise Unauthenticated(
            "no credentials: present a client certificate or an 'authorization: Bearer <token>' "
            "header (anonymous access is off)"
        )

    def _token_caller(self, token: str) -> Caller:
        now = time.time()
        # Keyed by digest: the server keeps no token in memory beyond the call.
        digest = token_digest(token)
        cached = self._cache.get(digest)
        if cached is not None and cached.until > now:
            self._cache.move_to_end(digest)
            if cached.caller is None:
                raise Unauthenticated(cached.refusal)
            return cached.caller
        until = now + self.settings.token_cache_seconds
        caller: Caller | None = self._static.get(digest)
        refusal: str | None = None
        if caller is None:
            try:
                caller, expires = self._verify_jwt(token)
                until = min(until, expires)
            except Unauthenticated as exc:
                # Briefly: a token refused as not yet valid (nbf) may become valid.
                refusal, until = str(exc), min(until, now + REFUSAL_CACHE_SECONDS)
        self._cache[digest] = _Cached(caller, refusal, until)
        if len(self._cache) > self.settings.token_cache_size:
            self._cache.popitem(last=False)
        if caller is None:
            raise Unauthenticated(refusal)
        return caller

    def _verify_jwt(self, token: str) -> tuple[Caller, float]:
        settings = self.settings.jwt
        if not self._keys:
            raise Unauthenticated("the bearer token is not a known token (no JWT keys configured)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT: {exc}") from None
        keys = self._keys
        kid = header.get("kid")
        if kid is not None:
            keys = [k for k in keys if getattr(k, "key_id", None) in (kid, None)] or keys
        error: jwt.PyJWTError | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key if isinstance(key, jwt.PyJWK) else key,
                    algorithms=settings.algorithms,
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway_seconds,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError as exc:
                error = exc  # another key of the set may have signed it
                continue
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
            raw_scopes = claims.get(settings.scope_claim, "")
            scopes = raw_scopes.split() if isinstance(raw_scopes, str) else list(raw_scopes)
            caller = self.policy.caller(f"jwt:{claims['sub']}", scopes=map(str, scopes))
            return caller, float(claims["exp"]) + settings.leeway_seconds
        raise Unauthenticated(f"the bearer token is not valid: {error}")


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            if text[: len(_BEARER)].lower() != _BEARER or not text[len(_BEARER) :].strip():
                raise Unauthenticated("the authorization header is not 'Bearer <token>'")
            return text[len(_BEARER) :].strip()
    return None


def _certificate_caller(policy: Policy, auth_context: Mapping[str, Any]) -> Caller | None:
    """The caller a verified client certificate names (None without one). The server accepts
    only certificates its client CA signed, so the names can be trusted."""
    names: list[str] = []
    for prop in ("x509_subject_alternative_name", "x509_common_name"):
        for value in auth_context.get(prop, ()):
            name = f"cert:{value.decode() if isinstance(value, bytes) else value}"
            if name not in names:
                names.append(name)
    if not names:
        return None
    return policy.caller(names[0], names[1:])
