"""The signal registry: galaxies and their versioned signals, loaded from one YAML file.

The file (``contract/registry.yaml`` by default, ``registry_path`` in settings) is compiled into
frozen models, checked as a whole (names, versions, value types that resolve to protobuf
messages), and is then the one answer to "what may be stored and served".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
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

    @model_validator(mode="after")
    def _unique_signals(self) -> GalaxySpec:
        seen: set[tuple[str, int]] = set()
        for spec in self.signals:
            if (spec.name, spec.version) in seen:
                raise ValueError(f"signal {spec.ref} is declared twice in galaxy {self.name}")
            seen.add((spec.name, spec.version))
        EntityCodec(self.key.type, self.key.length)  # raises on a bad key declaration
        return self

    @cached_property
    def codec(self) -> EntityCodec:
        return EntityCodec(self.key.type, self.key.length)

    @cached_property
    def _by_ref(self) -> dict[tuple[str, int], SignalSpec]:
        refs = {(s.name, s.version): s for s in self.signals}
        for name in {s.name for s in self.signals}:
            refs[(name, 0)] = max(
                (s for s in self.signals if s.name == name), key=lambda s: s.version
            )
        return refs

    def signal(self, name: str, version: int = 0) -> SignalSpec:
        """The spec of ``name@version``; version 0 is the latest registered version."""
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
