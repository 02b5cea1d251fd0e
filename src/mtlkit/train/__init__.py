"""Training: the Trainer, its strategies and precision, checkpoints, seeding and logging."""

from mtlkit.train.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.train.precision import Precision
from mtlkit.train.seed import seed_everything
from mtlkit.train.selection import Monitor
from mtlkit.train.strategy import DataParallel, SingleProcess, Strategy
from mtlkit.train.trainer import FitResult, Trainer

__all__ = [
    "DataParallel",
    "FitResult",
    "Monitor",
    "Precision",
    "SingleProcess",
    "Strategy",
    "Trainer",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]
