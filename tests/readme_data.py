"""Small synthetic stand-ins of the datasets the READMEs name, in the layouts they are published in.

Each maker writes one kind of input into a folder (or file) and returns it; the README harness
(``tests/test_readme_commands.py``) puts them where the commands look: ``../shared/data/<name>`` beside the
copy of the repository, the placeholder paths (``/data/BUSI``, ``/path/to/images``, ...) and the relative
inputs a command names. Every image is tiny (64 px, 24^3 voxels) so that a stage takes seconds; the content
only has to pass the converters' and the bundles' checks, not to be learnable.

Example::

    brain_mri(Path("/tmp/x/brain_tumor_mri/Training"))   # glioma/, meningioma/, notumor/, pituitary/ JPEGs
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel
import numpy as np
from PIL import Image

__all__ = ["MAKERS", "busi", "busi_test", "brain_mri", "brain_mri_test", "chest_xray", "lung_h5", "brats", "msd_spleen", "msd_lung", "ct_seg_pairs", "ct_volumes",
           "images", "npy_patches", "schema"]

BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
CHEST_CLASSES = ("NORMAL", "PNEUMONIA")


def busi(out: Path) -> Path:
    """The BUSI layout: ``{normal,benign,malignant}/<class> (n).png`` with ``<class> (n)_mask.png`` beside
    (``tools/make_demo_data.py``, 6 images a class, 64 px)."""
    from tools.make_demo_data import make_demo_dataset

    return make_demo_dataset(out, num_per_class=6, image_size=64, seed=0, masks=True)


def busi_test(out: Path) -> Path:
    """A user's own test folder in BUSI's classes: ``{normal,benign,malignant}/<class> (n).png``, 2 images a class,
    other images than :func:`busi`'s."""
    from tools.make_demo_data import make_demo_dataset

    return make_demo_dataset(out, num_per_class=2, image_size=64, seed=1)


def brain_mri(out: Path, per_class: int = 6, size: int = 64, seed: int = 1) -> Path:
    """The brain tumour MRI layout: one folder of JPEG slices a class, every other image RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for c, name in enumerate(BRAIN_CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            blob = np.exp(-((yy - 0.3 - 0.12 * c) ** 2 + (xx - rng.uniform(0.3, 0.7)) ** 2) / 0.01)
            grey = np.clip(255 * (0.3 * rng.random((size, size)) + 0.6 * blob), 0, 255).astype(np.uint8)
            image = Image.fromarray(grey).convert("RGB") if n % 2 else Image.fromarray(grey)
            image.save(out / name / f"{name[:2]}_{n:04d}.jpg", quality=95)
    return out


def brain_mri_test(out: Path) -> Path:
    """The brain tumour MRI set's ``Testing`` folder: its layout, other slices than :func:`brain_mri`'s, 2 a class."""
    return brain_mri(out, per_class=2, seed=9)


def chest_xray(out: Path, sizes: tuple[tuple[str, int], ...] = (("train", 6), ("val", 2), ("test", 2)),
               size: int = 64) -> Path:
    """The chest X-ray (pneumonia) layout: split folders ``train/``, ``val/``, ``test/`` of class folders
    ``NORMAL/``, ``PNEUMONIA/`` holding grey JPEGs, every image different."""
    rng = np.random.default_rng(10)
    for split, count in sizes:
        for name in CHEST_CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
            for n in range(count):
                coarse = rng.uniform(0, 255, (6, 6)).astype(np.float32)
                smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))
                grey = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
                grey.save(out / split / name / f"{name.lower()}_{split}_{n}.jpeg", quality=95)
    return out


def lung_h5(path: Path, patients: int = 5, per_patient: int = 10, size: int = 48) -> Path:
    """``val_patches.h5``'s layout: ``images`` (N, 1, 48, 48) float32 in [0, 1], ``labels`` 0/1, consecutive
    blocks of ``per_patient`` patches from one patient."""
    rng = np.random.default_rng(2)
    n = patients * per_patient
    labels = np.zeros((n, 1, size, size))
    for i in range(0, n, 3):
        y, x = rng.integers(8, size - 16, 2)
        labels[i, 0, y : y + 8, x : x + 8] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        images = rng.random((n, 1, size, size), dtype=np.float32) * 0.5 + 0.4 * labels
        f["images"] = np.clip(images, 0, 1).astype(np.float32)
        f["labels"] = labels
    return path


def _nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))


def _ball(shape: tuple[int, ...], rng: np.random.Generator, radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array([rng.uniform(0.35, 0.65) * s for s in shape])[:, None, None, None]
    return ((grid - centre) ** 2).sum(0) < radius**2


def brats(out: Path, shape: tuple[int, int, int] = (24, 24, 16)) -> Path:
    """BraTS 2013's layout: ``{train,validation,test}/brats_2013_pat000N_1/`` with ``Flair_subtrMeanDivStd``,
    ``T1c_subtrMeanDivStd``, ``OTMultiClass`` (0-4) and ``brainmask`` NIfTI files, two patients a split."""
    rng = np.random.default_rng(3)
    for split, patients in (("test", (1, 2)), ("validation", (3, 4)), ("train", (5, 6))):
        for p in patients:
            folder = out / split / f"brats_2013_pat{p:04d}_1"
            tumour = _ball(shape, rng, 4.0)
            label = np.where(tumour, rng.integers(1, 5, shape), 0).astype(np.uint8)
            for name in ("Flair", "T1c"):
                image = rng.normal(0, 1, shape).astype(np.float32) + 2.0 * tumour
                _nifti(folder / f"{name}_subtrMeanDivStd.nii.gz", image)
            _nifti(folder / "OTMultiClass.nii.gz", label)
            _nifti(folder / "brainmask.nii.gz", np.ones(shape, np.uint8))
    return out


def _ct_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU (air around a soft-tissue body, a bright ball) and its 0/1 label."""
    image = np.full(shape, -1000.0, np.float32)
    image[2:-2, 2:-2, :] = 40.0
    ball = _ball(shape, rng, min(shape) / 4)
    image[ball] = 130.0
    return (image + rng.normal(0, 10, shape)).astype(np.float32), ball.astype(np.uint8)


