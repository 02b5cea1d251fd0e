"""Nested training state ↔ (tensors for safetensors, JSON skeleton): checkpoints never pickle.

:func:`split_state` walks dicts, lists and tuples; each tensor is replaced by
``{"__tensor__": key}`` and stored under ``key`` in a flat tensor dict, tuples become
``{"__tuple__": [...]}`` so they come back as tuples. Everything else must be JSON-ready
(None, bool, int, float, str).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

TENSOR, TUPLE = "__tensor__", "__tuple__"
#: the JSON scalars a sequence may hold to be stored as it is (Python's RNG state: 625 ints)
_SCALARS = frozenset({type(None), bool, int, float, str})


def split_state(state: Any, prefix: str = "s") -> tuple[Any, dict[str, Tensor]]:
    """The JSON skeleton of ``state`` and the tensors it refers to."""
    tensors: dict[str, Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, Tensor):
            key = f"{path}"
            tensors[key] = obj.detach().cpu().contiguous()
            return {TENSOR: key}
        if isinstance(obj, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(obj)), path)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str | int):
                    raise TypeError(f"state key {k!r} at {path} is neither str nor int")
                out[f"{type(k).__name__[0]}:{k}"] = walk(v, f"{path}.{k}")
            return out
        if isinstance(obj, tuple | list):
            if all(type(v) in _SCALARS for v in obj):  # nothing to walk into
                items = list(obj)
            else:
                items = [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
            return {TUPLE: items} if isinstance(obj, tuple) else items
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")

    return walk(state, prefix), tensors


def join_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Rebuild what :func:`split_state` took apart."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {TENSOR}:
            return tensors[skeleton[TENSOR]]
        if set(skeleton) == {TUPLE}:
            return tuple(join_state(v, tensors) for v in skeleton[TUPLE])
        out: dict[Any, Any] = {}
        for k, v in skeleton.items():
            kind, _, name = k.partition(":")
            out[int(name) if kind == "i" else name] = join_state(v, tensors)
        return out
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton
