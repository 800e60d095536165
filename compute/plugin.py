"""The signal developer's API: one decorator on one function.

A plugin maps its input to one value of a registered signal (or ``None``: no value)::

    from compute import Source, signal
    from contract.v1.content_pb2 import ImageEvent
    from contract.v1.signals_pb2 import DHash

    @signal(galaxy="images", name="dhash", version=1,
            source=Source(topic="content.images", schema=ImageEvent, entity="image_signature"))
    def dhash(event: ImageEvent) -> DHash | None:
        ...

Three shapes, chosen by the decorator's arguments:

- **map** (``source=``): one content event in, one value out. With ``model="name"`` the
  function also receives a :class:`~compute.inference.Model` to call (calls are batched
  across records by the runtime); it may be ``async def``.
- **group-by** (``source=`` and ``group_by=GroupBy(...)``): events are grouped by entity
  and event-time window, reduced by an aggregation, and the function turns each window's
  aggregate into a value: ``f(aggregate, window) -> value``.
- **join** (``join=Join(...)``): a value derived from other signals of the same entity,
  computed whenever one of them changes and all are present: ``f(inputs) -> value``.
  ``join=Match(...)`` also hands over the other entities that share a match key (for
  example near-duplicate buckets): ``f(inputs, peers) -> value``.

Which entity a value belongs to is the source's ``entity`` field (map and group-by) or the
entity whose signals were joined. Every failure of the function is retried per ``retry``,
then dead-lettered; see docs/compute.md.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from google.protobuf.message import Message

from contract.errors import InvalidArgumentError
from contract.keys import SIGNAL_NAME

if TYPE_CHECKING:
    from compute.inference import Model

E = TypeVar("E", bound=Message)
V = TypeVar("V", bound=Message)
A = TypeVar("A")
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Source(Generic[E]):
    """A Kafka topic of protobuf content events.

    ``entity`` names the field holding the entity id (bytes for a bytes galaxy, an integer for
    an int64 galaxy); ``event_time`` names a ``google.protobuf.Timestamp`` field. Events may
    arrive up to ``max_out_of_orderness`` behind the newest one seen before windows treat
    them as late.
    """

    topic: str
    schema: type[E]
    entity: str
    event_time: str = "event_time"
    max_out_of_orderness: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        fields = self.schema.DESCRIPTOR.fields_by_name
        for role, name in (("entity", self.entity), ("event_time", self.event_time)):
            if name not in fields:
                raise InvalidArgumentError(
                    f"Source({self.topic!r}): {self.schema.DESCRIPTOR.full_name} has no field "
                    f"{name!r} for {role} (fields: {', '.join(fields)})"
                )
        time_field = fields[self.event_time]
        if time_field.message_type is None or time_field.message_type.full_name != (
            "google.protobuf.Timestamp"
        ):
            raise InvalidArgumentError(
                f"Source({self.topic!r}): event_time field {self.event_time!r} must be a "
                "google.protobuf.Timestamp"
            )
        if self.max_out_of_orderness < timedelta(0):
            raise InvalidArgumentError("max_out_of_orderness must not be negative")


@dataclass(frozen=True)
class Retry:
    """How often a failing function is called again before its input is dead-lettered.

    ``attempts`` counts every call, the first included (1 = no retry). The n-th retry waits
    ``backoff * multiplier**(n-1)``, at most ``max_backoff``.
    """

    attempts: int = 3
    backoff: timedelta = timedelta(milliseconds=50)
    multiplier: float = 2.0
    max_backoff: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidArgumentError(f"Retry.attempts must be at least 1, not {self.attempts}")

    def delay_seconds(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        seconds = self.backoff.total_seconds() * self.multiplier ** (retry - 1)
        return min(seconds, self.max_backoff.total_seconds())


NO_RETRY = Retry(attempts=1)


# ---- group-by ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tumbling:
    """Back-to-back event-time windows ``[k*size, (k+1)*size)`` (UTC epoch aligned)."""

    size: timedelta


@dataclass(frozen=True)
class Sliding:
    """Overlapping event-time windows of ``size`` starting every ``slide``."""

    size: timedelta
    slide: timedelta


@dataclass(frozen=True)
class WindowSpan:
    """The event-time window ``[start, end)`` a group-by value covers."""

    start: datetime
    end: datetime

    @classmethod
    def from_ms(cls, start_ms: int, end_ms: int) -> WindowSpan:
        return cls(
            datetime.fromtimestamp(start_ms / 1000, UTC), datetime.fromtimestamp(end_ms / 1000, UTC)
        )


class Aggregation(ABC, Generic[E, A]):
    """Reduces the events of one window to an aggregate.

    ``extract`` runs once per event (it is the part that may fail, and is retried and
    dead-lettered like any plugin code); ``None`` leaves the event out. ``zero``, ``add`` and
    ``merge`` combine extracted values and must not fail.
    """

    def extract(self, event: E) -> Any:
        return event

    @abstractmethod
    def zero(self) -> A: ...

    @abstractmethod
    def add(self, aggregate: A, extracted: Any) -> A: ...

    @abstractmethod
    def merge(self, a: A, b: A) -> A: ...


@dataclass(frozen=True)
class Count(Aggregation[E, int]):
    """The number of events (those for which ``where`` is true, when given)."""

    where: Callable[[E], bool] | None = None

    def extract(self, event: E) -> Any:
        return 1 if self.where is None or self.where(event) else None

    def zero(self) -> int:
        return 0

    def add(self, aggregate: int, extracted: Any) -> int:
        return aggregate + 1

    def merge(self, a: int, b: int) -> int:
        return a + b


@dataclass(frozen=True)
class Sum(Aggregation[E, float]):
    """The sum of ``of(event)`` over events (those for which ``where`` is true)."""

    of: Callable[[E], float]
    where: Callable[[E], bool] | None = None

    def extract(self, event: E) -> Any:
        return float(self.of(event)) if self.where is None or self.where(event) else None

    def zero(self) -> float:
        return 0.0

    def add(self, aggregate: float, extracted: Any) -> float:
        return aggregate + float(extracted)

    def merge(self, a: float, b: float) -> float:
        return a + b


@dataclass(frozen=True)
class Collect(Aggregation[E, list[Any]]):
    """The list of ``of(event)`` (the event itself by default), at most ``limit`` items."""

    of: Callable[[E], Any] | None = None
    where: Callable[[E], bool] | None = None
    limit: int = 1000

    def extract(self, event: E) -> Any:
        if self.where is not None and not self.where(event):
            return None
        return event if self.of is None else self.of(event)

    def zero(self) -> list[Any]:
        return []

    def add(self, aggregate: list[Any], extracted: Any) -> list[Any]:
        return [*aggregate, extracted] if len(aggregate) < self.limit else aggregate

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return (a + b)[: self.limit]


@dataclass(frozen=True)
class GroupBy(Generic[E, A]):
    """Group a source's events by entity and event-time window, then aggregate.

    A window's value is written when the watermark (newest event time seen minus the
    source's ``max_out_of_orderness``) passes its end. Events up to ``allowed_lateness``
    after that update the window and write it again; later ones are dead-lettered as
    TOO_LATE. With ``early_firing`` the open window's running value is also written at most
    that long after an event changed it (live processing only: a run over history writes
    final values only), under the same event time as the final one, which replaces it.
    """

    window: Tumbling | Sliding
    aggregate: Aggregation[E, A]
    allowed_lateness: timedelta = timedelta(0)
    early_firing: timedelta | None = None

    def __post_init__(self) -> None:
        size = self.window.size
        if size <= timedelta(0) or size % timedelta(milliseconds=1):
            raise InvalidArgumentError(f"window size {size} must be a positive whole number of ms")
        if isinstance(self.window, Sliding) and (
            self.window.slide <= timedelta(0) or self.window.slide > size
        ):
            raise InvalidArgumentError(
                f"sliding window slide {self.window.slide} must be positive and at most its size"
            )
        if self.allowed_lateness < timedelta(0):
            raise InvalidArgumentError("allowed_lateness must not be negative")
        if self.early_firing is not None and (
            self.early_firing <= timedelta(0) or self.early_firing % timedelta(milliseconds=1)
        ):
            raise InvalidArgumentError(
                f"early_firing {self.early_firing} must be a positive whole number of ms"
            )


# ---- joins -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs(Mapping[str, Message]):
    """The joined signals of one entity: ``inputs["dhash"]`` is its latest ``dhash`` value.

    Keys are the input names as declared (``"dhash"`` or ``"dhash@1"``, as written in
    ``Join.inputs``). ``event_time`` is the newest event time among them. ``sources`` says
    where each input was read — its changelog record's (topic, partition, offset), when known —
    which the value's envelope records as its lineage.
    """

    entity_id: str
    event_time: datetime
    by_name: Mapping[str, Message]
    sources: Mapping[str, tuple[str, int, int]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Message:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def __reduce__(self) -> tuple[Any, ...]:
        # Compact between Flink operators and in join state: bytes, not pickled messages.
        items = tuple(
            (name, type(value).__module__, value.DESCRIPTOR.full_name, value.SerializeToString())
            for name, value in self.by_name.items()
        )
        return _rebuild_inputs, (
            self.entity_id,
            self.event_time.timestamp(),
            items,
            tuple(self.sources.items()),
        )

    def get_as(self, name: str, kind: type[M]) -> M:
        """``self[name]``, checked to be a ``kind`` (for typed code)."""
        value = self.by_name[name]
        if not isinstance(value, kind):
            raise TypeError(f"input {name!r} is a {type(value).__name__}, not {kind.__name__}")
        return value


def _rebuild_inputs(
    entity_id: str, timestamp: float, items: tuple[Any, ...], sources: tuple[Any, ...] = ()
) -> Inputs:
    from google.protobuf import symbol_database

    values: dict[str, Message] = {}
    for name, module, full_name, raw in items:
        importlib.import_module(module)
        values[name] = symbol_database.Default().GetSymbol(full_name).FromString(raw)
    return Inputs(entity_id, datetime.fromtimestamp(timestamp, UTC), values, dict(sources))


@dataclass(frozen=True)
class Join:
    """A value derived from other signals of the same entity (same galaxy).

    The function runs when any input changes and every input has a value; each input's
    latest value is kept in state for ``ttl`` after it last changed (then forgotten, as if
    never seen). Inputs name signals as ``"name"`` (version 1) or ``"name@version"``.
    """

    inputs: tuple[str, ...]
    ttl: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InvalidArgumentError("Join needs at least one input signal")
        for ref in self.inputs:
            parse_ref(ref)
        if self.ttl <= timedelta(0):
            raise InvalidArgumentError("Join ttl must be positive")


@dataclass(frozen=True, kw_only=True)
class Match(Join):
    """A join that also sees the other entities sharing a match key with this one.

    ``keys(inputs)`` gives an entity's match keys (for example the bands of a perceptual
    hash); the function receives this entity's inputs and the inputs of every other entity
    seen within ``ttl`` under at least one common key: ``f(inputs, peers)``. Peers are the
    entities' inputs as last seen, oldest first; the entity itself is never among them.
    """

    keys: Callable[[Inputs], Iterable[Hashable]]


def parse_ref(ref: str) -> tuple[str, int]:
    """``"name@3"`` -> ``("name", 3)``; a bare name is version 1."""
    name, _, version = ref.partition("@")
    if not SIGNAL_NAME.match(name) or (version and not version.isdigit()):
        raise InvalidArgumentError(f"{ref!r} is not a signal reference like 'dhash' or 'dhash@1'")
    return name, int(version or 1)


# ---- plugins -----------------------------------------------------------------------------


class Shape(StrEnum):
    MAP = "map"
    GROUP_BY = "group_by"
    JOIN = "join"
    MATCH = "match"


@dataclass(frozen=True, eq=False)
class Plugin:
    """A decorated signal function and what it declared. Calling it calls the function."""

    fn: Callable[..., Any]
    galaxy: str
    name: str
    version: int
    shape: Shape
    source: Source[Any] | None = None
    group_by: GroupBy[Any, Any] | None = None
    join: Join | None = None
    model: str | None = None
    retry: Retry = field(default_factory=Retry)
    description: str = ""

    @property
    def ref(self) -> str:
        """``galaxy/name@version``, how logs, metrics and docs name the plugin's signal."""
        return f"{self.galaxy}/{self.name}@{self.version}"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def input_topic(self) -> str | None:
        """The content topic read (None for joins, which read the galaxy's changelog)."""
        return self.source.topic if self.source is not None else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Plugin {self.ref} ({self.shape})>"


