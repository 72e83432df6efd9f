#!/usr/bin/env bash
# CI, called by .ci/run beside the test suite: the README's main job, python -m benchmarks,
# in the venv .ci/run built and ran `pip install ".[bench]"` in (a second CUDA torch would
# not fit CI's disk; installing here would reinstall the package under the running suite),
# at reduced sizes (--quick), into a temporary folder; then a check that every promised
# file appeared (per op Markdown, CSV, speedup and memory PNG; the model benchmark's
# Markdown and CSV) and that no partial set was left behind. By hand: pip install ".[bench]" first.
# Measured on the shared 2-core VM (2026-11-28, beside the test suite, wheels from a local
# mirror): the --quick benchmarks took 168-315 s, 22 configs each in a fresh process.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

python -m benchmarks --quick --out "$out"   # README: the main job (with --quick and --out)

shopt -s nullglob
dirs=("$out"/*/)
[[ ${#dirs[@]} -eq 1 ]] || { echo "bench: expected one results folder, got: ${dirs[*]}"; exit 1; }
missing=0
for f in pam.md pam.csv pam_speedup.png pam_memory.png cam.md cam.csv cam_speedup.png \
         cam_memory.png model.md model.csv; do
  [[ -s "${dirs[0]}$f" ]] || { echo "bench: $f was not written"; missing=1; }
done
(( missing == 0 )) || exit 1
echo "bench: every promised file written ($(ls "${dirs[0]}" | tr '\n' ' '))"
echo "bench.sh took $(( $(date +%s) - start )) s"
