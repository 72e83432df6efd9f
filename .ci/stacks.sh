#!/usr/bin/env bash
# One end of the supported range (README "Supported versions") in its own venv, deleted
# afterwards: the Triton and op tests and the sm_90 static check only (the whole suite runs
# on the default stack in .ci/run).
#   oldest: the GPU machines' torch 2.11 / triton 3.6 (its interpreter needs numpy<2.4);
#           torch 2.11 comes only as a CUDA build here (~5 GB, imports fine without a GPU).
#   newest: torch 2.13 CPU wheel + triton 3.9 (a CUDA torch would pin an older triton).
# Installing the package with the stack's pins also checks that setup.py's declared
# range admits both ends.
# Usage: bash .ci/stacks.sh oldest|newest
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_NO_CACHE_DIR=1

# test_sm90_static.py: every Triton config compiled for sm_90 by this stack's Triton and
# ptxas, no spills (the main job checks the triton its torch pins; 3.6 is the GPU machines').
TESTS=(tests/test_triton_*.py tests/test_pam_backends.py tests/test_cam_backends.py
       tests/test_compile.py tests/test_validation.py tests/test_sm90_static.py)

name=${1:?usage: bash .ci/stacks.sh oldest|newest}
case $name in
  oldest) pins=(torch==2.11.0 triton==3.6.0 "numpy<2.4") ;;
  newest) pins=(torch==2.13.0+cpu triton==3.9.0) ;;
  *) echo "unknown stack '$name': expected oldest or newest" >&2; exit 2 ;;
esac

venv=.venv-stack-$name
trap 'rm -rf "$venv"' EXIT
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -qq . "${pins[@]}" "pytest>=7"
"$venv/bin/python" -c "import sys, torch, triton, numpy; print('stack $name: python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| numpy', numpy.__version__)"
echo "stack $name: install took $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1) venv)"
start=$(date +%s)
"$venv/bin/python" -m pytest -q -ra -p no:cacheprovider "${TESTS[@]}"
echo "stack $name: tests took $(( $(date +%s) - start )) s"
