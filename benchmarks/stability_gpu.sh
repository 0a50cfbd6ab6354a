#!/usr/bin/env bash
# The LR sweeps of docs/stability.md on one GPU: stability-gpt-lr (the small GPT, 7 lrs from
# 3e-4 to 3e-1, 9 optimizers, 3 seeds: 189 runs of 3000 steps, about 10 one-core CPU hours)
# and stability-slingshot-lr (4 lrs, 108 runs), each preset in its own process with many
# workers. The runs are small, so the GPU is launch-bound and the workers overlap their
# launches. A cut session keeps every finished record: run it again with the same OUT and
# --resume skips them. From the repo root:
#     bash benchmarks/stability_gpu.sh DATA [OUT] [WORKERS]
#         DATA: tiny Shakespeare (shakespeare_char/input.txt), OUT: default
#         benchmarks/results/stability-gpu, WORKERS: per preset, default 12
set -uo pipefail
data=${1:?usage: bash benchmarks/stability_gpu.sh DATA [OUT] [WORKERS]}
out=${2:-benchmarks/results/stability-gpu}
workers=${3:-12}
[ -f "$data" ] || { echo "stability_gpu.sh: DATA $data is not a file" >&2; exit 2; }
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
source "$(dirname "$0")/device_deps.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/environment.log"
for preset in stability-gpt-lr stability-slingshot-lr; do
  python3 -m deo.cli bench --preset "$preset" --device cuda --data "$data" --resume \
    --workers "$workers" --no-progress --out "$out/$preset" > "$out/$preset.log" 2>&1 &
done
wait
for preset in stability-gpt-lr stability-slingshot-lr; do
  python3 benchmarks/stability_table.py "$out/$preset" \
    --judge "deo-adamw-ritz:alpha=5,interval=10,trigger=spike,displacement=0.01"
done
tail -n 3 "$out"/stability-*.log
