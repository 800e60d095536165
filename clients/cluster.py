"""The routing clients: one lookup API over a cluster of GSS nodes (docs/cluster.md).

    with ClusterClient(["gss-0.gss:50051", "gss-1.gss:50051"]) as gss:
        rows = gss.get("pins", [1001, 1002, 1003], ["save_count_1h"])

    async with AsyncClusterClient(["gss-0.gss:50051"]) as gss:   # the asyncio form
        rows = await gss.get("pins", [1001, 1002, 1003], ["save_count_1h"])

It reads the cluster map (DescribeCluster) from the first seed that answers, routes every
entity to the nodes hosting its changelog partition — ``(murmur2(entity bytes) & 0x7fffffff)
% partitions``, the partitioner every producer uses (:mod:`contract.partitions`) — sends one
call per node in parallel and gathers the rows in request order.

Failover: a call that fails UNAVAILABLE (node down, draining, or behind ``min_positions``),
DEADLINE_EXCEEDED on an attempt, or FAILED_PRECONDITION (the map was stale) is sent again
to another replica of the same partitions, within the call's one deadline; a node that failed
is avoided for ``avoid_seconds``; the map is read again every ``refresh_seconds`` and after a
FAILED_PRECONDITION. With more than one replica left, an attempt gets half of the time left,
so that a hung node leaves time for another.

Writes (``put``) go to a node hosting each record's partition (with ``wait_readable`` only
such a node can tell when the record is readable), with the same failover; they are
idempotent, so a write sent twice stores one value.

TLS and tokens: ``tls=`` and ``token=`` as for :class:`clients.lookup.GssClient`; every node is
called with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Self, TypeVar

import grpc

from clients.lookup import (
    AsyncGssClient,
    EntityId,
    EntityResult,
    GssClient,
    entity_text,
    open_aio_channel,
    open_channel,
    settings_token,
)
from contract.keys import EntityCodec, KeyType
from contract.partitions import partition_of
from contract.settings import ClientSettings, TlsSettings
from contract.v1 import envelope_pb2, signal_service_pb2

_T = TypeVar("_T")
# Codes after which the same request is sent to another replica.
FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class NoReplicaError(RuntimeError):
    """No node could answer for some partition within the call's deadline."""


class _Galaxy:
    __slots__ = ("codec", "partitions", "replicas", "topic")

    def __init__(self, codec: EntityCodec, partitions: int, topic: str) -> None:
        self.codec = codec
        self.partitions = partitions
        self.topic = topic
        # partition -> addresses of the nodes hosting it, serving ones first
        self.replicas: dict[int, list[str]] = defaultdict(list)


