#!/usr/bin/env bash
# Make Fashion-MNIST available: the usual search and download (`fashionclf data`), then,
# on Debian/Ubuntu where we may (root, or sudo without a password), Debian's package.
# Prints the data summary, or fashionclf's one-line error with the fixes (exit 2).
set -u
FASHIONCLF=${1:-.venv/bin/fashionclf}
if "$FASHIONCLF" data >/dev/null 2>&1; then
  exec "$FASHIONCLF" data
fi
echo "Fashion-MNIST not found" >&2
bash "$(dirname "$0")/apt-install.sh" dataset-fashion-mnist
exec "$FASHIONCLF" data
