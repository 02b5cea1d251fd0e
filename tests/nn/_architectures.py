"""Helpers shared by the ``test_architectures*`` files and ``test_encoders_basic.py``: tiny
tasks, encoders, inputs, targets and models of every architecture, their losses and per-task
gradients, and the ``one_thread`` fixture. Not a test module: test modules import from here,
never from one another.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlkit.nn.architectures import ARCHITECTURES, MTLModel, build_model
from mtlkit.nn.encoders import ConvEncoder, MLPEncoder
from mtlkit.tasks import Task

FEATURES = 5
ENCODER_KINDS = ("mlp", "cnn")
#: small settings for each architecture (several levels/experts, so every rule is exercised)
ARCH_PARAMS: dict[str, dict[str, Any]] = {
    "hps": {},
    "mmoe": {"num_experts": 3, "expert_hidden": (6,)},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 1, "expert_hidden": (6,)},
    "ple": {"num_levels": 3, "num_shared_experts": 1, "num_task_experts": 2, "expert_hidden": (6,)},
    "dselect_k": {"num_experts": 5, "k": 2, "expert_hidden": (6,)},
    "cross_stitch": {},
    "mtan": {},
}
ARCHS = ARCHITECTURES.names()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tasks(n: int = 2) -> list[Task]:
    """Up to three tasks of different kinds."""
    every = [
        Task("a", "classification", num_outputs=3),
        Task("b", "regression"),
        Task("c", "binary"),
    ]
    return every[:n]


def make_encoder(kind: str) -> nn.Module:
    if kind == "mlp":
        return MLPEncoder(FEATURES, hidden=(8, 6))
    return ConvEncoder(1, channels=(4, 6), out_features=8)


def make_inputs(kind: str, batch: int = 6, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, FEATURES) if kind == "mlp" else (batch, 1, 8, 8)
    return torch.randn(shape, generator=g)


def make_targets(tasks: list[Task], batch: int = 6, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for t in tasks:
        if t.kind == "classification":
            out[t.name] = torch.randint(0, t.num_outputs, (batch,), generator=g)
        elif t.kind == "binary":
            out[t.name] = torch.randint(0, 2, (batch,), generator=g).float()
        else:
            out[t.name] = torch.randn(batch, generator=g)
    return out


def make_model(arch: str, kind: str = "mlp", n_tasks: int = 2, seed: int = 0, **params: Any):
    torch.manual_seed(seed)
    options = {**ARCH_PARAMS.get(arch, {}), **params}
    return build_model(arch, make_encoder(kind), make_tasks(n_tasks), **options)


def losses_of(model: MTLModel, kind: str, n_tasks: int = 2, seed: int = 0) -> dict[str, Tensor]:
    tasks = make_tasks(n_tasks)
    outputs = model(make_inputs(kind, seed=seed))
    targets = make_targets(tasks, seed=seed + 1)
    return {t.name: t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks}


def grads_of_task(model: MTLModel, kind: str, task: str, n_tasks: int = 2) -> dict[int, Tensor]:
    """id(parameter) → gradient of ``task``'s loss alone (zeros where it does not reach)."""
    model.zero_grad(set_to_none=True)
    losses_of(model, kind, n_tasks)[task].backward()
    return {
        id(p): (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for p in model.parameters()
    }
