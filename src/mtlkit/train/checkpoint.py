"""Checkpoints as safetensors plus JSON, written atomically; nothing is ever unpickled.

A checkpoint is a folder with ``model.safetensors`` (the model's weights),
``state.safetensors`` (the tensors of the training state: optimiser moments, RNG streams,
the weighting method's state) and ``state.json`` (everything else, with references to those
tensors). A new checkpoint is written to a temporary folder and swapped in with renames, so
a crash never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from mtlkit.errors import MtlkitError
from mtlkit.train.state import join_state, split_state

MODEL_FILE, TENSORS_FILE, JSON_FILE = "model.safetensors", "state.safetensors", "state.json"


def model_tensors(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The model's state dict (or a state dict) as contiguous CPU tensors (safetensors needs
    no aliasing)."""
    state = model if isinstance(model, Mapping) else model.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    folder: Path, model: nn.Module | Mapping[str, Any], state: dict[str, Any]
) -> None:
    """Write ``model`` (or its state dict) and the training ``state`` to ``folder``,
    replacing it atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_tensors(model), str(tmp / MODEL_FILE))
    skeleton, tensors = split_state(state)
    save_file(tensors, str(tmp / TENSORS_FILE))
    (tmp / JSON_FILE).write_text(json.dumps(skeleton), encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path:
    """The checkpoint folder to read: ``folder``, or the previous one if a swap was cut short."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f".{folder.name}.old")):
        if (candidate / JSON_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    raise MtlkitError(f"no checkpoint in {folder} (expected {MODEL_FILE} and {JSON_FILE})")


def load_model_weights(folder: Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` from a checkpoint folder into ``model``."""
    weights = load_file(str(Path(folder) / MODEL_FILE))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise MtlkitError(
            f"checkpoint {folder} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load the model weights and return the training state of a checkpoint."""
    folder = find_checkpoint(folder)
    load_model_weights(folder, model)
    skeleton = json.loads((folder / JSON_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / TENSORS_FILE)) if (folder / TENSORS_FILE).exists() else {}
    return join_state(skeleton, tensors)
