"""Every registered weighting method, built for the registry-driven suites (not a test module).

:data:`METHODS` lists every registered name (after importing every module of
``mtlkit.weighting``, so none is missed); :func:`make` builds one with the few
hyper-parameters it needs; :func:`losses_of` and :func:`step` run it on a :class:`TinyHPS`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import mtlkit.weighting as weighting_pkg
from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradient import GradientWeighting
from tests.weighting._models import TinyHPS

for _info in pkgutil.iter_modules(weighting_pkg.__path__):
    importlib.import_module(f"mtlkit.weighting.{_info.name}")


def _first_gradient_method() -> str:
    return next(n for n in WEIGHTINGS.names() if issubclass_safe(WEIGHTINGS.lookup(n)))


def issubclass_safe(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, GradientWeighting)


#: documented exceptions: the hyper-parameters a method needs to be built
BUILD_ARGS: dict[str, Callable[[], dict[str, Any]]] = {
    "compose": lambda: {"weighting": "uw", "aggregator": _first_gradient_method()},
}


def _db_mtl_log(losses: Tensor) -> Tensor:
    from mtlkit.weighting.db_mtl import LOG_EPS

    return torch.log(losses + LOG_EPS)


#: documented exceptions: methods whose Jacobian is of transformed losses (DB-MTL: log L_i)
LOSS_TRANSFORM: dict[str, Callable[[Tensor], Tensor]] = {"db_mtl": _db_mtl_log}

METHODS = WEIGHTINGS.names()
SUM_SCALE = re.compile(r"identical gradients g(?:,)? (?:give|the update is) T·g\b")


def make(name: str) -> Weighting:
    return WEIGHTINGS.build(name, **BUILD_ARGS.get(name, dict)())


def is_gradient(method: Weighting) -> bool:
    return isinstance(method, GradientWeighting)


def randomised(name: str) -> bool:
    return "seed" in inspect.signature(WEIGHTINGS.lookup(name)).parameters


def losses_of(model: TinyHPS, x: Tensor, order: list[str] | None = None) -> dict[str, Tensor]:
    outs = model(x)
    losses = {t: (k + 1) * o.pow(2).mean() for k, (t, o) in enumerate(outs.items())}
    return {t: losses[t] for t in (order or list(losses))}


def step(method: Weighting, model: TinyHPS, losses: dict[str, Tensor]) -> tuple[Any, Tensor]:
    model.zero_grad()
    record = method.backward(losses, model)
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return record, grads


def bound(method: Weighting, model: TinyHPS) -> Weighting:
    method.bind(model.task_names)
    return method
