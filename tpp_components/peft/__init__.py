"""PEFT methods behind one registry, and the target-parameter contract."""

# importing the method modules registers them
from tpp_components.peft import adapter, bitfit, lora, prompt, ssf  # noqa: F401
from tpp_components.peft.base import InjectionError, PeftMethod, PeftMethodConfig, is_under
from tpp_components.peft.hf_adapter import PeftAdapterError, export_peft_adapter, import_peft_adapter, peft_lora_config
from tpp_components.peft.freeze import freeze_running_stats, has_running_stats, release_running_stats
from tpp_components.peft.inject import get_peft_method, inject, merge, unwrap
from tpp_components.peft.presets import TARGET_PRESETS
from tpp_components.peft.registry import available_methods, create_method, get_method_class, register_method
from tpp_components.peft.target_parameters import (
    TargetParameterError,
    backbone_fingerprint,
    backbone_parameters,
    load_target_parameters,
    read_manifest,
    save_target_parameters,
    set_trainable,
    target_parameters,
)
from tpp_components.peft.tpp_start import start_from_tpp
