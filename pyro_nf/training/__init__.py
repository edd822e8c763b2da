"""The one training loop (:func:`train`) that every fitter hands its loss closure to."""

from .loop import (
    EarlyStopping,
    History,
    NaNRestoreWarning,
    TrainingDivergedError,
    auto_clip_threshold,
    train,
)

__all__ = [
    "EarlyStopping",
    "History",
    "NaNRestoreWarning",
    "TrainingDivergedError",
    "auto_clip_threshold",
    "train",
]
