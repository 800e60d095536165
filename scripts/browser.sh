#!/usr/bin/env bash
# The test suite's browser (the explorer page's test drives it): Debian's chromium and its
# WebDriver, installed once when missing. `make test` runs this; `make run` does not need it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "browser: installing Debian's chromium and chromium-driver (for the explorer page test)" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
