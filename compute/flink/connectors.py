"""GSS's own Flink connector classes (compute/flink/java/gss/flink/*.java), built into a jar.

PyFlink 2.3 hands a job Kafka record values only, and cannot make a HybridSource whose
archive leg and Kafka leg yield the same element type, without a little Java
(docs/history.md, "Unified source"): a Kafka deserializer and an archive file format that both
yield ``Row(partition, offset, timestamp_ms, key, value)`` (so a dead letter names where its
input was read), and a wrapper that rate-limits a source's readers. They are compiled here with ``javac`` against
PyFlink's own jars and the Kafka connector jars into ``<jars_dir>/gss-flink-connectors.jar``,
again whenever the sources (or the PyFlink version) change.

    python -m compute.flink.connectors            # build if stale, print the jar's path
    python -m compute.flink.connectors --dir DIR  # into DIR (the image: /opt/flink/lib)

Every job needs the jar, so building it needs a JDK once (scripts/bootstrap.sh installs one;
the Flink image builds it into /opt/flink/lib).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import structlog

from compute.flink.jars import default_dir, ensure_jars
from contract.errors import UnavailableError

log = structlog.get_logger(__name__)

JAR_NAME = "gss-flink-connectors.jar"
SOURCES_DIR = Path(__file__).resolve().parent / "java"
JDK_PACKAGE = "openjdk-17-jdk-headless"
_HASH_ENTRY = "META-INF/gss-sources.sha256"


def _sources() -> list[Path]:
    return sorted(SOURCES_DIR.rglob("*.java"))


def _pyflink_dir() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def sources_hash() -> str:
    """What the jar is built from: the Java sources and the PyFlink version they compile against."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"apache-flink=={version('apache-flink')}\n".encode())
    for path in _sources():
        digest.update(path.relative_to(SOURCES_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _built_hash(jar: Path) -> str | None:
    try:
        with zipfile.ZipFile(jar) as zf:
            return zf.read(_HASH_ENTRY).decode().strip()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def find_javac() -> str:
    javac = shutil.which("javac")
    if javac is None:
        raise UnavailableError(
            "reading history in the compute job needs GSS's Flink connector jar, compiled with "
            f"javac, which is not installed: install a JDK ({JDK_PACKAGE} on Debian/Ubuntu; "
            "scripts/bootstrap.sh does), or build the jar elsewhere with "
            "`python -m compute.flink.connectors --dir <compute.jars_dir>`"
        )
    return javac


def ensure_connectors(directory: Path | None = None) -> Path:
    """``<directory>/gss-flink-connectors.jar``, compiled now if missing or stale."""
    directory = directory or default_dir()
    jar = directory / JAR_NAME
    want = sources_hash()
    if jar.is_file() and _built_hash(jar) == want:
        return jar
    javac = find_javac()
    pyflink = _pyflink_dir()
    classpath = [
        *sorted((pyflink / "lib").glob("*.jar")),
        *sorted((pyflink / "opt").glob("*.jar")),
        *ensure_jars(directory),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    log.info("flink_connectors_build", jar=str(jar), sources=len(_sources()))
    with tempfile.TemporaryDirectory(prefix="gss-flink-connectors-") as tmp:
        classes = Path(tmp) / "classes"
        result = subprocess.run(
            [
                javac,
                "--release",
                "11",
                "-nowarn",
                "-encoding",
                "UTF-8",
                "-cp",
                ":".join(str(p) for p in classpath),
                "-d",
                str(classes),
                *(str(p) for p in _sources()),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"javac failed building {JAR_NAME}:\n{result.stderr.strip()}")
        partial = directory / (JAR_NAME + ".part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
            zf.writestr(_HASH_ENTRY, want + "\n")
            for path in sorted(classes.rglob("*.class")):
                zf.write(path, path.relative_to(classes).as_posix())
        partial.replace(jar)  # atomic: a half-written jar is never used
    return jar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="directory for the jar")
    args = parser.parse_args(argv)
    print(ensure_connectors(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
