#!/usr/bin/env bash
# Set up the environment and run the main job (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
python tools/demo.py "$@"
