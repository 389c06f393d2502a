"""The precision benchmark's tables: fp32 and bf16 side by side, and against a reference run, as ratios."""

from __future__ import annotations

from tools.benchmark_precision import MODES, NETWORKS, _applies, compare_table, table


def _row(network: str, mode: str, precision: str, speed: float, memory: float) -> dict:
    return {"network": network, "mode": mode, "precision": precision, "batch": 32, "images_per_s": speed,
            "trainable": 1, "peak_rss_mib": memory}


def test_tables_pair_precisions_and_reference():
    rows = [_row("vit", "lora_step", "fp32", 100.0, 800.0), _row("vit", "lora_step", "bf16", 180.0, 700.0),
            _row("vit", "forward", "fp32", 50.0, 600.0)]
    text = table(rows)
    assert "| vit | lora_step | 32 | 100.0 | 180.0 | 1.80x | 800 | 700 | 0.88 |" in text
    assert "forward" not in text  # no bf16 row to pair with
    reference = [_row("vit", "lora_step", "fp32", 60.0, 900.0)]
    assert "| vit | lora_step | 32 | 60.0 | 100.0 | 180.0 | 1.67x | 3.00x | 900 -> 800, 700 |" in compare_table(reference, rows)


def test_every_network_and_mode_is_known():
    assert set(NETWORKS) >= {"tinyvit", "vit", "swinunetr"} and set(MODES) >= {"forward", "lora_step", "tpp_step", "full_step"}
    assert not _applies("tinyvit", "stage0_step") and _applies("vit", "stage0_step")