def _msd(out: Path, task: str, count: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    rng = np.random.default_rng(4)
    training = []
    for i in range(count):
        image, label = _ct_volume(rng, shape)
        _nifti(out / "imagesTr" / f"{task.lower()}_{i}.nii.gz", image, spacing)
        _nifti(out / "labelsTr" / f"{task.lower()}_{i}.nii.gz", label, spacing)
        training.append({key: f"./{folder}/{task.lower()}_{i}.nii.gz"
                         for key, folder in (("image", "imagesTr"), ("label", "labelsTr"))})
    (out / "dataset.json").write_text(json.dumps({
        "name": task, "modality": {"0": "CT"}, "labels": {"0": "background", "1": task.lower()},
        "numTraining": count, "training": training, "test": []}, indent=1))
    return out


def msd_spleen(out: Path) -> Path:
    """A Medical Segmentation Decathlon task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``), Task09's."""
    return _msd(out, "Spleen", 5, (24, 24, 16), (1.5, 1.5, 3.0))


def msd_lung(out: Path) -> Path:
    """An MSD task folder like Task06's: 2 mm slices wide enough for the 48 px patches of the lung bundle."""
    return _msd(out, "Lung", 5, (64, 64, 8), (2.0, 2.0, 2.0))


def ct_seg_pairs(root: Path, count: int = 10) -> Path:
    """``root/ct/case<n>.nii.gz`` with labels ``root/seg/case<n>_seg.nii.gz`` (two folders paired by name); 10
    volumes, so that the validation split (2) has a volume for each of torchrun's 2 processes."""
    rng = np.random.default_rng(5)
    for i in range(count):
        image, label = _ct_volume(rng, (24, 24, 16))
        _nifti(root / "ct" / f"case{i}.nii.gz", image, (1.5, 1.5, 3.0))
        _nifti(root / "seg" / f"case{i}_seg.nii.gz", label, (1.5, 1.5, 3.0))
    return root


def ct_volumes(out: Path, count: int = 2) -> Path:
    """A folder of new CT volumes for 3D inference (``case<n>.nii.gz``)."""
    rng = np.random.default_rng(8)
    for i in range(count):
        _nifti(out / f"case{i}.nii.gz", _ct_volume(rng, (24, 24, 16))[0], (1.5, 1.5, 3.0))
    return out


def images(out: Path, count: int = 3) -> Path:
    """A folder of new 2D images for inference (grey PNGs, one RGB JPEG)."""
    rng = np.random.default_rng(6)
    out.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        pixels = (rng.random((64, 64)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"new_{n}.png")
    Image.fromarray(pixels).convert("RGB").save(out / "new_rgb.jpg")
    return out


def npy_patches(out: Path, count: int = 3) -> Path:
    """A folder of lung CT patches for inference: ``<name>_image.npy`` (48 x 48 float32 in [0, 1])."""
    rng = np.random.default_rng(7)
    out.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        np.save(out / f"patch{n}_image.npy", rng.random((48, 48), dtype=np.float32))
    return out


def schema(path: Path, source: Path) -> Path:
    """The zoo's metadata schema, copied from ``source`` (what ``verify_metadata`` would download)."""
    if not source.is_file():
        raise FileNotFoundError(f"the metadata schema '{source}' is not there (set TPP_SCHEMA); "
                                "verify_metadata would download it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(source, path))


#: the makers by name, as the harness's tables name them
MAKERS = {"busi": busi, "busi_test": busi_test, "brain_mri": brain_mri, "brain_mri_test": brain_mri_test,
          "chest_xray": chest_xray, "lung_h5": lung_h5, "brats": brats, "msd_spleen": msd_spleen,
          "msd_lung": msd_lung, "ct_seg_pairs": ct_seg_pairs, "ct_volumes": ct_volumes, "images": images,
          "npy_patches": npy_patches}
