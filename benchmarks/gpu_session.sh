#!/usr/bin/env bash
# The GPU runbook: one command on a lent GPU machine (no network, no pip, nothing installed:
# the checkout runs from PYTHONPATH), sized for a 9-minute call. Stages in priority order,
# each under its own time limit; a line per stage is appended to summary.txt as it ends, so
# a kill loses nothing already done. At most 8 files land in $OUT (the rest in logs.tar.gz).
#
#   bash benchmarks/gpu_session.sh              # on the GPU machine
#   bash benchmarks/gpu_session.sh --dry-run    # here: the same stages on the CPU, tiny sizes
#
# a. device, versions, measured bf16 matmul and copy ceilings, the backends and switches
#    as `python -m danet_ops` reports them                            -> env.txt
# b. in the background: the CUDA extension built (sm_90, all cores), and every Triton
#    candidate config plus the torch.compile/FlexAttention baselines compiled into the
#    on-disk caches (one process per candidate index)
# c. the Triton GPU tests (pinned configs), then the CUDA GPU tests    -> gpu_tests.txt
# d. compute-sanitizer memcheck and racecheck on small CUDA cases      -> sanitizer.txt
# e. the headline benchmark, autotuned, with every Triton variant, under a time budget
#                                                                      -> pam.md, cam.md
# f. the autotuner's choices, and the compile count of one DANet step (run in the
#    background from the start, in its own cold cache: its seconds include contention) -> autotune.txt
# g. every target of the kernel issues, met or not, and each variant's speedup over the
#    plain triton rows (benchmarks/targets.py)                        -> summary.txt
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
TOTAL_S=${DANET_OPS_SESSION_S:-480}          # the whole script, leaving margin in a 520 s call
OUT=${OUT:-/tmp/danet_ops_gpu}
W=$(mktemp -d)                               # logs; packed into $OUT/logs.tar.gz at the end
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$W/triton-cache} DANET_OPS_CACHE=$W/danet-ops-cache
PY=${PYTHON:-python3}
T0=$(date +%s)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# run NAME LIMIT_S CMD...: CMD under its own timeout, output to $W/NAME.log, one summary line.
run() {
  local name=$1 limit=$2; shift 2
  local cap; cap=$(left)
  (( limit > cap )) && limit=$cap
  if (( limit < 10 )); then note "$name: skipped (no time left)"; return 1; fi
  local t=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  local tail_line; tail_line=$(grep -v '^\s*$' "$W/$name.log" | tail -1 | cut -c1-200)
  note "$name: exit $rc$( ((rc == 124)) && echo ' (time limit)') in $(( $(date +%s) - t )) s | $tail_line"
  return $rc
}

