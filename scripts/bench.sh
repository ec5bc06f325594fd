#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the main benchmark. Extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
python benchmarks/throughput.py "$@"
