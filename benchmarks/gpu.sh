#!/usr/bin/env bash
# Everything issue 5 measures on a CUDA device, in one go (about 7 minutes on an H200; at most 12):
# the cheap-step sync test, the step microbenchmark (fused AdamW as baseline, compiled
# variants at 100M), training throughput of the complex GPT under bf16 autocast,
# the per-step breakdown (and the efficiency it implies), and memory from
# torch.cuda.max_memory_allocated. Run from the repository root:
#     bash benchmarks/gpu.sh [OUT_DIR]      (default benchmarks/results/gpu)
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cheap_step.py -rs
} 2>&1 | tee "$out/environment_and_sync_test.log"
timeout 240 python3 benchmarks/step_time.py --device cuda --samples 15 --compile \
  --compile-sizes 1e8 --compile-bases adamw-foreach adamw-fused --out "$out/step_time_cuda" \
  2>&1 | grep -v Warning
timeout 180 python3 benchmarks/throughput.py --device cuda --preset complex --batch-size 64 \
  --amp --compile-step --steps 60 --rounds 5 --out "$out/throughput_cuda" 2>&1 | grep -v Warning
timeout 90 python3 benchmarks/step_breakdown.py --device cuda --preset complex --batch-size 64 \
  --amp --rounds 10 --out "$out/step_breakdown_cuda" 2>&1 | grep -v Warning
timeout 90 python3 benchmarks/memory.py --device cuda --params 2e8 --out "$out/memory_cuda"
