#!/bin/sh
# Installs Debian's chromium for the browser tests (`pytest -m browser`), only when /usr/bin/chromium is missing.
# Needs root (or sudo) and the Debian package archive; nothing else is downloaded.
set -eu
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
