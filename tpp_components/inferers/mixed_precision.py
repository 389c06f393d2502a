"""Mixed precision for every stage, on the CPU and on CUDA, through the inferer.

MONAI 1.6.1's ``SupervisedTrainer`` and ``SupervisedEvaluator`` autocast only on CUDA
(``torch.autocast("cuda", ...)`` is hard-coded in their ``_iteration``), so their ``amp`` flag does
nothing on a CPU. Every engine, whether ours or MONAI's, and MONAI Label calls the network through
an inferer, so wrapping the inferer puts one switch in front of stage 0, TPP, fine-tuning,
evaluation and inference, 2D and 3D, without touching the network: the parameters,
checkpoints, ``model.pt`` and the TorchScript export stay fp32, since autocast only changes the
dtype that each op computes in.

The network's outputs are cast back to fp32 as they leave the autocast region, so everything
after the forward pass stays in fp32: the losses (``DiceCELoss``, ``CrossEntropyLoss``), a sliding
window's accumulation buffer, post-processing and metrics. A pretext module computes its own loss
inside the forward pass; it does so in fp32 (see :mod:`tpp_components.pretext`).

The fp16 gradient scaling that CUDA fp16 needs is MONAI's own: with ``precision="fp16"`` the
bundles also set the trainer's ``amp`` (MONAI's ``GradScaler``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PRECISIONS", "MixedPrecisionInferer", "autocast_dtype", "cpu_supports_bf16"]

#: the values of a bundle's ``precision`` setting
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)  # asked on every forward pass under "auto"; the CPU does not change
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX-512 BF16 or AMX).

    Without either unit, oneDNN emulates bf16 and autocast is slower than fp32. PyTorch offers
    only these private probes (``torch.cpu._is_*``) for it; they exist since torch 2.1. A torch
    without them is treated as unsupported, which keeps the fp32 path.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device``, or None for plain fp32.

    Args:
        precision: ``"fp32"`` (no autocast), ``"bf16"``, ``"fp16"`` (CUDA only), or ``"auto"``:
            bf16 where the device computes it natively (a CUDA device with bf16 support, a CPU
            with AVX-512 BF16 or AMX), else fp32.
        device: the device the network runs on.

    Raises:
        ValueError: an unknown ``precision``, or fp16 on a device other than CUDA (CPU fp16
            autocast is emulated and slower than fp32, and it needs a gradient scaler).

    Example::

        >>> autocast_dtype("fp32", "cpu") is None
        True
    """
    _check_precision(precision)
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device, got {device}; use 'bf16' or 'fp32'.")
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_supports_bf16()
        return torch.bfloat16 if native else None
    return _DTYPES[precision]


def _to_float32(output: Any) -> Any:
    """``output`` with every fp16 / bf16 tensor cast to fp32 (dicts, lists, tuples followed; the type of a
    ``MetaTensor`` is kept; fp64 stays fp64)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output
    if isinstance(output, dict):
        return {k: _to_float32(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(v) for v in output)
    return output


class _AutocastNetwork:
    """A network call under ``torch.autocast`` whose floating outputs come back in fp32."""

    def __init__(self, network: Callable, device_type: str, dtype: torch.dtype) -> None:
        self.network = network
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = self.network(inputs, *args, **kwargs)
        return _to_float32(output)


class MixedPrecisionInferer(Inferer):
    """Run another inferer with the network's forward pass autocast to ``precision``.

    The autocast device follows the input tensor, so the same config serves CPU and GPU; the
    dtype is resolved per call by :func:`autocast_dtype`.

    Args:
        inferer: the inferer to wrap (``SimpleInferer``, ``SlidingWindowInferer``, ...);
            ``SimpleInferer()`` when None.
        precision: one of :data:`PRECISIONS`.

    Raises:
        ValueError: an unknown ``precision``.

    Example::

        >>> net = torch.nn.Conv2d(1, 2, 3)
        >>> MixedPrecisionInferer(precision="bf16")(torch.rand(1, 1, 8, 8), net).dtype
        torch.float32
        >>> net3d = torch.nn.Conv3d(1, 2, 3)
        >>> MixedPrecisionInferer(precision="bf16")(torch.rand(1, 1, 8, 8, 8), net3d).shape
        torch.Size([1, 2, 6, 6, 6])
    """

    def __init__(self, inferer: Inferer | None = None, precision: str = "auto") -> None:
        _check_precision(precision)
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        dtype = autocast_dtype(self.precision, inputs.device)
        if dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        return self.inferer(inputs, _AutocastNetwork(network, inputs.device.type, dtype), *args, **kwargs)
