"""Inferers used by the bundle configs."""

from tpp_components.inferers.mixed_precision import PRECISIONS, MixedPrecisionInferer, autocast_dtype, cpu_supports_bf16
