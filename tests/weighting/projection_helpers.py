"""Helpers for the tests of the projection / manipulation methods (not a test module).

Used by test_projection_common.py and by methods/test_<method>.py of PCGrad, GradDrop, GradVac,
Aligned-MTL, ConFIG, MoCo and GradNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.nn import ENCODERS, build_model
from mtlkit.tasks import Task
from mtlkit.weighting import get
from mtlkit.weighting.gradient import GradientWeighting

#: every method of this area, with the options the shared tests build it with
METHODS: dict[str, dict[str, Any]] = {
    "pcgrad": {},
    "graddrop": {},
    "gradvac": {},
    "aligned_mtl": {},
    "config": {},
    "moco": {},
    "gradnorm": {},
}
#: the methods whose result does not depend on a random task order
DETERMINISTIC_ORDER = ["graddrop", "aligned_mtl", "config", "moco", "gradnorm"]


def build(name: str, num_tasks: int, **options: Any) -> GradientWeighting:
    """A fresh method; GradNorm is given equal (unit) losses so :meth:`aggregate` can run."""
    method = get(name, **{**METHODS[name], **options})
    assert isinstance(method, GradientWeighting)
    if name == "gradnorm":
        method.observe_losses(torch.ones(num_tasks, dtype=torch.float64))  # type: ignore[attr-defined]
    return method


def tiny_model(num_tasks: int = 3, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Tensor]]:
    """A small (float32) hard-parameter-sharing MLP and one batch of regression losses."""
    torch.manual_seed(seed)
    tasks = [Task(f"t{i}", "regression") for i in range(num_tasks)]
    encoder = ENCODERS.build("mlp", in_features=4, hidden=(5, 3))
    model = build_model("hps", encoder, tasks)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g)
    y = torch.randn(6, num_tasks, generator=g)
    return model, {"x": x, "y": y}


def losses_of(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Mean squared errors per task, and the shared representation."""
    outputs, rep = model.forward_with_representation(batch["x"])  # type: ignore[operator]
    losses = {
        name: ((out.squeeze(-1) - batch["y"][:, i]) ** 2).mean()
        for i, (name, out) in enumerate(outputs.items())
    }
    return losses, rep


def explicit_jacobian(losses: dict[str, Tensor], params: list[Tensor]) -> Tensor:
    """J (T × P) by one autograd call per task: the reference the engine is compared with."""
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def shared_grad(model: torch.nn.Module) -> Tensor:
    """The flattened ``.grad`` of the model's shared parameters."""
    return torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])  # type: ignore[operator]


def conflicting_pair(p: int, seed: int = 0) -> Tensor:
    """Two random gradients with a negative inner product that are not anti-parallel (the
    two-task ``strongly_conflicting`` sample is exactly anti-parallel)."""
    jac = torch.randn(2, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if jac[0] @ jac[1] > 0:
        jac[1] = -jac[1]
    return jac
