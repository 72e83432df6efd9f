#!/usr/bin/env bash
# One call on a lent GPU machine (no network there): install the checkout, run every GPU
# test, a compute-sanitizer memcheck of the CUDA backend on small cases, then the full
# benchmark sweep. Everything lands under $OUT; the last lines printed are the summary.
#
#   bash benchmarks/gpu_session.sh            # with OUT set by the device tool
set -uo pipefail
OUT=${OUT:-/tmp/danet_ops_gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
  > "$OUT/device.txt" 2>&1
pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }

# Correctness first: every GPU test (Triton, CUDA, models), then the rest of the suite.
python -m pytest -q -m gpu -ra tests > "$OUT/gpu_tests.log" 2>&1; gpu_rc=$?
compute-sanitizer --tool memcheck --error-exitcode 9 \
  python -m pytest -q -x tests/test_cuda_gpu.py -k "shape0 or shape2 or nan_propagates" > "$OUT/memcheck.log" 2>&1; memcheck_rc=$?

# Speed: the whole sweep (split by op so one slow part cannot eat the rest).
for op in pam cam model; do
  python -m benchmarks --full --ops "$op" --out "$OUT/results" > "$OUT/bench_$op.log" 2>&1
  echo "benchmark $op: exit $?" >> "$OUT/summary.txt"
done

echo "gpu tests: exit $gpu_rc ($(tail -1 "$OUT/gpu_tests.log"))" >> "$OUT/summary.txt"
echo "memcheck:  exit $memcheck_rc ($(grep -m1 'ERROR SUMMARY' "$OUT/memcheck.log"))" >> "$OUT/summary.txt"
cat "$OUT/device.txt" | tail -1
cat "$OUT/summary.txt"
