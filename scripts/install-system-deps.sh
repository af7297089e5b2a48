#!/usr/bin/env bash
# Installs the Debian packages the tests need as real peers, only those that are missing.
set -euo pipefail
need=()
for pkg in curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The client's notifier tests: a private D-Bus bus, dunst under Xvfb; systemd-analyze checks its unit.
for pkg in dbus-daemon dunst xvfb systemd; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Syncthing projects are tested against a real Syncthing (two instances on loopback).
for pkg in syncthing; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The dashboard: end-to-end tests in Debian's Chromium (driven by Playwright), JavaScript unit tests in Node.
for pkg in chromium nodejs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The mount (pyfuse3, built from source by pip: no wheel) and its tests: FUSE 3 and what the build needs.
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}"
fi
