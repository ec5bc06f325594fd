#!/usr/bin/env bash
# Create (or reuse) the virtual environment $VENV (default .venv), install torch and the test and
# benchmark tools (at the versions of scripts/constraints.txt), then build and install babilong_fast in
# editable mode. The CUDA extension is built, and must build, when nvcc and a CUDA build of torch are
# found; otherwise the package installs without it.
# Source this file (it activates the environment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
CONSTRAINTS=${BABILONG_FAST_CONSTRAINTS-scripts/constraints.txt}  # relative to the repository root; empty: none
[ -z "$CONSTRAINTS" ] || [ -f "$CONSTRAINTS" ] || { echo "setup: no constraints file $CONSTRAINTS" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip_q() {
    local rc=0
    python -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; } || rc=$?
    if [ "$rc" != 0 ] && [ -n "$CONSTRAINTS" ]; then
        echo "setup: pip install failed; if a pin in $CONSTRAINTS does not suit this Python or TORCH_SPEC," \
            "BABILONG_FAST_CONSTRAINTS= installs unconstrained" >&2
    fi
    return "$rc"
}
pip_q ${CONSTRAINTS:+-c "$CONSTRAINTS"} "setuptools>=64" wheel ninja numpy pytest pytest-benchmark tiktoken regex \
    pyarrow transformers peft matplotlib tqdm "$TORCH_SPEC" triton
python -c "import torch, triton" || { echo "setup: torch/triton did not install" >&2; exit 1; }
skip=$(printf '%s' "${BABILONG_FAST_SKIP_CUDA_BUILD:-}" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')
case "$skip" in 1|true|yes|on) skip=1 ;; *) skip= ;; esac  # as setup.py reads it ("0" is not a skip)
if [ -z "$skip" ] && command -v nvcc >/dev/null \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
    export BABILONG_FAST_FORCE_CUDA_BUILD=${BABILONG_FAST_FORCE_CUDA_BUILD:-1}
fi
if ! python -m pip install --disable-pip-version-check -v --no-deps --no-build-isolation -e . >"$VENV/build.log" 2>&1; then
    tail -n 60 "$VENV/build.log" >&2
    echo "setup: building babilong_fast failed (full log: $VENV/build.log)" >&2
    exit 1
fi
grep -E "babilong_fast: " "$VENV/build.log" | sort -u || true
# One line per nvcc compile: the source and its target architectures.
grep -E "bin/nvcc .*-gencode" "$VENV/build.log" \
    | sed -E 's/.* (-c|--compile) +([^ ]+\.cu).*/\2/' | while read -r src; do
        echo "  nvcc compiled ${src#"$PWD"/} for $(grep -F "$src" "$VENV/build.log" | grep -oE "code=sm_[0-9a-z]+" | sort -u | tr '\n' ' ')"
    done || true
python -c "import babilong_fast; [print(f'  {k:<7}', 'yes' if v.available else 'no ', v.reason) for k, v in babilong_fast.backends().items()]"
