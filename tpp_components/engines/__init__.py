"""Engines built on ``monai.engines``."""

from tpp_components.engines.pretext import (
    PRETEXT_KEY_METRIC,
    PRETEXT_NEGATIVE_SIGN,
    PretextEvaluator,
    PretextLoss,
    PretextTrainer,
    lower_is_better,
    pretext_loss,
)
