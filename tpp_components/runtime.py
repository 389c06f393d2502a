"""The process environment that makes CPU training fast: glibc's allocator kept from returning memory.

With glibc's defaults, every tensor above 32 MB is its own ``mmap`` and goes back to the kernel when
freed, so each training step faults in and zeroes its large activations again: a LiteMedSAM LoRA
step at batch 32 spent a third of its time in the kernel. A larger mmap threshold (only settable
through ``GLIBC_TUNABLES``, at process start: ``mallopt`` caps it at 32 MB) and trim threshold keep
that memory in the heap for reuse. It costs resident memory: the heap keeps what it once held, so the
peak grows where large tensors of many sizes come and go (fp32 3D SwinUNETR stage-0 step: 4.1 -> 6.7 GiB
for about 1.5x the speed; bf16 LiteMedSAM steps at batch 32: LoRA +0.1 GiB for 1.26x, TPP +0.6 GiB for
1.46x). Measured in the README
(``tools/benchmark_precision.py``). ``run_tests.sh``, ``run_demo.sh`` and the study tools set it; for
your own runs (``unset GLIBC_TUNABLES`` returns to glibc's defaults)::

    export $(python -m tpp_components.runtime)
    python -m monai.bundle run --config_file configs/train.json ...
"""

from __future__ import annotations

import os

__all__ = ["GLIBC_TUNABLES", "cpu_environment"]

#: mmap threshold 4 GiB, trim threshold 16 GiB (glibc >= 2.26 reads these at start-up; others ignore them)
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def cpu_environment(threads: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with ``GLIBC_TUNABLES`` added unless already set, and torch's
    thread count fixed when ``threads`` is given: the environment of a child process that trains on a CPU."""
    env = dict(os.environ if base is None else base)
    env.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


if __name__ == "__main__":
    print(f"GLIBC_TUNABLES={GLIBC_TUNABLES}")
