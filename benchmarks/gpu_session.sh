#!/usr/bin/env bash
# On a lent GPU machine (no network there): install the checkout, then run the stages
# asked for — GPU tests, a compute-sanitizer memcheck of the CUDA backend on small cases,
# the full benchmark sweep per op. Everything lands under $OUT; the summary prints last.
# A device call is limited to 10 minutes: split the stages over calls if needed, e.g.
#
#   bash benchmarks/gpu_session.sh tests memcheck      # then: ... pam   then: ... cam model
set -uo pipefail
OUT=${OUT:-/tmp/danet_ops_gpu}
STAGES=${*:-tests memcheck pam cam model}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
  > "$OUT/device.txt" 2>&1
pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }

for stage in $STAGES; do
  case "$stage" in
    tests)    python -m pytest -q -m gpu -ra tests > "$OUT/gpu_tests.log" 2>&1
              echo "gpu tests: exit $? ($(tail -1 "$OUT/gpu_tests.log"))" >> "$OUT/summary.txt" ;;
    memcheck) compute-sanitizer --tool memcheck --error-exitcode 9 python -m pytest -q -x \
                tests/test_cuda_gpu.py -k "shape0 or shape2 or nan_propagates" > "$OUT/memcheck.log" 2>&1
              echo "memcheck: exit $? ($(grep -m1 'ERROR SUMMARY' "$OUT/memcheck.log"))" >> "$OUT/summary.txt" ;;
    pam|cam|model)
              python -m benchmarks --full --ops "$stage" --out "$OUT/results" > "$OUT/bench_$stage.log" 2>&1
              echo "benchmark $stage: exit $?" >> "$OUT/summary.txt"
              tail -12 "$OUT/bench_$stage.log" ;;
    *)        echo "unknown stage $stage (tests, memcheck, pam, cam, model)"; exit 2 ;;
  esac
done
tail -1 "$OUT/device.txt"
cat "$OUT/summary.txt"
