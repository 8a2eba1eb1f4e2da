#!/usr/bin/env bash
# Wheels of what the GPU machine lacks for benchmarks/gpu_grpo.py, for its CPython 3.12 on manylinux x86_64.
# That machine has torch 2.11, transformers, peft, accelerate, pyarrow, pandas, huggingface-hub, xxhash, ... but no
# trl or datasets, and no network. We fetch trl and datasets and the two needs of datasets it lacks (dill,
# multiprocess), plus fsspec in case its own is newer than datasets accepts; gpu_grpo.py --wheels installs only what
# the machine does not already satisfy. datasets is pinned to 4.7.0 (needs pyarrow >= 21) rather than the project's
# 5.2.0 (pyarrow >= 24) so that the machine's own pyarrow serves: carrying pyarrow would cost 52 MiB.
#   bash benchmarks/prepare_gpu_wheels.sh [DEST]     (default benchmarks/wheels, ignored by git; ~2 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-benchmarks/wheels}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
rm -rf "$DEST"
mkdir -p "$DEST"
cat > "$DEST/requirements.txt" <<'REQ'
# what benchmarks/gpu_grpo.py needs beyond the GPU machine's own packages (checked there, installed only if unmet)
trl==1.16.0
datasets==4.7.0
dill>=0.3.0,<0.4.1
multiprocess<0.70.19
fsspec>=2023.1.0,<=2026.2.0
REQ
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" -r "$DEST/requirements.txt"
size=$(du -sb "$DEST" | cut -f1)
ls -l "$DEST"
echo "wheels in $DEST: $(( size / 1024 )) KiB"
if [ "$size" -gt $(( 60 * 1024 * 1024 )) ]; then echo "too large to travel with the working tree (64 MiB in all)" >&2; exit 1; fi