_MapFn = Callable[[E], V | None]
_ModelFn = Callable[[E, "Model"], Awaitable[V | None]]
_GroupFn = Callable[[A, WindowSpan], V | None]
_JoinFn = Callable[[Inputs], V | None]
_MatchFn = Callable[[Inputs, Sequence[Inputs]], V | None]


@overload
def signal(
    *,
    galaxy: str,
    name: str,
    version: int,
    source: Source[E],
    model: None = None,
    retry: Retry = ...,
    description: str = "",
) -> Callable[[_MapFn[E, V]], Plugin]: ...
@overload
def signal(
    *,
    galaxy: str,
    name: str,
    version: int,
    source: Source[E],
    model: str,
    retry: Retry = ...,
    description: str = "",
) -> Callable[[_ModelFn[E, V]], Plugin]: ...
@overload
def signal(
    *,
    galaxy: str,
    name: str,
    version: int,
    source: Source[E],
    group_by: GroupBy[E, A],
    retry: Retry = ...,
    description: str = "",
) -> Callable[[_GroupFn[A, V]], Plugin]: ...
@overload
def signal(  # type: ignore[overload-overlap]  # a Match is a Join; the first match wins
    *,
    galaxy: str,
    name: str,
    version: int,
    join: Match,
    retry: Retry = ...,
    description: str = "",
) -> Callable[[_MatchFn[V]], Plugin]: ...
@overload
def signal(
    *,
    galaxy: str,
    name: str,
    version: int,
    join: Join,
    retry: Retry = ...,
    description: str = "",
) -> Callable[[_JoinFn[V]], Plugin]: ...
def signal(
    *,
    galaxy: str,
    name: str,
    version: int,
    source: Source[Any] | None = None,
    group_by: GroupBy[Any, Any] | None = None,
    join: Join | None = None,
    model: str | None = None,
    retry: Retry | None = None,
    description: str = "",
) -> Callable[[Callable[..., Any]], Plugin]:
    """Declare ``galaxy/name@version`` as computed by the decorated function.

    Give ``source`` (a map plugin), ``source`` and ``group_by`` (a windowed group-by), or
    ``join`` (a join of this galaxy's signals). ``model`` names a Triton model the map
    function calls. ``retry`` defaults to :class:`Retry()` (3 attempts). The galaxy and
    signal must be in the registry; that is checked when plugins are loaded into a run.
    """
    if not SIGNAL_NAME.match(name):
        raise InvalidArgumentError(f"signal name {name!r} must match {SIGNAL_NAME.pattern}")
    if not SIGNAL_NAME.match(galaxy):
        raise InvalidArgumentError(f"galaxy name {galaxy!r} must match {SIGNAL_NAME.pattern}")
    if not isinstance(version, int) or version < 1:
        raise InvalidArgumentError(
            f"signal {name!r}: version must be an integer >= 1, not {version!r}"
        )
    if (source is None) == (join is None):
        raise InvalidArgumentError(
            f"signal {name}@{version}: give exactly one input: source=Source(...) or join=Join(...)"
        )
    if group_by is not None and source is None:
        raise InvalidArgumentError(f"signal {name}@{version}: group_by needs a source")
    if model is not None and (group_by is not None or join is not None):
        raise InvalidArgumentError(
            f"signal {name}@{version}: model= is for map plugins (a source without group_by)"
        )
    if join is not None:
        shape = Shape.MATCH if isinstance(join, Match) else Shape.JOIN
    else:
        shape = Shape.GROUP_BY if group_by is not None else Shape.MAP

    def decorate(fn: Callable[..., Any]) -> Plugin:
        if inspect.iscoroutinefunction(fn) and model is None:
            raise InvalidArgumentError(
                f"signal {name}@{version}: only model plugins may be async (got async {fn.__name__})"
            )
        if model is not None and not inspect.iscoroutinefunction(fn):
            raise InvalidArgumentError(
                f"signal {name}@{version}: a model plugin is `async def` so model calls from "
                f"many records can be batched; make {fn.__name__} async and `await model.infer(...)`"
            )
        plugin = Plugin(
            fn=fn,
            galaxy=galaxy,
            name=name,
            version=version,
            shape=shape,
            source=source,
            group_by=group_by,
            join=join,
            model=model,
            retry=retry or Retry(),
            description=description or inspect.getdoc(fn) or "",
        )
        for attr in functools.WRAPPER_ASSIGNMENTS:
            if hasattr(fn, attr):
                object.__setattr__(plugin, attr, getattr(fn, attr))
        return plugin

    return decorate