# a. device and ceilings
run device 90 $PY -m benchmarks.device_info
cp "$W/device.log" "$OUT/env.txt"
{ echo "---- python -m danet_ops"; $PY -m danet_ops 2>&1; } >> "$OUT/env.txt"   # backends, switches
{ nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >> "$OUT/env.txt"

# b. background: the CUDA extension, and the compile caches
PIDS=()
if (( DRY )); then
  note "cuda-build: skipped (dry run: no GPU)"
  PREWARM=("triton:0")
  BENCH=(--dry-run)
  export TRITON_INTERPRET=1
else
  ( MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 run cuda-build 300 \
      $PY -c "from danet_ops.cuda import build; build.load(); print('cuda extension ready')" ) &
  BUILD_PID=$!
  # One process per candidate index (the longest list, the PAM forward's, has 10).
  PREWARM=("compile" "flex")
  for i in $(seq 0 9); do PREWARM+=("triton:$i"); done
  BENCH=()
  # f (early, its own cold cache): compiles of one DANet step, then a second process
  ( for pass in cold warm; do
      TRITON_CACHE_DIR=$W/count-cache run "compiles-$pass" 90 $PY -m benchmarks.compile_count
    done ) &
  COUNT_PID=$!
fi
for kind in "${PREWARM[@]}"; do
  limit=200; [[ $kind == triton* ]] || limit=150   # torch.compile/flex: bounded, best effort
  ( run "prewarm-${kind/:/}" $limit $PY -m benchmarks.gpu_headline --prewarm "$kind" --variants "${BENCH[@]}" ) &
  PIDS+=($!)
done

# c. correctness on the GPU: Triton (pinned configs: one compile per kernel), then CUDA
XDIST=()
$PY -c "import xdist, pytest_timeout" 2>/dev/null && (( ! DRY )) && XDIST=(-n 6 --timeout 100)
export DANET_OPS_TRITON_CONFIG=first
run triton-tests 160 $PY -m pytest -q -ra -m "gpu and not slow" \
  -p no:cacheprovider "${XDIST[@]}" tests/test_triton_pam_gpu.py tests/test_triton_cam_gpu.py
if (( ! DRY )); then wait "$BUILD_PID"; fi
run cuda-tests 100 $PY -m pytest -q -ra -m gpu -p no:cacheprovider "${XDIST[@]}" tests/test_cuda_gpu.py
{ for t in triton-tests cuda-tests; do
    echo "== $t"; grep -E '^(FAILED|ERROR|SKIPPED)|passed|failed|skipped|error' "$W/$t.log" | tail -40
  done; } > "$OUT/gpu_tests.txt"

# d. sanitizers on small CUDA cases (the allocator's cache off, so memcheck sees every buffer)
# The smallest shapes, bf16 and fp32 (each on its own mma.sync kernels), and the CUDA
# variants in bf16 at a ragged N (their warps share tiles through shared memory).
SMALL='((pam_matches_float64_reference or cam_matches_float64_reference) and shape0 and (dtype0 or dtype2) or (pam_fused_backward or pam_whole_cv_forward) and shape1 and dtype1) and not False'
if (( DRY )) || ! command -v compute-sanitizer > /dev/null; then
  note "sanitizer: skipped (no GPU or no compute-sanitizer)"
  echo "skipped" > "$OUT/sanitizer.txt"
else
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run "$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda_gpu.py -k "$SMALL"
  done
  grep -H -E 'ERROR SUMMARY|passed|failed|error' "$W/memcheck.log" "$W/racecheck.log" | sed "s|$W/||" \
    > "$OUT/sanitizer.txt"
fi

# e. the headline benchmark: prewarm must be done (it competes for the GPU), then autotuned rows
unset DANET_OPS_TRITON_CONFIG
for pid in "${PIDS[@]}"; do wait "$pid"; done   # each under its own limit
BUDGET=$(( $(left) - 60 ))                      # and 15 s for g
(( BUDGET < 20 )) && BUDGET=20
run headline $(( BUDGET + 40 )) $PY -m benchmarks.gpu_headline --out "$W/results" --budget-s "$BUDGET" \
  --variants "${BENCH[@]}"
RES=$(ls -d "$W"/results/*/ 2>/dev/null | grep -v "\.partial/$" | head -1)   # not an unfinished set
for f in pam.md cam.md; do [[ -n "$RES" && -f "$RES/$f" ]] && cp "$RES/$f" "$OUT/$f"; done

# f. autotune choices, and the compile counts measured in the background
{ cat "$W"/results/autotune.txt 2>/dev/null || echo "no autotune choices recorded"; } > "$OUT/autotune.txt"
if (( ! DRY )); then
  wait "$COUNT_PID"
  for pass in cold warm; do tail -1 "$W/compiles-$pass.log" >> "$OUT/autotune.txt"; done
fi

# g. the kernel issues' targets and each variant against plain triton, from the headline's rows
if run targets 15 $PY -m benchmarks.targets "$W/results/rows.csv" --env "$OUT/env.txt" \
     --sanitizer "$OUT/sanitizer.txt"; then
  { echo "---- targets (python -m benchmarks.targets)"; cat "$W/targets.log"; } >> "$SUMMARY"
fi

tar czf "$OUT/logs.tar.gz" -C "$W" --exclude triton-cache --exclude count-cache --exclude danet-ops-cache . 2>/dev/null
note "total: $(( $(date +%s) - T0 )) s; files in \$OUT: $(ls "$OUT" | wc -l)"
echo "---- headline rows (first 40)"
grep -E '^\[' "$W/headline.log" | head -40
echo "---- summary"
cat "$SUMMARY"
