#!/usr/bin/env bash
# System packages the tests need, from Debian: chromium for the browser tests (Playwright for Python
# drives /usr/bin/chromium; it never downloads a browser of its own). Safe to run again: it does
# nothing when chromium is already there. Run by the README's test command and by .ci/run.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing chromium (Debian package) for the browser tests..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
