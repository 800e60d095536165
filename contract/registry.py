"""The signal registry: galaxies and their versioned signals, loaded from one YAML file.

The file (``contract/registry.yaml`` by default, ``registry_path`` in settings) is compiled into
frozen models, checked as a whole (names, versions, value types that resolve to protobuf
messages, one pinned default version per signal name), and is then the one answer to "what
may be stored and served".

Lifecycle (docs/serving.md, "Signal lifecycle"): a bare signal name (version 0) means the
galaxy's pinned default version of that name (``defaults:``; implicit when a name has one
version), never the highest registered one; a version's ``state`` is ``active`` or
``deprecated`` (still readable and writable, flagged in DescribeGalaxy and counted).
:meth:`GalaxySpec.signal` is the one place names are resolved. A running server adopts a
changed lifecycle (pins, states, descriptions) with :meth:`Registry.adopt_lifecycle`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from contract.errors import InvalidArgumentError, NotFoundError
from contract.keys import SIGNAL_NAME, EntityCodec, KeyType, signal_suffix, store_keys

DEFAULT_REGISTRY_PATH = Path(__file__).with_name("registry.yaml")
# Where the generated Python modules of gss.v1 lived before the contract layer existed.
_OLD_WIRE_PACKAGE = "gss.v1."
NAME_PATTERN = SIGNAL_NAME.pattern
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> Any:
    """Accept "90s", "15m", "2h", "30d" besides what pydantic takes (seconds, ISO 8601)."""
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
ANY_PREFIX = "type.googleapis.com/"


class SignalState(StrEnum):
    """Where a signal version is in its lifecycle (docs/serving.md, "Signal lifecycle")."""

    ACTIVE = "active"
    # Still readable and writable; flagged in DescribeGalaxy, lookups and writes counted.
    DEPRECATED = "deprecated"


class SignalSpec(BaseModel):
    """One version of one signal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[int, Field(ge=1, le=2**31)]
    value_type: str
    description: str = ""
    ttl: Duration | None = None
    # Whether availability events carry the value inline (when under the size limit).
    inline_value: bool = True
    state: SignalState = SignalState.ACTIVE

    @property
    def deprecated(self) -> bool:
        return self.state is SignalState.DEPRECATED

    @property
    def ref(self) -> str:
        """``name@version``, the form used in docs, the CLI and logs."""
        return f"{self.name}@{self.version}"

    @cached_property
    def message_class(self) -> type[Message]:
        try:
            cls: type[Message] = symbol_database.Default().GetSymbol(self.value_type)
        except KeyError:
            raise InvalidArgumentError(
                f"signal {self.ref}: value type {self.value_type!r} is not a known protobuf "
                "message; add the module that defines it to the registry's imports"
            ) from None
        return cls

    @property
    def type_url(self) -> str:
        return ANY_PREFIX + self.value_type

    @cached_property
    def key_suffix(self) -> bytes:
        """The part of this signal's store keys after the entity bytes."""
        return signal_suffix(self.name, self.version)

    def store_key(self, entity: bytes) -> bytes:
        """The store key of this signal's value for ``entity`` (canonical bytes)."""
        return store_keys((entity,), (self.key_suffix,))[0]

    def pack(self, value: Message) -> any_pb2.Any:
        """Wrap a value of this signal's type in an Any, checking the type."""
        if value.DESCRIPTOR.full_name != self.value_type:
            raise InvalidArgumentError(
                f"signal {self.ref} takes {self.value_type}, not {value.DESCRIPTOR.full_name}"
            )
        packed = any_pb2.Any()
        packed.Pack(value)
        return packed

    def unpack(self, packed: any_pb2.Any) -> Message:
        """The typed value inside an Any, checking it holds this signal's type."""
        if packed.type_url != self.type_url:
            raise InvalidArgumentError(
                f"signal {self.ref} takes {self.value_type}, not {packed.type_url or 'an empty value'}"
            )
        value = self.message_class()
        value.ParseFromString(packed.value)
        return value


class KeySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: KeyType
    length: int | None = None


