#!/usr/bin/env bash
# Set up the environment and run the test suite on CPU (README.md). Real-data tests read
# TPP_DATA_DIR (default ../shared/data) and skip with the reason where it is absent.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest tests -q -rs -p no:cacheprovider -W ignore::DeprecationWarning "$@"
