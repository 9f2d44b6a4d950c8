#!/usr/bin/env bash
# Scan throughput on one CUDA GPU (target: grading >= 1 GP of tissue per second).
# Builds the benchmark slide if needed, then times the model alone and a whole scan with
# --device cuda; bounded to under 5 minutes. Exit status: 0 target met, 1 below target,
# 2 no usable GPU (or a CPU-only PyTorch), 124 over time.
#
# Usage: bench/gpu_check.sh [--size 65536x49152] [--model PATH] [--block 32] [--json FILE]
# A CUDA build of PyTorch is needed in the environment, e.g.
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or finds no device)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: PyTorch in $PY sees no CUDA device ($("$PY" -c \
    'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'))" >&2
  echo "gpu_check: install a CUDA build of torch (see the comment at the top of $0)" >&2
  exit 2
fi
exec timeout --signal=INT --kill-after=10 290 "$PY" bench/gpu_check.py "$@"
