"""Everything Kafka-side one GSS node runs, wired together.

    runtime = EventsRuntime(settings, registry, store).start()
    ...  # serve: runtime.writer.put(...) for PutSignals, runtime.watch.stream(...) for WatchSignals
    runtime.stop()

``start`` creates missing topics (``kafka.create_topics``), starts the outbox publisher and
the changelog ingester, and waits until the ingester has its partitions. ``stop`` delivers
queued PutSignals records, stops ingesting, and gives the publisher a last chance to send
what is in flight; anything unsent stays in the outbox for the next start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

import structlog

from contract.errors import UnavailableError
from contract.registry import Registry
from contract.settings import Settings
from contract.topics import TopicKind, ensure_topics, topic_name
from gss.kafka.changelog import ChangelogWriter
from gss.kafka.election import PublisherElection
from gss.kafka.ingester import Ingester
from gss.kafka.outbox import Outbox
from gss.kafka.publisher import OutboxPublisher
from gss.kafka.watch import WatchSource
from store.db import SignalStore

log = structlog.get_logger(__name__)


class EventsRuntime:
    """The ingester, the outbox publisher, the changelog writer and the watch source of a node."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: SignalStore,
        *,
        hosted: Mapping[str, Sequence[int]] | None = None,
        ordinal: int = 0,
    ) -> None:
        """``hosted``: the changelog partitions this node ingests, per galaxy (None: all);
        ``ordinal``: this node's (docs/cluster.md). With ``cluster.replicas`` above 1 the
        replicas of each partition elect its outbox publisher (gss.kafka.election)."""
        if not settings.kafka.bootstrap_servers:
            raise UnavailableError(
                "no Kafka broker configured: set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS) "
                "or start a local one with `gss broker`"
            )
        self.kafka = settings.kafka
        self.registry = registry
        self.store = store
        self.outbox = Outbox(store, registry, self.kafka)
        self.ingester = Ingester(store, registry, self.kafka, self.outbox, hosted=hosted)
        self.election: PublisherElection | None = None
        if settings.cluster.replicas > 1:
            partitions = hosted or {g.name: list(range(g.partitions)) for g in registry}
            self.election = PublisherElection(
                self.kafka,
                settings.cluster,
                ordinal,
                {
                    topic_name(self.kafka, TopicKind.CHANGELOG, galaxy): parts
                    for galaxy, parts in partitions.items()
                },
            )
        self.publisher = OutboxPublisher(self.outbox, self.kafka, registry, self.election)
        self.watch = WatchSource(self.kafka, registry)
        self._writer: ChangelogWriter | None = None

    @property
    def writer(self) -> ChangelogWriter:
        """PutSignals' path to the changelog (after :meth:`start`)."""
        if self._writer is None:
            raise RuntimeError("EventsRuntime.start() has not been called")
        return self._writer

    def start(self, *, ready_timeout_seconds: float = 10.0) -> EventsRuntime:
        """Start the publisher, the ingester and the writer. A broker that cannot be reached
        does not stop the start (the node still serves what its store holds; every part keeps
        retrying): it is logged, and ``ingester.ready`` stays unset until the broker answers."""
        if self.kafka.create_topics:
            try:
                ensure_topics(self.kafka, self.registry, timeout_seconds=5.0)
            except UnavailableError as exc:
                log.warning("topics_unavailable", error=str(exc), action="the ingester retries")
        if self.election is not None:
            self.election.start()
        self.publisher.start()
        self.ingester.start()
        self._writer = ChangelogWriter(
            self.kafka, self.registry, store=self.store, ingester=self.ingester
        )
        if not self.ingester.ready.wait(ready_timeout_seconds):
            log.warning(
                "changelog_ingester_not_ready",
                bootstrap_servers=self.kafka.bootstrap_servers,
                waited_seconds=ready_timeout_seconds,
                action="serving the store as it is; the ingester keeps retrying",
            )
        log.info(
            "events_runtime_started",
            bootstrap_servers=self.kafka.bootstrap_servers,
            topics=self.ingester.topics,
            outbox_entries=self.outbox.depth,
        )
        return self

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop everything; safe to call twice."""
        self.watch.close()
        if self._writer is not None:
            self._writer.close(timeout_seconds / 2)
            self._writer = None
        self.ingester.stop(timeout_seconds)
        self.publisher.stop(timeout_seconds / 2)
        if self.election is not None:
            self.election.stop(timeout_seconds / 2)
        log.info("events_runtime_stopped", outbox_entries=self.outbox.depth)

    def __enter__(self) -> EventsRuntime:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
