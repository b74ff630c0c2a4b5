#!/usr/bin/env bash
# Stop early, in one line, when the disk cannot hold the install, rather than minutes into pip
# with "No space left on device". Usage: scripts/check-disk.sh GIB DIR
set -u
need_gib=$1; dir=$2
free_kib=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print $4}')
[ -n "$free_kib" ] || exit 0
if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
  echo "error: $dir has $((free_kib / 1024 / 1024)) GiB free; the virtual environment (PyTorch and its CUDA libraries) needs about $need_gib GiB: free some space or set VENV=/a/bigger/disk/.venv" >&2
  exit 2
fi
