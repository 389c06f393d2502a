"""fp32 against mixed precision, side by side: images per second and peak memory of every stage's step.

Every network, optimizer, loss and inferer comes from a bundle's own configs (``train.json`` plus
the stage's override file, ``--precision`` set as a user would), so what is timed is what the
bundle runs; only the data is random tensors (no loading: see ``tools/benchmark_data_path.py``
for the loading share of a real epoch). Each (network, mode, precision) runs in its own process,
so its peak resident memory is its own. Usage::

    python tools/benchmark_precision.py --threads 2 --out runs/benchmark_precision.json
    python tools/benchmark_precision.py --networks "['tinyvit']" --modes "['lora_step']" --steps 10
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"

#: network -> (bundle, switch files after train.json, input shape without batch, extra overrides, what it is); the
#: batch is the stage's own (``train#dataloader#batch_size`` times ``train#num_samples`` crops per volume)
NETWORKS = {
    "tinyvit": ("breast_us_classification", ["litemedsam.json"], (3, 64, 64), {}, "LiteMedSAM TinyViT, 64 px, 2D"),
    "vit": ("breast_us_classification", [], (1, 64, 64), {}, "own ViT 192 x 6, patch 8, 64 px, 2D"),
    "swinunetr": ("spleen_ct_segmentation", [], (1, 64, 64, 64), {}, "SwinUNETR feature 12, 64^3 voxels, 3D"),
    # the full-resolution presets for a GPU (configs/gpu.json), measured on CPU for their memory per image
    "tinyvit_gpu": ("breast_us_classification", ["litemedsam.json", "gpu.json"], (3, 256, 256), {},
                    "LiteMedSAM TinyViT, 256 px (gpu.json), 2D"),
    "vit_gpu": ("breast_us_classification", ["gpu.json"], (1, 256, 256), {}, "own ViT 192 x 6, patch 16, 256 px (gpu.json), 2D"),
    "tinyvit_seg_gpu": ("breast_us_segmentation", ["gpu.json"], (3, 256, 256), {},
                        "LiteMedSAM TinyViT + decoder, 256 px (gpu.json), 2D segmentation"),
    "swinunetr_gpu": ("spleen_ct_segmentation", ["gpu.json"], (1, 96, 96, 96), {},
                      "SwinUNETR feature 48, 96^3 voxels (gpu.json), 3D"),
    # the attention of 8db4b03 (MONAI's, unfused in training), for the ratio against it
    "swinunetr_unfused": ("spleen_ct_segmentation", [], (1, 64, 64, 64), {"backbone#use_flash_attention": False},
                          "as swinunetr, MONAI's unfused window attention"),
}

#: mode -> (stage override file or None, config overrides, what it times)
MODES = {
    "forward": (None, {"network_def#merged": True, "init": "standard"}, "inference forward, merged network, no grad"),
    "lora_step": (None, {"init": "standard"}, "fine-tuning step, LoRA (the bundle's peft): forward, loss, backward, AdamW"),
    "tpp_step": ("tpp.json", {}, "TPP step: the bundle's pretext task on the target parameters"),
    "stage0_step": ("pretrain.json", {}, "stage 0 step: the pretext task on the whole backbone"),
    "full_step": (None, {"peft": None, "freeze_backbone": False, "init": "standard"}, "full fine-tuning step"),
}

PRECISIONS = ("fp32", "bf16")


def _applies(network: str, mode: str) -> bool:
    """Stage 0 belongs to the bundles' own backbones: LiteMedSAM's TinyViT comes pretrained."""
    return not (network.startswith("tinyvit") and mode == "stage0_step")


def _one(network: str, mode: str, precision: str, steps: int, warmup: int, batch: int | None = None,
         bundles: str = str(BUNDLES)) -> dict:
    """Build one stage from its bundle's configs (under ``bundles``) and time ``steps`` steps after ``warmup``."""
    import torch
    from monai.bundle import ConfigParser

    bundle, switches, shape, extra, _ = NETWORKS[network]
    stage_file, overrides, _ = MODES[mode]
    configs = Path(bundles) / bundle / "configs"
    files = [configs / "train.json"] + [configs / s for s in switches] + ([configs / stage_file] if stage_file else [])
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    settings = {
        "bundle_root": str(Path(bundles) / bundle), "device": torch.device("cpu"), "precision": precision,
        "backbone_weights": parser["backbone_weights"] if network in ("tinyvit", "tinyvit_gpu") else None,
        "allow_random_backbone": True, "loss#weight": None, "pretext#model#decoder_weights": None,
        **overrides, **extra,
    }
    for key, value in settings.items():
        if key in parser or "#" in key:
            parser[key] = value
    torch.manual_seed(0)
    net = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("train#inferer")
    pretext = stage_file is not None
    if batch is None:
        batch = parser["train#dataloader#batch_size"] * (parser["train#num_samples"] if "train#num_samples" in parser else 1)
    x = torch.rand(batch, *shape)
    num_classes = parser.get_parsed_content("num_classes")
    y = torch.randint(0, num_classes, (batch,) if len(shape) == 3 and "segmentation" not in bundle else (batch, 1, *shape[1:]))
    if mode == "forward":
        net.eval()
        optimizer = loss_fn = None
    else:
        net.train()
        optimizer = parser.get_parsed_content("optimizer")
        loss_fn = None if pretext else parser.get_parsed_content("loss")

    def step() -> None:
        if optimizer is None:
            with torch.no_grad():
                inferer(x, net)
            return
        out = inferer(x, net)
        loss = out[0]["loss"] if isinstance(out, list) else out["loss"] if isinstance(out, dict) else loss_fn(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad) if optimizer is not None else 0
    return {
        "network": network, "mode": mode, "precision": precision, "batch": batch, "images_per_s": batch * steps / seconds,
        "trainable": trainable, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(rows: list[dict]) -> str:
    """Markdown: fp32 and bf16 side by side, with the bf16 / fp32 ratios."""
    by = {(r["network"], r["mode"], r["precision"]): r for r in rows}
    lines = [
        "| network | step | batch | fp32 img/s | bf16 img/s | speed ratio | fp32 peak MiB | bf16 peak MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (network, mode, precision), r in by.items():
        if precision != "fp32" or (network, mode, "bf16") not in by:
            continue
        b = by[(network, mode, "bf16")]
        lines.append(
            f"| {network} | {mode} | {r['batch']} | {r['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
            f"{b['images_per_s'] / r['images_per_s']:.2f}x | {r['peak_rss_mib']:.0f} | {b['peak_rss_mib']:.0f} | "
            f"{b['peak_rss_mib'] / r['peak_rss_mib']:.2f} |"
        )
    return "\n".join(lines)


def compare_table(baseline: list[dict], rows: list[dict]) -> str:
    """Markdown: a reference run's fp32 (e.g. an older commit's) beside this run's fp32 and bf16, as ratios."""
    ref = {(r["network"], r["mode"]): r for r in baseline if r["precision"] == "fp32"}
    by = {(r["network"], r["mode"], r["precision"]): r for r in rows}
    lines = [
        "| network | step | batch | reference fp32 img/s | fp32 img/s | bf16 img/s | fp32 / reference | bf16 / reference "
        "| peak MiB reference -> fp32, bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (network, mode), r in ref.items():
        f, b = by.get((network, mode, "fp32")), by.get((network, mode, "bf16"))
        if f is None or b is None:
            continue
        lines.append(
            f"| {network} | {mode} | {r['batch']} | {r['images_per_s']:.1f} | {f['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
            f"{f['images_per_s'] / r['images_per_s']:.2f}x | {b['images_per_s'] / r['images_per_s']:.2f}x | "
            f"{r['peak_rss_mib']:.0f} -> {f['peak_rss_mib']:.0f}, {b['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def run(networks=tuple(NETWORKS), modes=tuple(MODES), precisions=PRECISIONS, steps: int = 5, warmup: int = 2,
        threads: int = 2, batch: int | None = None, tuned_allocator: bool = True, code_root: str | None = None,
        baseline: str | None = None, out: str | None = None) -> list[dict]:
    """Benchmark every (network, mode, precision) in its own subprocess (at the stage's own batch size unless
    ``batch`` is given); print a Markdown table. ``tuned_allocator``: run with
    :data:`tpp_components.runtime.GLIBC_TUNABLES` (False: glibc's defaults, as at 8db4b03). ``code_root``: the
    checkout whose ``tpp_components`` and ``bundles/`` are timed (default this one), e.g. a worktree of an older
    commit for ratios against it (its configs without a ``precision`` run in fp32). ``baseline``: the ``--out``
    file of such a reference run, printed beside this one (:func:`compare_table`)."""
    from tpp_components.runtime import cpu_environment

    code = Path(code_root).resolve() if code_root else ROOT
    rows = []
    env = cpu_environment(threads) if tuned_allocator else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    for network in networks:
        for mode in modes:
            if not _applies(network, mode):
                continue
            for precision in precisions:
                # this file loaded by path: the timed checkout's own ``tools`` package may not have it
                child = (f"import json, torch, importlib.util as u; torch.set_num_threads({threads}); "
                         f"s = u.spec_from_file_location('benchmark_precision', {str(Path(__file__).resolve())!r}); b = u.module_from_spec(s); "
                         f"s.loader.exec_module(b); print(json.dumps(b._one({network!r}, {mode!r}, {precision!r}, {steps}, "
                         f"{warmup}, {batch!r}, {str(code / 'bundles')!r})))")
                result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=code)
                if result.returncode:
                    raise RuntimeError(f"{network} {mode} {precision} failed:\n{result.stderr[-3000:]}")
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{network:10s} {mode:12s} {precision}: {r['images_per_s']:7.1f} img/s, peak {r['peak_rss_mib']:.0f} MiB",
                      flush=True)
    print(table(rows))
    if baseline:
        print(compare_table(json.loads(Path(baseline).read_text())["rows"], rows))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"threads": threads, "steps": steps, "warmup": warmup, "rows": rows}, indent=4))
    return rows


if __name__ == "__main__":
    fire.Fire(lambda **kw: run(**kw) and None)
