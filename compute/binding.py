"""Plugins checked against the registry and settings, with everything a run needs resolved.

:func:`bind` is the one check between what a plugin declares and what GSS serves: the galaxy
and signal exist, the source's entity field suits the galaxy's key type, join inputs are
registered signals of the same galaxy, and no signal has two plugins. Its result,
:class:`Bound`, is small, picklable and free of the registry, so it travels to Flink's
Python workers as is.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from google.protobuf import symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from compute.plugin import Plugin, Shape, parse_ref
from contract.errors import InvalidArgumentError, NotFoundError
from contract.keys import EntityCodec, KeyType
from contract.registry import Registry
from contract.settings import Settings
from contract.topics import TopicKind, topic_name

_INT_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}


@dataclass(frozen=True)
class JoinInput:
    """One input of a join: the name the function uses, and the signal it is."""

    key: str  # as written in Join.inputs: "dhash" or "dhash@1"
    name: str
    version: int
    value_type: str


@dataclass(frozen=True)
class Bound:
    """A plugin with its galaxy, topics and value type resolved."""

    plugin: Plugin
    galaxy: str
    key_type: KeyType
    key_length: int
    value_type: str
    changelog_topic: str
    dlq_topic: str  # the galaxy's dead-letter topic, shared with the ingester
    input_topic: str  # the content topic, or the galaxy's changelog for joins
    producer: str
    imports: tuple[str, ...]  # modules that define the registry's value types
    join_inputs: tuple[JoinInput, ...] = ()
    backfill: bool = False  # values are marked as backfilled (envelope.backfill)
    code: str = ""  # "module:function" of the plugin (envelope.plugin)
    revision: str = ""  # its code revision (envelope.plugin_revision)

    @property
    def ref(self) -> str:
        return self.plugin.ref

    @cached_property
    def codec(self) -> EntityCodec:
        return EntityCodec(self.key_type, self.key_length)

    def message_class(self, full_name: str) -> type[Message]:
        """The protobuf class of a registered value type (importing its module if needed)."""
        for module in self.imports:
            importlib.import_module(module)
        cls: type[Message] = symbol_database.Default().GetSymbol(full_name)
        return cls


def bind(plugins: Sequence[Plugin], registry: Registry, settings: Settings) -> list[Bound]:
    """Check ``plugins`` against the registry; raise one error listing every problem."""
    problems: list[str] = []
    bound: list[Bound] = []
    owners: dict[tuple[str, str, int], Plugin] = {}
    producer = f"flink:{settings.compute.job_name}"
    for plugin in plugins:
        key = (plugin.galaxy, plugin.name, plugin.version)
        if key in owners:
            problems.append(
                f"{plugin.ref} is computed by two plugins: {getattr(owners[key], '__qualname__', owners[key])} "
                f"and {getattr(plugin, '__qualname__', plugin)}"
            )
            continue
        owners[key] = plugin
        try:
            bound.append(_bind_one(plugin, registry, settings, producer))
        except (InvalidArgumentError, NotFoundError) as exc:
            problems.append(f"{plugin.ref}: {exc}")
    if problems:
        raise InvalidArgumentError("plugins do not match the registry:\n  " + "\n  ".join(problems))
    return bound


def plugin_code(plugin: Plugin) -> tuple[str, str]:
    """("module:function", revision) of a plugin: the revision is the first 12 hex digits of
    the SHA-256 of its source file ("" when the source is not a file)."""
    fn = plugin.fn
    name = f"{fn.__module__}:{getattr(fn, '__qualname__', fn.__class__.__name__)}"
    try:
        path = inspect.getsourcefile(fn)
        with open(path or "", "rb") as source:
            revision = hashlib.sha256(source.read()).hexdigest()[:12]
    except (OSError, TypeError):
        revision = ""
    return name, revision


def _bind_one(plugin: Plugin, registry: Registry, settings: Settings, producer: str) -> Bound:
    galaxy = registry.galaxy(plugin.galaxy)
    spec = galaxy.signal(plugin.name, plugin.version)
    kafka = settings.kafka
    changelog = kafka.topic(kafka.changelog_topic, galaxy.name)
    joins: tuple[JoinInput, ...] = ()
    if plugin.source is not None:
        field = plugin.source.schema.DESCRIPTOR.fields_by_name[plugin.source.entity]
        wanted_int = galaxy.key.type is KeyType.INT64
        if (wanted_int and field.type not in _INT_TYPES) or (
            not wanted_int and field.type != FieldDescriptor.TYPE_BYTES
        ):
            raise InvalidArgumentError(
                f"source field {plugin.source.entity!r} of {plugin.source.schema.DESCRIPTOR.full_name} "
                f"cannot hold a {galaxy.name} id ({galaxy.key.type}): use an "
                f"{'integer' if wanted_int else 'bytes'} field"
            )
        input_topic = plugin.source.topic
    else:
        assert plugin.join is not None
        inputs = []
        for ref in plugin.join.inputs:
            name, version = parse_ref(ref)
            if (name, version) == (plugin.name, plugin.version):
                raise InvalidArgumentError("a join cannot take its own signal as input")
            inputs.append(JoinInput(ref, name, version, galaxy.signal(name, version).value_type))
        joins = tuple(inputs)
        input_topic = changelog
    if plugin.shape in (Shape.JOIN, Shape.MATCH) and not joins:
        raise InvalidArgumentError("a join needs inputs")
    code, revision = plugin_code(plugin)
    return Bound(
        plugin=plugin,
        galaxy=galaxy.name,
        key_type=galaxy.key.type,
        key_length=galaxy.codec.length,
        value_type=spec.value_type,
        changelog_topic=changelog,
        dlq_topic=topic_name(kafka, TopicKind.DLQ, galaxy.name),
        input_topic=input_topic,
        producer=producer,
        imports=registry.imports,
        join_inputs=joins,
        backfill=settings.compute.backfill,
        code=code,
        revision=settings.compute.plugin_revision or revision,
    )
