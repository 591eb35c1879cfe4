#!/usr/bin/env bash
# The device check in one call: real CIFAR-10 from carried parts, the GPU test set, gpu_check.
# Logs go to $OUT (or ./device_out). Prepare the data here first (benchmarks/device_data.py):
#   python benchmarks/device_data.py prepare --data ../shared/data/cifar10 --out .devdata
# and, for gpu_check's Brevitas column, its wheels (the device has no package index):
#   pip download brevitas dependencies unfoldNd --no-deps -d .devdata/subset/wheels
# then, on the device machine, carrying .devdata/subset (one call; or the full parts, see there):
#   bash benchmarks/device_run.sh [PARTS...]        # default parts: .devdata/subset
# Each step has its own time limit, so one that hangs leaves the others their time.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(.devdata/subset)
data=.devdata/cifar10
[ "${parts[*]}" = ".devdata/subset" ] && data=.devdata/cifar10-subset
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader 2>&1
  "$py" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/device.txt"
for part in "${parts[@]}"; do  # carried wheels (Brevitas): installed without an index
  if compgen -G "$part/wheels/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps "$part"/wheels/*.whl 2>&1 | tee -a "$out/device.txt"
  fi
done
"$py" benchmarks/device_data.py assemble --parts "${parts[@]}" --out "$data" 2>&1 | tee "$out/data.log"
export FXHARDEN_DATA="$PWD/$data"
echo "== GPU test set ($(( $(date +%s) - t0 )) s)"
timeout "${TESTS_TIMEOUT:-300}" "$py" -m pytest -m gpu -q -p no:cacheprovider -n "${WORKERS:-4}" tests/gpu \
    --durations=10 -rfE 2>&1 | tee "$out/gpu_tests.log"
echo "== gpu_check ($(( $(date +%s) - t0 )) s)"
timeout "${CHECK_TIMEOUT:-240}" "$py" benchmarks/gpu_check.py --data "$FXHARDEN_DATA" 2>&1 | tee "$out/gpu_check.log"
echo "== done in $(( $(date +%s) - t0 )) s"
