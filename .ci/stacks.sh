#!/usr/bin/env bash
# The two ends of the supported range (README "Supported versions"), each in its own venv:
# the Triton and op tests only (the whole suite runs on the default stack in .ci/run).
#   oldest: the GPU machines' torch 2.11 / triton 3.6 (its interpreter needs numpy<2.4);
#           torch 2.11 comes only as a CUDA build here (~5 GB, imports fine without a GPU).
#   newest: torch 2.13 CPU wheel + triton 3.9 (a CUDA torch would pin an older triton).
# Installing the package with the stack's pins also checks that setup.py's declared
# range admits both ends. The stacks run side by side: interpreter tests are mostly
# single-threaded Python, and the oldest's install mostly waits on its download.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=(tests/test_triton_*.py tests/test_pam_backends.py tests/test_cam_backends.py
       tests/test_compile.py tests/test_validation.py)

run_stack() {  # name, pip requirement specifiers...
    local name=$1 venv=.venv-stack-$1 start
    shift
    start=$(date +%s)
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -qq . "$@" "pytest>=7"
    "$venv/bin/python" -c "import sys, torch, triton, numpy; print('stack $name: python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| numpy', numpy.__version__)"
    echo "stack $name: install took $(( $(date +%s) - start )) s"
    start=$(date +%s)
    "$venv/bin/python" -m pytest -q -ra -p no:cacheprovider "${TESTS[@]}"
    echo "stack $name: tests took $(( $(date +%s) - start )) s"
    rm -rf "$venv"  # ~5 GB for the oldest stack
}

run_stack oldest torch==2.11.0 triton==3.6.0 "numpy<2.4" > .ci-stack-oldest.log 2>&1 & oldest=$!
run_stack newest torch==2.13.0+cpu triton==3.9.0 > .ci-stack-newest.log 2>&1 & newest=$!
status=0
wait $oldest || status=1
wait $newest || status=1
cat .ci-stack-oldest.log .ci-stack-newest.log
exit $status
