#!/usr/bin/env bash
# The test suite on this machine, under the versions of the GPU machine's image that benchmarks/device_check.py
# runs on: Python 3.12, torch 2.11.0 (CUDA 13.0 build), Triton 3.6.0, transformers 5.17.0. A mismatch found here
# costs no device time (the first such run found three). The pins are scripts/gpu_image_constraints.txt's, given
# to setup_env.sh as its constraints file.
#   bash scripts/gpu_image_tests.sh [pytest arguments]     # environment in .venv-gpu-image (about 5 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv-gpu-image} TORCH_SPEC=torch BABILONG_FAST_CONSTRAINTS=scripts/gpu_image_constraints.txt
if [ -z "${PYTHON:-}" ]; then  # the image's Python where one runs here (a pyenv shim may exist but not run)
    PYTHON=python3
    for p in python3.12 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12; do
        if "$p" -c "" 2>/dev/null; then PYTHON=$p; break; fi
    done
fi
export PYTHON
# shellcheck disable=SC1091
source scripts/setup_env.sh
python -c "import sys, torch, triton, transformers; print('gpu-image mirror: Python', sys.version.split()[0], \
'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
python -m pytest tests "$@"
