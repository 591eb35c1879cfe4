# Sourced by the device scripts (device_run.sh, table1_gpu.sh): the repository as the working
# folder and on PYTHONPATH, the output folder $out ($OUT, default device_out), the Python $py.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py="${PYTHON:-python3}"
