"""Tiny models and toy methods shared by the weighting tests (not a test module).

:class:`TinyHPS` is hard parameter sharing (an encoder, then a small head per task) with an
MLP, a CNN with batch norm, or an embedding encoder (:data:`MODELS`); :func:`task_losses`
gives one loss per task and the representation. :class:`NormalisedSum` (a Gramian method) and
:class:`RowClip` (a Jacobian aggregator) are test-only methods for the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkit.weighting.gradient import GramianWeighting, JacobianAggregator


class TinyHPS(nn.Module):
    """Hard parameter sharing: ``encoder`` then one small head per task."""

    def __init__(self, encoder: nn.Module, width: int, tasks: int, head_out: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 4), nn.Tanh(), nn.Linear(4, head_out))
            for _ in range(tasks)
        )
        self.task_names = [f"t{i}" for i in range(tasks)]

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def forward_with_representation(self, x: object) -> tuple[dict[str, Tensor], Tensor]:
        rep = self.encoder(x)
        return {n: h(rep) for n, h in zip(self.task_names, self.heads, strict=True)}, rep

    def forward(self, x: object) -> dict[str, Tensor]:
        return self.forward_with_representation(x)[0]


def mlp_model(tasks: int = 3, seed: int = 0) -> tuple[TinyHPS, Tensor]:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh())
    return TinyHPS(enc, 5, tasks).double(), torch.randn(9, 6, dtype=torch.float64)


def cnn_model(tasks: int = 3, seed: int = 0) -> tuple[TinyHPS, Tensor]:
    """Conv-BatchNorm-ReLU blocks (one strided, one with bias), pooling, a linear projection."""
    torch.manual_seed(seed)
    enc = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    return TinyHPS(enc, 5, tasks).double(), torch.randn(4, 2, 7, 7, dtype=torch.float64)


class EmbeddingEncoder(nn.Module):
    """Token embeddings, mean-pooled, then a LayerNorm and a Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.tanh(self.out(self.norm(self.embedding(tokens).mean(dim=1))))


def embedding_model(tasks: int = 3, seed: int = 0) -> tuple[TinyHPS, Tensor]:
    torch.manual_seed(seed)
    return TinyHPS(EmbeddingEncoder(), 5, tasks).double(), torch.randint(0, 11, (8, 4))


MODELS = {"mlp": mlp_model, "cnn_bn": cnn_model, "embedding": embedding_model}


def task_losses(model: TinyHPS, x: object) -> tuple[Tensor, Tensor]:
    """A loss per task (mean squared output, scaled differently) and the representation."""
    outs, rep = model.forward_with_representation(x)
    losses = torch.stack([(k + 1) * o.pow(2).mean() for k, o in enumerate(outs.values())])
    return losses, rep


def as_dict(model: TinyHPS, losses: Tensor) -> dict[str, Tensor]:
    return dict(zip(model.task_names, losses.unbind(), strict=True))


def shared_grad(model: TinyHPS) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])


def vec(values: dict[str, float]) -> Tensor:
    return torch.tensor(list(values.values()), dtype=torch.float64)


def head_grads(model: TinyHPS) -> list[Tensor]:
    return [p.grad.clone() for p in model.heads.parameters()]


class NormalisedSum(GramianWeighting):
    """α_i = 1/‖g_i‖: a weight that depends non-linearly on G (test-only method)."""

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        return 1.0 / gram.diagonal().clamp_min(1e-30).sqrt()


class RowClip(JacobianAggregator):
    """Sum of the rows, each clipped to norm ≤ 1 along its own direction (test-only method)."""

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        norms = jacobian.norm(dim=1, keepdim=True).clamp_min(1.0)
        return (jacobian / norms).sum(0)
