"""The topic archive: Kafka topics copied into immutable gzip JSON-lines files (docs/history.md).

:mod:`gss.archive.layout` names the files and encodes records, :mod:`gss.archive.storage`
writes them durably to a local directory or an object store, :mod:`gss.archive.commits` keeps
the commit markers that say which offsets are archived, :mod:`gss.archive.archiver` is the
consumer loop, :mod:`gss.archive.reader` reads committed ranges back and
:mod:`gss.archive.status` summarises them.
"""
