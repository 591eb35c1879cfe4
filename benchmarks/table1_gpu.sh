#!/usr/bin/env bash
# Table I on a device machine: all 24 curves of recipes/table1_vgg11_resnet18.toml under its
# [budget.gpu], results back through $OUT without checkpoints.
#
# Here, once:  python benchmarks/device_data.py prepare --data ../shared/data/cifar10 --out .devdata
# There, three calls back to back (the machine keeps carried paths only while warm, ~30 s):
#   call 1, carrying .devdata/part-01:  python benchmarks/device_data.py check --data .devdata/part-01
#   call 2, carrying .devdata/part-02:  python benchmarks/device_data.py check --data .devdata/part-02
#   call 3, carrying .devdata/part-03:  bash benchmarks/table1_gpu.sh .devdata/part-01 .devdata/part-02 .devdata/part-03
# Settings through the environment: JOBS (cells at once, default 4), BUDGET (default gpu),
# RECIPE, EXTRA (more reproduce options, e.g. --synthetic for a smoke run without data).
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
recipe="${RECIPE:-recipes/table1_vgg11_resnet18.toml}"
run="${RUN_DIR:-runs/table1_gpu}"
data_opt=()
if [ $# -gt 0 ]; then
    "$py" benchmarks/device_data.py assemble --parts "$@" --out .devdata/cifar10 2>&1 | tee "$out/data.log" || exit 1
    data_opt=(--data .devdata/cifar10)
fi
device=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
t0=$(date +%s)
"$py" -m fxharden.cli reproduce "$recipe" --budget "${BUDGET:-gpu}" --device "$device" --jobs "${JOBS:-4}" \
    --out "$run" --no-progress "${data_opt[@]}" ${EXTRA:-} 2>&1 | tee "$out/reproduce.log"
rc=${PIPESTATUS[0]}
echo "reproduce exit $rc after $(( $(date +%s) - t0 )) s on $device" | tee -a "$out/reproduce.log"
# everything but checkpoints, in one archive (at most 8 files come back from a call)
tar --exclude='*.pt' -czf "$out/table1_results.tgz" -C "$(dirname "$run")" "$(basename "$run")"
ls -l "$out"
exit "$rc"
