"""The Flink Kafka connector jars, fetched once from PyPI.

The connector is not in the apache-flink wheels. PyPI's ``shigawire-apache-flink-libraries``
wheel carries ``flink-connector-kafka.jar`` (4.0.1-2.0) and ``kafka-clients.jar`` next to
Flink 2.0 core jars; installing it would put those core jars beside PyFlink 2.3's, so only
the two connector jars are taken out of it (seen working on apache-flink 2.3.0).

    python -m compute.flink.jars            # download if missing, print the jar paths
    python -m compute.flink.jars --dir DIR  # into DIR instead of the cache

``gss compute jars`` fetches into ``compute.jars_dir`` (``GSS_COMPUTE__JARS_DIR``); both
default to ``~/.cache/gss/flink-jars``. A remote cluster or a container image ships the same two jars
(deploy/flink/Dockerfile copies them into /opt/flink/lib).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

WHEEL_REQUIREMENT = "shigawire-apache-flink-libraries==2.0.0.post1"
JAR_NAMES = ("flink-connector-kafka.jar", "kafka-clients.jar")
_MEMBER_PREFIX = "pyflink/lib/"


def default_dir() -> Path:
    """Where the jars are kept unless settings (compute.jars_dir) say otherwise."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gss" / "flink-jars"


def jar_paths(directory: Path | None = None) -> list[Path]:
    """The connector jars in ``directory``; raises if they are not there yet."""
    directory = directory or default_dir()
    paths = [directory / name for name in JAR_NAMES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Flink Kafka connector jars missing: {', '.join(map(str, missing))}; "
            "run `python -m compute.flink.jars` (or `make env`) to fetch them from PyPI"
        )
    return paths


def ensure_jars(directory: Path | None = None) -> list[Path]:
    """Download the wheel (no dependencies) and extract the two jars, unless already present."""
    directory = directory or default_dir()
    try:
        return jar_paths(directory)
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gss-flink-jars-") as tmp:
        log.info("flink_jars_download", requirement=WHEEL_REQUIREMENT, jars_dir=str(directory))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "--dest",
                tmp,
                WHEEL_REQUIREMENT,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(
                f"expected one wheel from pip download of {WHEEL_REQUIREMENT}, got {wheels}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in JAR_NAMES:
                partial = directory / (name + ".part")
                with wheel.open(_MEMBER_PREFIX + name) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(directory / name)  # atomic: a half-written jar is never used
    return jar_paths(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="directory for the jars")
    args = parser.parse_args(argv)
    for path in ensure_jars(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
