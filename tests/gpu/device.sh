#!/usr/bin/env bash
# One call on a lent GPU machine: versions, the GPU tests, and on one GPU the benchmark.
#
#   tests/gpu/device.sh one     # nvidia-h100-x1: tests/gpu/test_single_gpu.py, then bench/gpu_throughput.py
#   tests/gpu/device.sh two     # nvidia-h200-x2: tests/gpu/test_multi_gpu.py
#   tests/gpu/device.sh pods    # nvidia-h200-x2: only the two-pod tests (kill -9 bound first, then SIGTERM + resume
#                               #   vs two uninterrupted runs, then ZeRO-3 on a 4-bit base across the pods)
#
# Expects the wheels installed into /tmp/site (see docs/gpu-validation.md) and $OUT for what comes back.
# Stays inside LIMIT seconds (default 560) so the 600-second command limit is never hit.
set -o pipefail
MODE=${1:?one, two or pods}
LIMIT=${LIMIT:-560}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site:$PWD/operator:$PWD/trainer-image:$PWD

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
  python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|trl|peft|bitsandbytes|deepspeed|accelerate|liger.kernel|datasets|triton|pydantic) "
} 2>&1 | tee "$OUT/versions.txt"

left() { echo $(( LIMIT - SECONDS )); }

if [ "$MODE" = one ]; then
  timeout -s INT 230 python3 -m pytest tests/gpu/test_single_gpu.py -v -s -p no:cacheprovider -o addopts="" \
    --timeout=200 2>&1 | tee "$OUT/tests-1gpu.log"
  python3 bench/gpu_throughput.py --out /tmp/bench --doc "$OUT/benchmarks.md" --budget-s $(( $(left) - 25 )) \
    2>&1 | tee "$OUT/bench.log"
  cp /tmp/bench/results.jsonl "$OUT/" 2>/dev/null
  tail -n 25 /tmp/bench/cases/*.log > "$OUT/cases-tail.log" 2>&1
elif [ "$MODE" = pods ]; then
  T=tests/gpu/test_multi_gpu.py
  timeout -s INT $(( $(left) - 10 )) python3 -m pytest -v -s -p no:cacheprovider -o addopts="" --timeout=400 \
    $T::test_two_pods_kill_one_other_exits $T::test_two_pods_sigterm_one_stops_both_and_the_resume_matches \
    $T::test_two_pods_zero3_on_4bit_base_stop_and_resume 2>&1 | tee "$OUT/tests-2pods.log"
else
  timeout -s INT $(( $(left) - 10 )) python3 -m pytest tests/gpu/test_multi_gpu.py -v -s -p no:cacheprovider \
    -o addopts="" --timeout=300 2>&1 | tee "$OUT/tests-2gpu.log"
fi
# The pods' own logs, for whatever failed.
find /tmp/pytest-of-*/ -name pod.log -newer "$OUT/versions.txt" -exec sh -c 'echo "== $1"; tail -n 40 "$1"' _ {} \; \
  > "$OUT/pod-logs.txt" 2>&1
echo "device.sh $MODE done after $SECONDS s"
