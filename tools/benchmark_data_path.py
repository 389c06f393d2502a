"""How long a bundle's training stage waits for data: the loading share of real epochs, end to end.

Runs a stage of a bundle exactly as ``monai.bundle run`` does (``ConfigWorkflow``, the bundle's own
configs and a real datalist), with ignite's ``BasicTimeProfiler`` on the trainer: ``dataflow`` is the
time the trainer waits for the next batch (reading, decoding, resizing and augmenting inside the
dataloader), ``processing`` the steps themselves. Validation and other handlers are reported apart.
The first epoch is left out of the rates (it pays one-off costs such as caching and warm-up).
Usage, from the repository root::

    python tools/benchmark_data_path.py --bundle_root bundles/breast_us_classification \\
        --configs "['train.json','litemedsam.json']" --datalist busi.json --epochs 3 --threads 2 \\
        --overrides "{'init': 'standard', 'precision': 'bf16'}"
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import fire
import torch


def profile(bundle_root: str, configs=("train.json",), datalist: str = "", epochs: int = 3, threads: int = 2,
            overrides: dict | None = None, out: str | None = None) -> dict:
    """Profile ``epochs`` training epochs of a bundle stage and print the loading share.

    Args:
        bundle_root: the bundle folder.
        configs: config files merged left to right, relative to ``<bundle_root>/configs``.
        datalist: the stage's datalist (``--datalist`` of the bundle).
        epochs: epochs to run; rates are computed over all but the first.
        threads: torch's thread count.
        overrides: further config overrides (``{"precision": "bf16"}``, ...).
        out: optional JSON file for the result.

    Returns:
        ``{"train_images_per_s", "dataflow_share", "seconds_per_epoch", "peak_rss_mib", ...}``, steady-state
        epochs only (the peak resident memory is the whole run's).
    """
    from ignite.engine import Events
    from ignite.handlers import BasicTimeProfiler
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(threads)
    root = Path(bundle_root).resolve()
    files = [str(root / "configs" / c) for c in configs]
    settings = {"datalist": str(Path(datalist).resolve()), "num_epochs": epochs, "progress_bar": False,
                "output_dir": str(root / "logs" / "benchmark_data_path"), "ckpt_dir": str(root / "logs" / "benchmark_data_path"),
                **(overrides or {})}
    start = time.perf_counter()
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type="train", bundle_root=str(root),
                        meta_file=str(root / "configs" / "metadata.json"), logging_file=str(root / "configs" / "logging.conf"),
                        **settings)
    wf.initialize()
    setup_s = time.perf_counter() - start
    trainer = wf.parser.get_parsed_content("train#trainer")
    profiler = BasicTimeProfiler()
    profiler.attach(trainer)
    marks: list[tuple[float, float, float, int]] = []  # per epoch: dataflow, processing, wall, images

    def mark(engine) -> None:
        marks.append((float(profiler.dataflow_times.sum()), float(profiler.processing_times.sum()), time.perf_counter(),
                      engine.state.epoch_length * wf.parser["train#dataloader#batch_size"]))

    trainer.add_event_handler(Events.EPOCH_STARTED, mark)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, mark)
    wf.run()
    wf.finalize()
    # pairs (start, end) per epoch; the profiler's sums are cumulative within the run
    epochs_seen = [(marks[i], marks[i + 1]) for i in range(0, len(marks) - 1, 2)]
    steady = epochs_seen[1:] or epochs_seen
    data = sum(e[0] - s[0] for s, e in steady)
    proc = sum(e[1] - s[1] for s, e in steady)
    wall = sum(e[2] - s[2] for s, e in steady)
    images = sum(s[3] for s, _ in steady)
    result = {
        "bundle": root.name, "configs": list(configs), "overrides": overrides or {}, "threads": threads,
        "epochs_measured": len(steady), "setup_s": setup_s, "seconds_per_epoch": wall / len(steady),
        "train_images_per_s": images / (data + proc), "dataflow_share": data / (data + proc),
        "other_share_of_epoch": 1 - (data + proc) / wall,
        # the process's peak resident set: the stage's memory as a user's `ps` or `/usr/bin/time -v` sees it
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=4))
    return result


if __name__ == "__main__":
    fire.Fire(lambda **kw: profile(**kw) and None)
