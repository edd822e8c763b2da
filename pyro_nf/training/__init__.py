"""The one training loop (:func:`train`) that every fitter hands its loss closure to.

Its parts live in one module each: :mod:`.loop` (:func:`train`), :mod:`.history`,
:mod:`.stopping`, :mod:`.optim`, :mod:`.guard`, :mod:`.checkpoint`, :mod:`.integrity`
(integrity records and run fingerprints of saved files), :mod:`.runinfo` (argument checks,
the run's fingerprint, Ctrl-C), :mod:`.progress` and :mod:`.distributed` (data-parallel
training with ``torch.distributed``).
"""

from .checkpoint import CheckpointWriteError
from .distributed import (
    DistributedContext,
    free_port,
    init_distributed,
    launch_local,
    shard,
    shutdown,
)
from .loop import (
    EarlyStopping,
    History,
    NaNRestoreWarning,
    Plateau,
    TrainingDivergedError,
    atomic_save,
    auto_clip_threshold,
    train,
)

__all__ = [
    "CheckpointWriteError",
    "DistributedContext",
    "EarlyStopping",
    "History",
    "NaNRestoreWarning",
    "Plateau",
    "TrainingDivergedError",
    "atomic_save",
    "auto_clip_threshold",
    "free_port",
    "init_distributed",
    "launch_local",
    "shard",
    "shutdown",
    "train",
]