class GalaxySpec(BaseModel):
    """A namespace of signals keyed by one kind of entity id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    key: KeySpec
    partitions: Annotated[int, Field(ge=1, le=4096)] = 4
    description: str = ""
    signals: tuple[SignalSpec, ...] = ()
    # The pinned default version of each signal name: what a bare name (version 0) means.
    # Required for names with more than one version; a name with one version defaults to it.
    defaults: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_signals(self) -> GalaxySpec:
        seen: set[tuple[str, int]] = set()
        for spec in self.signals:
            if (spec.name, spec.version) in seen:
                raise ValueError(f"signal {spec.ref} is declared twice in galaxy {self.name}")
            seen.add((spec.name, spec.version))
        EntityCodec(self.key.type, self.key.length)  # raises on a bad key declaration
        self._check_defaults()
        return self

    def _check_defaults(self) -> None:
        versions: dict[str, list[int]] = {}
        for spec in self.signals:
            versions.setdefault(spec.name, []).append(spec.version)
        for name, version in self.defaults.items():
            if name not in versions:
                raise ValueError(
                    f"galaxy {self.name}: defaults pins {name}@{version}, but no version of "
                    f"signal {name!r} is registered"
                )
            if version not in versions[name]:
                registered = ", ".join(f"{name}@{v}" for v in sorted(versions[name]))
                raise ValueError(
                    f"galaxy {self.name}: defaults pins {name}@{version}, which is not "
                    f"registered (registered: {registered})"
                )
        for name, numbers in versions.items():
            if len(numbers) > 1 and name not in self.defaults:
                listed = ", ".join(str(v) for v in sorted(numbers))
                raise ValueError(
                    f"galaxy {self.name}: signal {name!r} has versions {listed} and no pinned "
                    f"default: add `defaults: {{{name}: N}}` to the galaxy to say which "
                    "version a bare name means"
                )
        for spec in self.signals:
            if spec.deprecated and self.default_version(spec.name) == spec.version:
                raise ValueError(
                    f"galaxy {self.name}: {spec.ref} is deprecated but is the pinned default "
                    f"of {spec.name!r}: pin another version first (gss signal promote)"
                )

    def default_version(self, name: str) -> int:
        """The pinned default version of ``name`` (what a bare name means); 0 if unknown."""
        if name in self.defaults:
            return self.defaults[name]
        versions = [s.version for s in self.signals if s.name == name]
        return versions[0] if len(versions) == 1 else 0

    def is_default(self, spec: SignalSpec) -> bool:
        return self.default_version(spec.name) == spec.version

    @cached_property
    def deprecated_refs(self) -> frozenset[tuple[str, int]]:
        """``(name, version)`` of the deprecated versions (often empty: a cheap test first)."""
        return frozenset((s.name, s.version) for s in self.signals if s.deprecated)

    @cached_property
    def codec(self) -> EntityCodec:
        return EntityCodec(self.key.type, self.key.length)

    @cached_property
    def _by_ref(self) -> dict[tuple[str, int], SignalSpec]:
        refs = {(s.name, s.version): s for s in self.signals}
        for name in {s.name for s in self.signals}:
            refs[(name, 0)] = refs[(name, self.default_version(name))]
        return refs

    def signal(self, name: str, version: int = 0) -> SignalSpec:
        """The spec of ``name@version``; version 0 (a bare name) is the pinned default version
        of ``name``, never simply the highest registered one. The one resolution of names."""
        try:
            return self._by_ref[(name, version)]
        except KeyError:
            known = ", ".join(sorted({s.ref for s in self.signals})) or "none"
            what = f"{name}@{version}" if version else name
            raise NotFoundError(
                f"galaxy {self.name!r} has no signal {what!r} (known: {known})"
            ) from None


class Registry(BaseModel):
    """All galaxies, by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    imports: tuple[str, ...] = ()
    galaxies: dict[str, GalaxySpec]

    @model_validator(mode="before")
    @classmethod
    def _name_galaxies(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("galaxies"), dict):
            data = {
                **data,
                "galaxies": {
                    name: {"name": name, **spec} if isinstance(spec, dict) else spec
                    for name, spec in data["galaxies"].items()
                },
            }
        return data

    @model_validator(mode="after")
    def _resolve_types(self) -> Registry:
        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                hint = ""
                if module.startswith(_OLD_WIRE_PACKAGE):
                    moved = "contract.v1." + module.removeprefix(_OLD_WIRE_PACKAGE)
                    hint = f"; GSS's generated modules moved: import {moved!r} instead"
                raise ValueError(f"registry import {module!r} failed: {exc}{hint}") from exc
        for galaxy in self.galaxies.values():
            for spec in galaxy.signals:
                try:
                    spec.message_class  # noqa: B018 - resolving is the check
                except InvalidArgumentError as exc:
                    raise ValueError(f"galaxy {galaxy.name}: {exc}") from exc
        return self

    def galaxy(self, name: str) -> GalaxySpec:
        try:
            return self.galaxies[name]
        except KeyError:
            known = ", ".join(sorted(self.galaxies)) or "none"
            raise NotFoundError(f"unknown galaxy {name!r} (known: {known})") from None

    def __iter__(self) -> Iterator[GalaxySpec]:  # type: ignore[override]
        return iter(self.galaxies.values())

    def adopt_lifecycle(self, new: Registry) -> list[str]:
        """Take ``new``'s pins, states and descriptions, in place; returns what changed.

        The one mutation of a registry, for a running server whose file changed (gss.server):
        every part holding this registry sees the new galaxy specs at once (one dict item
        assignment per galaxy). Anything else that differs (galaxies, keys, partitions,
        versions, value types, TTLs, imports) needs a restart: InvalidArgumentError, nothing
        adopted.
        """
        if set(new.galaxies) != set(self.galaxies) or new.imports != self.imports:
            raise InvalidArgumentError(
                "galaxies or imports differ from the running registry: restart to apply"
            )
        changes: list[str] = []
        for name, old_galaxy in self.galaxies.items():
            new_galaxy = new.galaxies[name]
            if _shape(old_galaxy) != _shape(new_galaxy):
                raise InvalidArgumentError(
                    f"galaxy {name}: signals, versions, value types, TTLs, key or partitions "
                    "differ from the running registry: restart to apply"
                )
            changes.extend(_lifecycle_changes(old_galaxy, new_galaxy))
        for name, new_galaxy in new.galaxies.items():
            if new_galaxy != self.galaxies[name]:
                self.galaxies[name] = new_galaxy
        return changes


