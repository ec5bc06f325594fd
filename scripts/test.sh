#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
python -m pytest tests "$@"
