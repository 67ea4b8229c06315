#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, with the python3 already there (no venv, no downloads), build the
# extension, run the whole test suite on the GPU, run the benchmarks, and write everything to
# benchmarks/results/<device>.{txt,json}.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-8} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0  # Triton on the GPU, not its CPU interpreter
device=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "")')
if [ -z "$device" ]; then echo "gpu-check: no CUDA GPU visible to $PYTHON" >&2; exit 1; fi
out=benchmarks/results/$device
mkdir -p benchmarks/results
{
  echo "# fastseg gpu-check on $device, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
  "$PYTHON" setup.py --quiet build_ext --inplace || exit 1
  "$PYTHON" -m fastseg info
  "$PYTHON" -m pytest -q -p no:cacheprovider tests; echo "pytest exit: $?"
  "$PYTHON" -m fastseg bench --devices cuda --backends all --json "$out.json"
} 2>&1 | tee "$out.txt"
