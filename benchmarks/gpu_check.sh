#!/usr/bin/env bash
# One-go device check (overhead ratios, sweep cost, bf16 noisy-QAT of ResNet-18, noise
# statistics under autocast), printed as one table. Full sizes on a GPU (a few minutes);
# `--device cpu` runs tiny sizes end to end.
#   bash benchmarks/gpu_check.sh [--device cpu|cuda] [--data DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
