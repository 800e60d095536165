"""The chaos suite: the whole local stack under steady load, faults injected from a seeded
schedule, oracles checked after the run (docs/reliability.md).

    .venv/bin/python -m tests.chaos --faults 60 --seed 7        # what `make chaos` runs
    .venv/bin/python -m tests.chaos --faults 6 --kinds gss_server,broker,subscriber --no-models

:mod:`tests.chaos.stack` starts and kills the parts, :mod:`tests.chaos.load` drives them (the
PutSignals writer keeping the expected state, the content producer, the subscriber),
:mod:`tests.chaos.oracles` checks the outcome, :mod:`tests.chaos.run` ties them together and
writes the summary into bench/report.json under ``reliability``. A test tool, not product
code: it imports from every layer.
"""
