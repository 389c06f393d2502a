"""Throughput and peak memory of the LiteMedSAM TinyViT encoder: forward, PEFT step, TPP step, full step.

Each (mode, size) runs in its own process so that its peak resident memory is its own. Images
are random tensors (no loading), batch ``batch``; the numbers are images per second over
``steps`` timed steps after ``warmup`` untimed ones. Usage::

    python tools/benchmark_encoder.py --sizes "[64,128]" --threads 2 --out runs/benchmark_encoder.json
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

#: what each mode runs; LoRA r 8 on attention + MLP (the bundle's LiteMedSAM default)
MODES = {
    "forward": "frozen encoder, no grad (feature extraction / inference)",
    "lora_step": "LoRA (attention + MLP, all stages) fine-tuning step: forward, backward, AdamW",
    "lora_late_step": "LoRA in the last two stages only (preset 'late_attention_mlp')",
    "tpp_step": "TPP step: SimMIM (mask token, 8 px units, 60 %) on LoRA parameters + decoder",
    "full_step": "full fine-tuning step (every parameter, BatchNorm in training mode)",
}


def _one(mode: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    import torch

    from tpp_components.networks import LITEMEDSAM_ENCODER, TinyViTClassifier, build_network, litemedsam_checkpoint
    from tpp_components.pretext import SimMIM

    torch.manual_seed(0)
    cfg = {k: v for k, v in LITEMEDSAM_ENCODER.items() if k != "neck_channels"}
    backbone = TinyViTClassifier(num_classes=3, **cfg)
    weights = dict(backbone_weights=litemedsam_checkpoint(), key_map="litemedsam_trunk")
    lora = {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention_mlp"}
    if mode == "forward":
        net = build_network(backbone, peft=None, freeze_backbone=True, **weights).eval()
    elif mode in ("lora_step", "tpp_step"):
        net = build_network(backbone, peft=lora, train_head=mode != "tpp_step", **weights)
    elif mode == "lora_late_step":
        net = build_network(backbone, peft={**lora, "target_modules": "late_attention_mlp"}, **weights)
    elif mode == "full_step":
        net = build_network(backbone, peft=None, freeze_backbone=False, **weights)
    else:
        raise ValueError(f"unknown mode '{mode}'; expected one of {sorted(MODES)}.")
    model = SimMIM(net, 2, 3, mask_patch=8) if mode == "tpp_step" else net
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params and mode != "forward" else None
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 3, (batch,))
    model.train(mode != "forward")

    def step() -> None:
        if optimizer is None:
            with torch.no_grad():
                model(x)
            return
        out = model(x)
        loss = out["loss"] if isinstance(out, dict) else torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {
        "mode": mode, "size": size, "batch": batch, "images_per_s": batch * steps / seconds,
        "trainable": sum(p.numel() for p in params), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(sizes=(64, 128), modes=tuple(MODES), batch: int = 16, steps: int = 3, warmup: int = 1, threads: int = 2,
        out: str | None = None) -> list[dict]:
    """Benchmark every mode at every size, one subprocess each; print a Markdown table."""
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for size in sizes:
        for mode in modes:
            code = (f"import json, torch; torch.set_num_threads({threads}); import tools.benchmark_encoder as b; "
                    f"print(json.dumps(b._one({mode!r}, {size}, {batch}, {steps}, {warmup})))")
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
            if result.returncode:
                raise RuntimeError(f"{mode} at {size} px failed:\n{result.stderr[-2000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"{mode:15s} {size:4d} px: {rows[-1]['images_per_s']:6.1f} img/s, peak {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    lines = ["| mode | px | images/s | peak RSS (MiB) | trainable |", "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['size']} | {r['images_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['trainable']:,} |" for r in rows]
    print("\n".join(lines))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"threads": threads, "batch": batch, "steps": steps, "rows": rows}, indent=4))
    return rows


if __name__ == "__main__":
    fire.Fire(lambda **kw: run(**kw) and None)
