#!/usr/bin/env bash
# Make Fashion-MNIST available: the usual search and download (`fashionclf data`), then,
# on Debian/Ubuntu where we may (root, or sudo without a password), Debian's package.
# Prints the data summary, or fashionclf's one-line error with the fixes (exit 2).
set -u
FASHIONCLF=${1:-.venv/bin/fashionclf}
if "$FASHIONCLF" data >/dev/null 2>&1; then
  exec "$FASHIONCLF" data
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="no"; fi
  if [ "$SUDO" != "no" ]; then
    echo "Fashion-MNIST not found; installing Debian's package dataset-fashion-mnist ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } ||
      echo "apt-get could not install dataset-fashion-mnist" >&2
  fi
fi
exec "$FASHIONCLF" data
