"""Engines built on ``monai.engines``."""

from tpp_components.engines.pretext import PretextEvaluator, PretextLoss, PretextTrainer, lower_is_better, pretext_loss
