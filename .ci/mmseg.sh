#!/usr/bin/env bash
# CI for the optional integrations, in their own venv: the mmsegmentation plugin against the
# pinned mmseg stack (mmcv-lite: no compiled ops, see tests/test_mmseg_plugin.py) and the
# ONNX export run in onnxruntime. torch is the CPU build (no GPU here; smaller and faster to
# install than the CUDA one the main venv gets). If the venv cannot be built (a registry
# unreachable), these tests are skipped with the reason; a failing test fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_NO_CACHE_DIR=1
trap 'rm -rf .venv-mmseg' EXIT   # ~1.5 GB; CI's disk is shared with the other venvs

start=$(date +%s)
log=$(mktemp)
rm -rf .venv-mmseg
if ! { python3 -m venv .venv-mmseg \
       && .venv-mmseg/bin/python -m pip install --upgrade pip \
       && .venv-mmseg/bin/python -m pip install "torch==2.13.0" ".[mmseg,onnx,test]" \
            "mmsegmentation==1.2.2" "mmengine==0.10.7" "mmcv-lite==2.1.0"; } >"$log" 2>&1; then
    echo "SKIPPED tests/test_mmseg_plugin.py tests/test_onnx.py: the venv could not be built:"
    tail -n 20 "$log"
    exit 0
fi
echo "mmseg/onnx venv install took $(( $(date +%s) - start )) s"

.venv-mmseg/bin/python -m pytest -q -ra tests/test_mmseg_plugin.py tests/test_onnx.py
echo "mmseg/onnx CI took $(( $(date +%s) - start )) s"
