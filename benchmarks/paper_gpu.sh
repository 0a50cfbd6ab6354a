#!/usr/bin/env bash
# The paper's table on one GPU: every row of paper-small and paper-complex (20000 iterations,
# tiny Shakespeare), all runs of both presets at the same time, one process each. On an H200 one
# complex run took about 5 minutes alone; all rows together should fit in about 10 minutes of
# device time. Runs write checkpoints every 1000 steps and --resume continues them, so a cut
# session loses at most 1000 steps per run: run it again with the same OUT. From the repo root:
#     bash benchmarks/paper_gpu.sh DATA [OUT]
#         DATA: tiny Shakespeare (shakespeare_char/input.txt), OUT: default benchmarks/results/paper-gpu
set -uo pipefail
data=${1:?usage: bash benchmarks/paper_gpu.sh DATA [OUT]}
out=${2:-benchmarks/results/paper-gpu}
[ -f "$data" ] || { echo "paper_gpu.sh: DATA $data is not a file" >&2; exit 2; }
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
source "$(dirname "$0")/device_deps.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/environment.log"
# one worker per optimizer of each preset (13 each): the small GPT leaves the GPU mostly idle,
# so both presets share it; each bench process locks only its own folder
for size in small complex; do
  python3 -m deo.cli bench --preset "paper-$size" --device cuda --data "$data" --resume \
    --workers 13 --no-progress --out "$out/paper-$size" > "$out/paper-$size.log" 2>&1 &
done
wait
tail -n 3 "$out"/paper-*.log
