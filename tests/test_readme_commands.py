"""Every command block of every README runs as written, from the folder it names, on synthetic data.

The convention (``tests/readme_blocks.py`` reads it):

- A command block is a fenced block tagged ``bash`` / ``sh`` / ``shell`` / ``console`` (``$`` lines), or an
  indented code block. An untagged fenced block is output and must not hold commands.
- A block runs from the folder named by a ``<!-- run from: <folder> -->`` comment on the line before it
  (relative to the repository root, ``.`` for the root); without one, from its bundle folder in
  ``bundles/<name>/docs/README.md`` and from the repository root everywhere else. Where the paragraph before
  a block says "from the repository root" or "from this folder", it must agree.

How the harness runs them:

- One copy of the repository per README (the files git lists: tracked and new, as they are in the working
  tree) under a temporary folder, with ``../shared/data`` beside it holding small synthetic stand-ins of the
  real datasets (``tests/readme_data.py``). ``PYTHONPATH`` is the copy, so commands import its
  ``tpp_components`` (checked), never the editable install.
- A README's blocks run in that copy one after the other, each in a fresh ``bash -e`` from its folder (what a
  block exports or ``cd``-s does not reach the next): first the blocks that run a ``tools/prepare_*.py``
  converter (the data comes first), then the others, both in document order. A block's test runs the
  earlier blocks of its README first where this process has not run them.
- The text is run as written, with one substitution: a placeholder for the user's own data (``/data/BUSI``,
  ``/path/to/images``, ... in ``PLACEHOLDERS``) becomes a synthetic folder of that layout; an absolute path
  that is no known placeholder fails the inventory test. Inputs a command names by a relative path (the
  top README's ``patches.h5``) are put there first (``INPUTS``).
- One environment variable shortens the runs: ``TPP_README_MAX_EPOCHS=1`` makes every trainer stop after
  its first epoch (``tests/readme_site/sitecustomize.py``; validation, checkpoints, the best model and the
  target parameters are still written in that epoch). Data are small, threads 1.
- Blocks that cannot run here are in ``NOT_RUN`` with the reason (a second machine, a server, an install into
  this environment, hours of runs); 3D blocks are in ``THREE_D`` and run with ``TPP_README_3D=1``. The
  inventory test fails on a listed block that no longer exists; every other command block is a test here.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import readme_data
from conftest import ROOT, SCHEMA
from readme_blocks import Block, collect, looks_like_commands

BUNDLES = "bundles/{}/docs/README.md"
MULTI_NODE = "needs a second machine: the rendezvous endpoint host0:29400 and a node with --node_rank=1"
GPU_PRESET = ("the full-resolution preset is for a GPU (256 px, or 96-voxel crops with SwinUNETR feature 48): one "
              "epoch takes hours on 2 CPU cores; tests/test_gpu_presets.py runs one training iteration at its size")
THREE_D_REASON = ("3D SwinUNETR / UNETR stages at the bundle's 64^3 crop: the five 3D blocks take about 12 minutes "
                  "on 2 shared CPU cores (up to 4 GB a process), more than this harness's budget; TPP_README_3D=1 "
                  "runs them")

#: (README, text that is in exactly one of its blocks) -> why that block is not run here
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "./run_demo.sh"): "installs the requirements into this environment, then runs the whole demo "
                                    "(minutes) and the whole test suite (this harness included)",
    ("README.md", "pip install -r requirements.txt"):
        "installs packages into this environment (`pip install -e .` would point it at the copy); the harness sets "
        "PYTHONPATH instead",
    ("README.md", "mlflow ui"): "starts a web server that runs until stopped (and needs the full mlflow package)",
    **{(BUNDLES.format(b), "--rdzv_endpoint host0:29400"): MULTI_NODE
       for b in ("breast_us_classification", "brain_mri_classification", "breast_us_segmentation",
                 "lung_ct_segmentation", "brain_mri_segmentation", "spleen_ct_segmentation")},
    (BUNDLES.format("breast_us_classification"), "studies/busi_vit_probe.yaml --workers 2"):
        "the study behind its table: 5 seeds x 2 methods x (TPP, fine-tuning, evaluation) and 3 fresh-decoder seeds, "
        "about 40 bundle processes (52 minutes on the real data)",
    (BUNDLES.format("breast_us_classification"), "studies/busi_litemedsam_probe.yaml"):
        "the LiteMedSAM study: 3 seeds x 2 methods with reference arms, about 30 LiteMedSAM bundle processes",
    (BUNDLES.format("spleen_ct_segmentation"), "'configs/swin_ssl.json','configs/tpp.json'"):
        "needs MONAI's self-supervised Swin weights in models/model_swinvit.pt, a download; "
        "tests/test_spleen_ct_segmentation_bundle.py runs the switch on a checkpoint of that key layout",
    ("studies/README.md", "--max_hours 2"): "runs a study plan's runs for up to 2 hours",
    **{(BUNDLES.format(b), "configs/gpu.json"): GPU_PRESET
       for b in ("breast_us_classification", "brain_mri_classification", "breast_us_segmentation",
                 "lung_ct_segmentation", "brain_mri_segmentation", "spleen_ct_segmentation")},
    ("tools/monailabel/README.md", "# prints the venv"):
        "builds MONAI Label's 3.6 GB virtual environment (downloads); .ci/run builds it for tests/test_monailabel.py",
    ("tools/monailabel/README.md", "-m monailabel.main start_server"):
        "starts a MONAI Label server that runs until stopped; tests/test_monailabel.py starts one",
    ("tools/monailabel/README.md", "curl -X PUT"): "REST calls to a running MONAI Label server; "
                                                   "tests/test_monailabel.py makes them",
}
#: the 3D blocks, run only with TPP_README_3D=1 (minutes each on a CPU)
THREE_D: dict[tuple[str, str], str] = {
    (BUNDLES.format("brain_mri_segmentation"), "../../tools/prepare_patient_folders.py"): THREE_D_REASON,
    (BUNDLES.format("brain_mri_segmentation"), "--nproc_per_node=2"): THREE_D_REASON,
    (BUNDLES.format("spleen_ct_segmentation"), "'configs/unetr.json','configs/pretrain.json'"): THREE_D_REASON,
    (BUNDLES.format("spleen_ct_segmentation"), "--input_dir /path/to/ct --output_dir"): THREE_D_REASON,
    (BUNDLES.format("spleen_ct_segmentation"), "--nproc_per_node=2"): THREE_D_REASON,
}
if not os.environ.get("TPP_README_3D"):
    NOT_RUN = {**NOT_RUN, **THREE_D}

#: placeholders for the user's own data -> the synthetic stand-in (a maker of readme_data) put in their place
PLACEHOLDERS = {
    "/data/BUSI": "busi", "/path/to/Dataset_BUSI_with_GT": "busi",
    "/data/brain_mri/Training": "brain_mri", "/path/to/brain_tumor_mri/Training": "brain_mri",
    "/data/brain_mri/Testing": "brain_mri_test", "/data/chest_xray": "chest_xray", "/data/my_test_images": "busi_test",
    "/data/Task09_Spleen": "msd_spleen", "/data/Task06_Lung": "msd_lung",
    "/data/BraTS": "brats", "/path/to/brats2013": "brats",
    "/data/new_images": "images", "/path/to/images": "images", "/path/to/patches": "npy_patches",
    "/path/to/ct": "ct_volumes",
}
#: ../shared/data as the commands read it: folder -> maker
SHARED_DATA = {"busi_classification": "busi", "busi_segmentation": "busi", "brain_tumor_mri/Training": "brain_mri",
               "msd_lung_patches/val_patches.h5": "lung_h5", "brats2013": "brats"}
#: inputs a README's commands name by a relative path: README -> {path in the copy: maker}
INPUTS = {
    "README.md": {"patches.h5": "lung_h5"},
    BUNDLES.format("spleen_ct_segmentation"): {".": "ct_seg_pairs"},
    **{BUNDLES.format(b): {f"bundles/{b}/meta_schema_20240725.json": "schema"}
       for b in ("breast_us_classification", "brain_mri_classification")},
}
MAKERS = {**readme_data.MAKERS, "schema": functools.partial(readme_data.schema, source=SCHEMA)}
SITE = Path(__file__).resolve().parent / "readme_site"
BLOCK_TIMEOUT_S = 1200

BLOCKS = collect(ROOT)
COMMAND_BLOCKS = [b for b in BLOCKS if b.is_command]


def _listed(block: Block, table: dict[tuple[str, str], str]) -> str | None:
    """The reason ``table`` gives for ``block``, or None when it does not list it."""
    return next((why for (readme, text), why in table.items() if readme == block.readme and text in block.text), None)


def _run_order(blocks: list[Block]) -> list[Block]:
    """Per README: the blocks that run a converter first, then the others, each in document order."""
    prepares = [b for b in blocks if "tools/prepare_" in b.text]
    return prepares + [b for b in blocks if b not in prepares]


RUN = [b for readme in dict.fromkeys(b.readme for b in COMMAND_BLOCKS)
       for b in _run_order([c for c in COMMAND_BLOCKS if c.readme == readme and _listed(c, NOT_RUN) is None])]


@dataclass
class ReadmeCopy:
    """A copy of the repository in which one README's blocks run, and what ran in it."""

    readme: str
    root: Path
    base: Path
    results: dict[str, tuple[int, Path, float]] = field(default_factory=dict)  # block id -> (status, log, seconds)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "TPP_DATALISTS", "TPP_DATA_DIR"}}
        env.update(PYTHONPATH=f"{SITE}{os.pathsep}{self.root}", PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                   f"{env.get('PATH', '')}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TPP_README_MAX_EPOCHS="1",
                   MPLBACKEND="Agg", TMPDIR=str(self.base / "tmp"))
        return env

    def run(self, block: Block) -> tuple[int, Path, float]:
        """Run ``block`` (placeholders replaced) with ``bash -e`` from its folder; log to a file."""
        slug = re.sub(r"\W+", "_", block.id)
        script, log = self.base / "scripts" / f"{slug}.sh", self.base / "logs" / f"{slug}.log"
        script.parent.mkdir(exist_ok=True)
        log.parent.mkdir(exist_ok=True)
        script.write_text(_substitute(block.text, self.base) + "\n")
        start = time.monotonic()
        with log.open("w") as out:
            try:
                status = subprocess.run(["bash", "-e", str(script)], cwd=self.root / block.run_from,
                                        env=self.environment(), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, timeout=BLOCK_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                status = -1
        self.results[block.id] = (status, log, time.monotonic() - start)
        return self.results[block.id]


def _make(maker: str, path: Path) -> Path:
    """The stand-in ``maker`` at ``path`` (made once)."""
    if not path.exists():
        MAKERS[maker](path)
    return path


def _substitute(text: str, base: Path) -> str:
    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):
        stand_in = base / "placeholders" / PLACEHOLDERS[placeholder]
        if re.search(re.escape(placeholder) + r"(?![\w.-])", text):
            _make(PLACEHOLDERS[placeholder], stand_in)
            text = re.sub(re.escape(placeholder) + r"(?![\w.-])", str(stand_in), text)
    return text


