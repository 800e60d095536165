#!/usr/bin/env bash
# Make this checkout runnable: Java (for Flink), a venv with GSS and its dev tools, and the
# Flink Kafka connector jars. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "bootstrap: installing Java 17 (PyFlink needs a JVM)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
if ! command -v javac >/dev/null 2>&1; then
  # GSS's Flink connector jar (compute/flink/java: reading history in the compute job) is
  # compiled here; the live-only job needs only the JRE.
  echo "bootstrap: installing a JDK 17 (javac, for GSS's Flink connector jar)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jdk-headless >/dev/null
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "bootstrap: GSS needs Python 3.11 (PyFlink 2.3 and Triton's Python backend stubs); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.gss-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing GSS and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The Flink Kafka connector is not in the apache-flink wheels; fetch it from PyPI once, into
# the settings' compute.jars_dir (GSS_COMPUTE__JARS_DIR), where the job looks for it; and
# build GSS's own connector jar there (again when compute/flink/java changes).
.venv/bin/gss compute jars >/dev/null
