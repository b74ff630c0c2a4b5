#!/usr/bin/env bash
# Install Debian packages where we may (root, or sudo without a password); quiet, and never
# fatal: the caller checks for what it needed. Usage: scripts/apt-install.sh PACKAGE...
set -u
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: install $* yourself" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "not root and no password-less sudo: install $* yourself" >&2; exit 1
fi
echo "installing Debian's $* ..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 ||
  { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; } ||
  { echo "apt-get could not install $*" >&2; exit 1; }
