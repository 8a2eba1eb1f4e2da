#!/usr/bin/env bash
# Headless Chromium + chromedriver for tests/test_docs.py (Debian packages; no browser download).
# Idempotent: installs only when /usr/bin/chromium or /usr/bin/chromedriver is missing. Needs root (or sudo).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null | head -1) already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -q chromium chromium-driver
/usr/bin/chromium --version 2>/dev/null | head -1
