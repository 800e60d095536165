"""Local stand-ins for one machine: never imported by what production runs.

The in-memory Kafka-protocol broker launcher, the Triton server launcher over the model
repository, the synthetic content generator, and the ``gss run`` stack that wires them to the
real server and Flink job. Production points GSS at Kafka, Triton and a Flink cluster instead.
"""
