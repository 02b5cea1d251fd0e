"""Training: the Trainer, checkpoints, seeding and logging."""

from mtlkit.train.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.train.seed import seed_everything
from mtlkit.train.selection import Monitor
from mtlkit.train.trainer import FitResult, Trainer

__all__ = [
    "FitResult",
    "Monitor",
    "Trainer",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]
