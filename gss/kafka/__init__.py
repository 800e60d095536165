"""GSS on Kafka: the changelog writer and ingester, the transactional outbox and its
publisher, and the WatchSignals stream.

Start here: :class:`gss.kafka.events_runtime.EventsRuntime` wires the parts for one GSS node.
Topic names and creation, headers and client options are the contract's
(:mod:`contract.topics`, :mod:`contract.headers`, :mod:`contract.kafka`); a broker for one
machine is :class:`gss.local.broker.LocalBroker`. docs/events.md explains topics, keys,
headers and guarantees.
"""
