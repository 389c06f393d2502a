"""Ignite handlers and checkpoint state views used by the bundle configs."""

from tpp_components.handlers.checkpoints import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    latest_checkpoint,
    resume_checkpoint,
    supersede_checkpoints,
)
from tpp_components.handlers.class_predictions import ClassPredictionsSaver
from tpp_components.handlers.classification_report import ClassificationReport, classification_metrics
from tpp_components.handlers.curves import CurvesPlotter
from tpp_components.handlers.head_norm import HeadNormStatistics
from tpp_components.handlers.non_finite import NonFiniteLossError, StopOnNonFiniteLoss
from tpp_components.handlers.resume_state import BestMetricState, RandomState, RunSettings, file_digest
from tpp_components.handlers.states import BackboneState, DeployableState, PretextDecoderState, TrainableState
from tpp_components.handlers.target_parameters_saver import TargetParametersSaver
