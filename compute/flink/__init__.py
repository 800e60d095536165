"""The compute job on Flink: one PyFlink DataStream job built from the registered plugins.

- :mod:`compute.flink.run`: :class:`~compute.flink.run.ComputeJob` (start/stop in-process),
  :func:`~compute.flink.run.execute` (blocking, for ``flink run``);
- :mod:`compute.flink.job`: the pipeline, sources, sink and Flink configuration;
- :mod:`compute.flink.operators`: the Python functions the job runs;
- :mod:`compute.flink.jars`: the Kafka connector jars, fetched from PyPI.
"""