def _shape(galaxy: GalaxySpec) -> Any:
    """What a running server cannot change without a restart."""
    return galaxy.model_dump(
        exclude={
            "description": True,
            "defaults": True,
            "signals": {"__all__": {"description", "state"}},
        }
    )


def _lifecycle_changes(old: GalaxySpec, new: GalaxySpec) -> list[str]:
    changes = []
    for name in dict.fromkeys(s.name for s in old.signals):
        pinned, now = old.default_version(name), new.default_version(name)
        if pinned != now:
            changes.append(f"{old.name}/{name}: default {name}@{pinned} -> {name}@{now}")
    for before, after in zip(old.signals, new.signals, strict=True):
        if before.state != after.state:
            changes.append(f"{old.name}/{before.ref}: {before.state} -> {after.state}")
    return changes


def parse_signal_path(text: str) -> tuple[str, str, int]:
    """``"galaxy/name@version"`` -> ``(galaxy, name, version)``; version 0 when absent."""
    galaxy, slash, ref = text.partition("/")
    name, _, version = ref.partition("@")
    if (
        not slash
        or not SIGNAL_NAME.match(galaxy)
        or not SIGNAL_NAME.match(name)
        or (version and not version.isdigit())
    ):
        raise InvalidArgumentError(f"{text!r} is not a signal like 'images/embedding@2'")
    return galaxy, name, int(version or 0)


def load_registry(path: str | Path) -> Registry:
    """Load and check a registry file; errors name the file and the offending entry."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read registry {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"registry {path} is not valid YAML: {exc}") from exc
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgumentError(f"registry {path} is invalid:\n{exc}") from exc
