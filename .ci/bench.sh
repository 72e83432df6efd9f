#!/usr/bin/env bash
# CI, called by .ci/run after the test suite: the README's main-job command line in a fresh
# virtual environment, at reduced sizes (--quick), into a temporary folder; then a check
# that every promised file appeared (per op Markdown, CSV, speedup and memory PNG; the
# model benchmark's Markdown and CSV) and that no partial set was left behind.
# Measured on the shared 2-core VM (2026-11-28, load average 70-150 from other jobs, wheels
# from a local mirror): 629 s and 329 s (install about 160-310 s, the --quick benchmarks
# 168-315 s, 22 configs each in a fresh process); unloaded it should be a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

rm -rf .venv-bench
python3 -m venv .venv-bench
# shellcheck disable=SC1091
source .venv-bench/bin/activate
python -m pip install --quiet --upgrade pip
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# README: pip install ".[bench]" && python -m benchmarks   (here with --quick and --out)
pip install --quiet ".[bench]" && python -m benchmarks --quick --out "$out"

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
