#!/usr/bin/env bash
# Scan throughput on one CUDA GPU (target: grading >= 1 GP of tissue per second).
# Builds the benchmark slide if needed, then times the model alone and a whole scan with
# --device cuda; bounded to under 5 minutes. Exit status: 0 target met, 1 below target,
# 2 no usable GPU (or ONNX Runtime without its CUDA provider), 124 over time.
#
# Usage: bench/gpu_check.sh [--size 65536x49152] [--model PATH] [--block 32] [--json FILE]
# Grading runs on the GPU through ONNX Runtime's CUDA execution provider, which the
# onnxruntime-gpu package brings (in place of onnxruntime; no PyTorch needed), e.g.
#   .venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or finds no device)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c 'import sys, onnxruntime as o
sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 1)'; then
  echo "gpu_check: ONNX Runtime in $PY has no CUDA provider ($("$PY" -c \
    'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'))" >&2
  echo "gpu_check: install onnxruntime-gpu (see the comment at the top of $0)" >&2
  exit 2
fi
exec timeout --signal=INT --kill-after=10 290 "$PY" bench/gpu_check.py "$@"
