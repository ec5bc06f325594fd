#!/usr/bin/env bash
# The tests that use transformers, under other transformers releases than .venv's (its torch and everything else
# kept). Each release is installed once, with its own dependencies, into .transformers-compat/VERSION and put
# first on the path; installing needs the network, the tests do not. The Mamba patch follows two cache layouts
# (up to 5.13, from 5.14), and the GPU image runs 5.17; .venv runs scripts/constraints.txt's.
#   bash scripts/transformers_compat.sh [VERSION ...]     # default: 5.5.4 5.13.1 5.14.1 5.17.0
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DIR=.transformers-compat
[ $# -gt 0 ] || set -- 5.5.4 5.13.1 5.14.1 5.17.0
FILES=(tests/models tests/engine tests/train tests/data/test_hf_tokenizer.py tests/test_patch.py tests/test_readme.py
       tests/test_benchmark_smoke.py tests/test_eval_cli.py tests/test_training_probes.py)  # those using transformers
status=0
for v in "$@"; do
    if [ ! -d "$DIR/$v/transformers" ]; then
        "$PY" -m pip install --disable-pip-version-check -q --target "$DIR/$v" "transformers==$v" 2>&1 \
            | grep -v "^WARNING: Location" || true
        rm -rf "$DIR/$v"/numpy* "$DIR/$v/bin"  # keep .venv's numpy, which its torch was installed with
    fi
    echo "== transformers $v"
    PYTHONPATH="$DIR/$v" "$PY" -c "import transformers; assert transformers.__version__ == '$v', transformers.__file__"
    PYTHONPATH="$DIR/$v" "$PY" -m pytest -q -m "not triton" -p no:cacheprovider "${FILES[@]}" || status=1
done
exit $status
