#!/usr/bin/env bash
# Fetch the wheels that benchmarks/device_check.sh installs on a GPU machine (which reaches no
# package index) into .whl/, ignored by git and carried with the run: the packages ctseg and
# the checks import beyond the GPU image's (PyTorch, numpy, scipy, scikit-image, pandas,
# matplotlib, pytest), at the versions installed here. All are pure Python, so they fit any
# Python and platform the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
  "nibabel==$(version nibabel)" "platformdirs==$(version platformdirs)" \
  "dynamic-network-architectures==$(version dynamic-network-architectures)" \
  "einops==$(version einops)" "monai==$(version monai)"
ls .whl