def _copy_repository(readme: str, base: Path) -> ReadmeCopy:
    """A copy of the working tree's files that git lists, with the README's inputs; it imports its own code."""
    root = base / re.sub(r"\W+", "_", readme.removesuffix(".md"))
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    for path, maker in INPUTS.get(readme, {}).items():
        MAKERS[maker](root / path)
    copy = ReadmeCopy(readme, root, base)
    where = "import importlib.util as u; print(u.find_spec('tpp_components').origin)"
    found = subprocess.run([sys.executable, "-c", where], cwd=root, env=copy.environment(), capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(found).is_relative_to(root), f"the copy imports tpp_components from {found}, not from {root}"
    return copy


@pytest.fixture(scope="session")
def readme_base(tmp_path_factory) -> Path:
    """The folder holding the copies and, as ``shared/data``, the synthetic datasets (``../shared/data`` of a copy)."""
    base = tmp_path_factory.mktemp("readme_commands")
    (base / "tmp").mkdir()
    for name, maker in SHARED_DATA.items():
        _make(maker, base / "shared" / "data" / name)
    return base


_COPIES: dict[str, ReadmeCopy] = {}


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block_runs_as_written(block: Block, readme_base: Path) -> None:
    copy = _COPIES.get(block.readme) or _COPIES.setdefault(block.readme, _copy_repository(block.readme, readme_base))
    earlier = RUN[RUN.index(next(b for b in RUN if b.readme == block.readme)) : RUN.index(block)]
    for before in earlier:
        if before.id not in copy.results:
            copy.run(before)
    failed = [b.id for b in earlier if copy.results[b.id][0] != 0]
    status, log, seconds = copy.run(block)
    assert status == 0, (
        f"{block.id} (run from {block.run_from}) {'timed out' if status == -1 else f'exited {status}'} after "
        f"{seconds:.0f} s" + (f"; earlier blocks of this README failed: {failed}" if failed else "")
        + f"\n--- {block.first_command}\n--- last lines of {log}:\n{_tail(log)}")


def test_every_command_block_is_run_or_listed_with_a_reason() -> None:
    """Each NOT_RUN / THREE_D entry names exactly one command block; every other command block is a test."""
    for readme, marker in {**NOT_RUN, **THREE_D}:
        matches = [b.id for b in COMMAND_BLOCKS if b.readme == readme and marker in b.text]
        assert len(matches) == 1, f"NOT_RUN entry ({readme!r}, {marker!r}) matches {matches}, expected one block"
    assert {b.id for b in RUN} | {b.id for b in COMMAND_BLOCKS if _listed(b, NOT_RUN)} == {b.id for b in COMMAND_BLOCKS}


def test_run_from_folders_exist_and_agree_with_the_prose() -> None:
    for block in COMMAND_BLOCKS:
        assert (ROOT / block.run_from).is_dir(), f"{block.id}: run-from folder '{block.run_from}' does not exist"
        assert block.prose in (None, block.run_from), (
            f"{block.id}: the text before it says to run from '{block.prose}', the block runs from '{block.run_from}' "
            "(add or fix its <!-- run from: ... --> comment)")


def test_untagged_blocks_hold_no_commands() -> None:
    for block in BLOCKS:
        if not block.is_command:
            assert not looks_like_commands(block.text), (
                f"{block.id}: a block tagged '{block.tag}' holds commands; tag it bash so that it is run")


def test_absolute_paths_in_commands_are_known_placeholders() -> None:
    """A new placeholder (``/data/...``, ``/path/to/...``) needs a stand-in in PLACEHOLDERS, else it would fail."""
    for block in [b for b in COMMAND_BLOCKS if b in RUN or _listed(b, THREE_D)]:
        for path in re.findall(r"(?<![\w.$/])/(?:data|path|tmp|home|mnt)/[^\s'\"\],]*", block.text):
            assert any(path == p or path.startswith(p + "/") for p in PLACEHOLDERS), (
                f"{block.id}: '{path}' is no placeholder the harness knows (PLACEHOLDERS)")