class _Router:
    """The map both clients route by: read from the nodes, refreshed, with failed nodes avoided
    for a while. DescribeCluster goes through blocking channels of its own."""

    def __init__(
        self,
        seeds: str | Sequence[str],
        *,
        timeout: float,
        tls: TlsSettings | None,
        token: str | None,
        refresh_seconds: float,
        avoid_seconds: float,
        max_cells_per_call: int,
    ) -> None:
        self.seeds = [seeds] if isinstance(seeds, str) else list(seeds)
        if not self.seeds:
            raise ValueError("a cluster client needs at least one seed address")
        self.timeout = timeout
        self.tls = tls
        self.token = token
        self.refresh_seconds = refresh_seconds
        self.avoid_seconds = avoid_seconds
        self.max_cells_per_call = max_cells_per_call
        self._lock = threading.Lock()
        self._nodes: dict[str, GssClient] = {}
        self._avoid: dict[str, float] = {}
        self._galaxies: dict[str, _Galaxy] = {}
        self._map: signal_service_pb2.ClusterMap | None = None
        self._map_at = 0.0
        # Spreads clients over replicas: each client prefers a different one.
        self._spread = random.randrange(1 << 16)

    def _node(self, address: str) -> GssClient:
        with self._lock:
            client = self._nodes.get(address)
            if client is None:
                client = self._nodes[address] = GssClient(
                    address,
                    timeout=self.timeout,
                    max_cells_per_call=self.max_cells_per_call,
                    channel=open_channel(address, self.tls, retry=False),
                    tls=self.tls,
                    token=self.token,
                )
            return client

    def refresh(self, *, timeout: float | None = None) -> signal_service_pb2.ClusterMap:
        """Read the map again, from the known nodes first, then the seeds."""
        known = [n.address for n in self._map.nodes if n.live] if self._map else []
        errors = []
        for address in dict.fromkeys([*known, *self.seeds]):
            try:
                cluster = self._node(address).cluster_map(timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                errors.append(f"{address}: {exc.code().name} {exc.details()}")
                continue
            self._adopt(cluster)
            return cluster
        raise NoReplicaError("no node answered DescribeCluster: " + "; ".join(errors))

    def _adopt(self, cluster: signal_service_pb2.ClusterMap) -> None:
        galaxies = {
            g.galaxy: _Galaxy(
                EntityCodec(KeyType(g.key_type), g.key_length), g.partitions, g.changelog_topic
            )
            for g in cluster.galaxies
        }
        nodes = [n for n in cluster.nodes if n.live]
        # Serving nodes first; among them, a rotation of their own per client.
        nodes.sort(key=lambda n: (not n.serving, (n.ordinal + self._spread) % max(1, len(nodes))))
        for node in nodes:
            for p in node.partitions:
                galaxy = galaxies.get(p.galaxy)
                if galaxy is not None:
                    galaxy.replicas[p.partition].append(node.address)
        with self._lock:
            self._map, self._map_at, self._galaxies = cluster, time.monotonic(), galaxies

    @property
    def cluster_map(self) -> signal_service_pb2.ClusterMap:
        """The map this client routes by (read at start and refreshed since)."""
        assert self._map is not None
        return self._map

    def galaxy(self, name: str) -> _Galaxy:
        if time.monotonic() - self._map_at > self.refresh_seconds:
            with contextlib.suppress(NoReplicaError):  # else keep routing by the map we have
                self.refresh()
        galaxy = self._galaxies.get(name)
        if galaxy is None:
            raise ValueError(f"galaxy {name!r} is not in the cluster map: {sorted(self._galaxies)}")
        return galaxy

    def candidates(self, galaxy: _Galaxy, partition: int, tried: set[str]) -> list[str]:
        now = time.monotonic()
        replicas = [a for a in galaxy.replicas.get(partition, ()) if a not in tried]
        fresh = [a for a in replicas if self._avoid.get(a, 0.0) <= now]
        return fresh or replicas

    def avoid(self, address: str) -> None:
        self._avoid[address] = time.monotonic() + self.avoid_seconds

    def close_map_channels(self) -> None:
        with self._lock:
            for client in self._nodes.values():
                client.close()
            self._nodes.clear()

    def reads(
        self,
        galaxy: str,
        entity_ids: Iterable[EntityId],
        min_positions: Sequence[envelope_pb2.ChangelogPosition],
    ) -> tuple[list[str], list[bytes], Callable[[list[int]], list[envelope_pb2.ChangelogPosition]]]:
        """A lookup's ids as text and as keys, and the min_positions each group of them needs
        (only those of its partitions: a node waits for nothing else)."""
        ids = [entity_text(e) for e in entity_ids]
        spec = self.galaxy(galaxy)
        keys = [spec.codec.to_bytes(e) for e in ids]
        wanted = [p for p in min_positions if p.topic == spec.topic]
        partitions = [partition_of(k, spec.partitions) for k in keys] if wanted else []

        def positions(indexes: list[int]) -> list[envelope_pb2.ChangelogPosition]:
            mine = {partitions[i] for i in indexes} if wanted else set()
            return [p for p in wanted if p.partition in mine]

        return ids, keys, positions

    def writes(
        self, batch: list[envelope_pb2.SignalRecord]
    ) -> list[tuple[str, list[int], list[bytes]]]:
        """A write's records per galaxy: (galaxy, their indexes in the batch, their keys)."""
        by_galaxy: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(batch):
            by_galaxy[record.galaxy].append(i)
        out = []
        for name, members in by_galaxy.items():
            codec = self.galaxy(name).codec
            out.append((name, members, [codec.to_bytes(batch[i].entity_id) for i in members]))
        return out


_Written = tuple[int, envelope_pb2.ChangelogPosition | None]


def _written(response: signal_service_pb2.PutSignalsResponse) -> list[_Written]:
    given = list(response.positions)
    return [(o, given[k] if k < len(given) else None) for k, o in enumerate(response.outcomes)]


def _merge(
    size: int, parts: Iterable[tuple[list[int], list[_Written]]]
) -> signal_service_pb2.PutSignalsResponse:
    outcomes = [0] * size
    positions: list[envelope_pb2.ChangelogPosition | None] = [None] * size
    for members, written in parts:
        for i, (outcome, position) in zip(members, written, strict=True):
            outcomes[i], positions[i] = outcome, position
    response = signal_service_pb2.PutSignalsResponse(outcomes=outcomes)  # type: ignore[arg-type]
    if all(p is not None for p in positions):
        response.positions.extend(p for p in positions if p is not None)
    return response


class _Scatter(Generic[_T]):
    """One routed call: which items still need an answer, which replicas failed which
    partition, and the one deadline. The clients run its rounds, blocking or asyncio."""

    def __init__(
        self, router: _Router, galaxy_name: str, keys: Sequence[bytes], timeout: float | None
    ) -> None:
        self.router = router
        self.galaxy_name = galaxy_name
        self.deadline = time.monotonic() + (timeout or router.timeout)
        self.galaxy = router.galaxy(galaxy_name)
        self.partitions = [partition_of(k, self.galaxy.partitions) for k in keys]
        self.results: list[_T | None] = [None] * len(keys)
        self.pending = list(range(len(keys)))
        self.tried: dict[int, set[str]] = defaultdict(set)  # partition -> nodes that failed it
        self.last_error: grpc.RpcError | None = None
        self.stale = False
        self._failed: list[int] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def plan(self) -> tuple[dict[str, list[int]], float] | None:
        """The next round: the items per node and each attempt's timeout; no groups when every
        known replica of some partition failed (then :meth:`reroute` after a pause); None when
        every item has its answer. Raises NoReplicaError once the deadline has passed."""
        self.pending = sorted(self.pending + self._failed)
        self._failed, self.stale = [], False
        if not self.pending:
            return None
        left = self.left()
        if left <= 0:
            raise NoReplicaError(
                f"{len(self.pending)} of {len(self.results)} items of galaxy "
                f"{self.galaxy_name} got no answer within the deadline "
                f"(last error: {_describe(self.last_error)})"
            )
        groups: dict[str, list[int]] = defaultdict(list)
        spare = True
        for i in self.pending:
            choices = self.router.candidates(
                self.galaxy, self.partitions[i], self.tried[self.partitions[i]]
            )
            if not choices:
                return {}, 0.0
            spare = spare and len(choices) > 1
            groups[choices[0]].append(i)
        self.pending = []
        return groups, left / 2 if spare else left

    def pause(self) -> float:
        return min(0.1, max(0.0, self.left()))

    def answered(self, indexes: list[int], rows: list[_T]) -> None:
        for i, row in zip(indexes, rows, strict=True):
            self.results[i] = row

    def failed(self, address: str, indexes: list[int], exc: grpc.RpcError) -> None:
        """A node's call failed: its items go to another replica, or ``exc`` is raised."""
        if exc.code() not in FAILOVER_CODES:
            raise exc
        self.last_error = exc
        self.stale = self.stale or exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        self.router.avoid(address)
        for i in indexes:
            self.tried[self.partitions[i]].add(address)
        self._failed.extend(indexes)

    def reroute(self, *, forget_failures: bool) -> None:
        """Read the map again (a stale map, or every known replica failed)."""
        with contextlib.suppress(NoReplicaError):
            self.router.refresh(timeout=max(0.05, min(1.0, self.left())))
        self.galaxy = self.router.galaxy(self.galaxy_name)
        if forget_failures:
            self.tried.clear()

    def result(self) -> list[_T]:
        return self.results  # type: ignore[return-value]


class ClusterClient(_Router):
    """A blocking client routing by partition over a cluster's nodes. Thread-safe."""

    def __init__(
        self,
        seeds: str | Sequence[str],
        *,
        timeout: float = 5.0,
        tls: TlsSettings | None = None,
        token: str | None = None,
        refresh_seconds: float = 10.0,
        avoid_seconds: float = 2.0,
        max_workers: int = 16,
        max_cells_per_call: int = 10_000,
    ) -> None:
        super().__init__(
            seeds,
            timeout=timeout,
            tls=tls,
            token=token,
            refresh_seconds=refresh_seconds,
            avoid_seconds=avoid_seconds,
            max_cells_per_call=max_cells_per_call,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gss-route")
        self.refresh()

    @classmethod
    def from_settings(
        cls, settings: ClientSettings, seeds: str | Sequence[str] | None = None, **kwargs: Any
    ) -> ClusterClient:
        """A client with the TLS and token of ``settings``; seeds default to ``settings.target``."""
        seeds = seeds or settings.target
        if not seeds:
            raise ValueError("no seed: pass one or set client.target (GSS_CLIENT__TARGET)")
        return cls(seeds, tls=settings.tls, token=settings_token(settings), **kwargs)

    def _scatter(
        self,
        galaxy_name: str,
        keys: Sequence[bytes],
        call: Callable[[GssClient, list[int], float], list[_T]],
        timeout: float | None,
    ) -> list[_T]:
        """Run ``call(node, indexes, attempt_timeout)`` for the items at ``indexes``, grouped by
        the node hosting their partition, in parallel; failed groups go to other replicas."""
        scatter: _Scatter[_T] = _Scatter(self, galaxy_name, keys, timeout)
        while (planned := scatter.plan()) is not None:
            groups, attempt = planned
            if not groups:
                time.sleep(scatter.pause())
                scatter.reroute(forget_failures=True)
                continue
            jobs = [
                (address, indexes, self._run(call, address, indexes, attempt, len(groups) > 1))
                for address, indexes in groups.items()
            ]
            for address, indexes, outcome in jobs:
                try:
                    scatter.answered(indexes, outcome())
                except grpc.RpcError as exc:
                    scatter.failed(address, indexes, exc)
            if scatter.stale:
                scatter.reroute(forget_failures=False)
        return scatter.result()

    def _run(
        self,
        call: Callable[[GssClient, list[int], float], list[_T]],
        address: str,
        indexes: list[int],
        attempt: float,
        parallel: bool,
    ) -> Callable[[], list[_T]]:
        node = self._node(address)
        if not parallel:  # one node: no thread hand-off
            return lambda: call(node, indexes, attempt)
        return self._pool.submit(call, node, indexes, attempt).result

    def get(
        self,
        galaxy: str,
        entity_ids: Iterable[EntityId],
        signals: Sequence[str],
        *,
        timeout: float | None = None,
        min_positions: Sequence[envelope_pb2.ChangelogPosition] = (),
    ) -> list[EntityResult]:
        """Values of ``signals`` for ``entity_ids``, one EntityResult per id in request order,
        each from a node hosting the id's partition. ``min_positions``: only from replicas
        that have applied these changelog positions (read after event)."""
        ids, keys, positions = self.reads(galaxy, entity_ids, min_positions)

        def call(node: GssClient, indexes: list[int], attempt: float) -> list[EntityResult]:
            return node.get(
                galaxy,
                [ids[i] for i in indexes],
                signals,
                timeout=attempt,
                min_positions=positions(indexes),
            )

        return self._scatter(galaxy, keys, call, timeout)

    def put(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> signal_service_pb2.PutSignalsResponse:
        """Write records, each through a node hosting its partition; the response has an
        outcome and (with a broker) a changelog position per record, in request order —
        the positions to pass as ``min_positions`` to read your writes."""
        batch = list(records)
        parts = []
        for galaxy_name, members, keys in self.writes(batch):

            def call(
                node: GssClient, indexes: list[int], attempt: float, members: list[int] = members
            ) -> list[_Written]:
                return _written(
                    node.put_response(
                        [batch[members[i]] for i in indexes],
                        wait_readable=wait_readable,
                        timeout=attempt,
                    )
                )

            parts.append((members, self._scatter(galaxy_name, keys, call, timeout)))
        return _merge(len(batch), parts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.close_map_channels()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClusterClient(_Router):
    """The asyncio routing client: one task per node of a call, the same routing and failover
    as :class:`ClusterClient`. Build it inside the event loop it is used on; the map is read
    on first use (or ``await refresh_async()``)."""

    def __init__(
        self,
        seeds: str | Sequence[str],
        *,
        timeout: float = 5.0,
        tls: TlsSettings | None = None,
        token: str | None = None,
        refresh_seconds: float = 10.0,
        avoid_seconds: float = 2.0,
        max_cells_per_call: int = 10_000,
    ) -> None:
        super().__init__(
            seeds,
            timeout=timeout,
            tls=tls,
            token=token,
            refresh_seconds=refresh_seconds,
            avoid_seconds=avoid_seconds,
            max_cells_per_call=max_cells_per_call,
        )
        self._async_nodes: dict[str, AsyncGssClient] = {}

    async def refresh_async(self) -> signal_service_pb2.ClusterMap:
        """Read the map (in a worker thread: DescribeCluster uses blocking channels)."""
        return await asyncio.to_thread(self.refresh)

    def _async_node(self, address: str) -> AsyncGssClient:
        client = self._async_nodes.get(address)
        if client is None:
            client = self._async_nodes[address] = AsyncGssClient(
                address,
                timeout=self.timeout,
                max_cells_per_call=self.max_cells_per_call,
                channel=open_aio_channel(address, self.tls, retry=False),
                tls=self.tls,
                token=self.token,
            )
        return client

    async def _scatter(
        self,
        galaxy_name: str,
        keys: Sequence[bytes],
        call: Callable[[AsyncGssClient, list[int], float], Awaitable[list[_T]]],
        timeout: float | None,
    ) -> list[_T]:
        if self._map is None:
            await self.refresh_async()
        scatter: _Scatter[_T] = await asyncio.to_thread(_Scatter, self, galaxy_name, keys, timeout)
        while (planned := scatter.plan()) is not None:
            groups, attempt = planned
            if not groups:
                await asyncio.sleep(scatter.pause())
                await asyncio.to_thread(scatter.reroute, forget_failures=True)
                continue
            outcomes = await asyncio.gather(
                *(call(self._async_node(a), indexes, attempt) for a, indexes in groups.items()),
                return_exceptions=True,
            )
            for (address, indexes), outcome in zip(groups.items(), outcomes, strict=True):
                if isinstance(outcome, grpc.RpcError):
                    scatter.failed(address, indexes, outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    scatter.answered(indexes, outcome)
            if scatter.stale:
                await asyncio.to_thread(scatter.reroute, forget_failures=False)
        return scatter.result()

    async def get(
        self,
        galaxy: str,
        entity_ids: Iterable[EntityId],
        signals: Sequence[str],
        *,
        timeout: float | None = None,
        min_positions: Sequence[envelope_pb2.ChangelogPosition] = (),
    ) -> list[EntityResult]:
        """As :meth:`ClusterClient.get`."""
        if self._map is None:
            await self.refresh_async()
        ids, keys, positions = self.reads(galaxy, entity_ids, min_positions)

        async def call(
            node: AsyncGssClient, indexes: list[int], attempt: float
        ) -> list[EntityResult]:
            return await node.get(
                galaxy,
                [ids[i] for i in indexes],
                signals,
                timeout=attempt,
                min_positions=positions(indexes),
            )

        return await self._scatter(galaxy, keys, call, timeout)

    async def put(
        self,
        records: Iterable[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout: float | None = None,
    ) -> signal_service_pb2.PutSignalsResponse:
        """As :meth:`ClusterClient.put`."""
        if self._map is None:
            await self.refresh_async()
        batch = list(records)
        parts = []
        for galaxy_name, members, keys in self.writes(batch):

            async def call(
                node: AsyncGssClient,
                indexes: list[int],
                attempt: float,
                members: list[int] = members,
            ) -> list[_Written]:
                return _written(
                    await node.put_response(
                        [batch[members[i]] for i in indexes],
                        wait_readable=wait_readable,
                        timeout=attempt,
                    )
                )

            parts.append((members, await self._scatter(galaxy_name, keys, call, timeout)))
        return _merge(len(batch), parts)

    async def close(self) -> None:
        for client in self._async_nodes.values():
            await client.close()
        self._async_nodes.clear()
        await asyncio.to_thread(self.close_map_channels)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _describe(error: grpc.RpcError | None) -> str:
    if error is None:
        return "none"
    return f"{error.code().name}: {error.details()}"
