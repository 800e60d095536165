"""The contract layer: what every part of GSS agrees on, and nothing else.

Generated wire code (``contract.v1``, from proto/), errors, the registry model, entity-id
codecs and store-key suffixes, topic and header names, Kafka client options the guarantees
depend on, the dead-letter format, the snapshot layout and Thrift IDL, the settings shape and
the logging set-up, and the one way GSS starts child processes that never outlive it
(``processes``). Every other package (store, gss, compute, clients) may import it; it
imports none of them (docs/architecture.md, checked by import-linter in ``make test``).
"""
