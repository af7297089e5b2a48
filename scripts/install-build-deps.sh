#!/usr/bin/env bash
# Installs the Debian packages `pip install -e '.[test,dev,bench]'` needs to build what has no wheel, only
# those that are missing: pyfuse3 (the `mount` extra, which `test` pulls in) builds against FUSE 3.
set -euo pipefail
need=()
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}"
fi
