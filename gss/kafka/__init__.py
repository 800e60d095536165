"""GSS on Kafka: the changelog ingester, the transactional outbox and its publisher, the
WatchSignals stream, topic management and a local Kafka-protocol broker for development.

Start here: :class:`gss.kafka.components.EventsRuntime` wires the parts for one GSS node;
:class:`gss.local.broker.LocalBroker` runs a broker on one machine. docs/events.md explains
topics, keys, headers and guarantees.
"""
