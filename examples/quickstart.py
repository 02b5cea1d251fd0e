"""The classic two-task example, written twice: a plain PyTorch loop and the Trainer.

A shared trunk Linear(100, 50)-ReLU-Linear(50, 20)-ReLU feeds a 10-class classification head
(cross-entropy) and a 5-dimensional regression head (MSE). The total loss is
L = α·L1 + β·L2 (static weights). Both versions use the same mtlkit pieces and give the same
losses for the same seed.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import torch

from mtlkit import Task, Trainer, build_model
from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.weighting import get

ALPHA, BETA = 1.0, 0.5


def make_data(n: int = 2000, seed: int = 0) -> TensorSplit:
    """Inputs x ∈ R^100; a class from a random linear map, a 5-d regression target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 100, generator=g)
    w_class = torch.randn(100, 10, generator=g)
    w_reg = torch.randn(100, 5, generator=g) / 10
    targets = {
        "digit": (x @ w_class).argmax(dim=1),
        "coords": x @ w_reg + 0.1 * torch.randn(n, 5, generator=g),
    }
    return TensorSplit(x, targets, "train")


def make_model(seed: int) -> tuple[list[Task], torch.nn.Module]:
    """The shared trunk with its two heads, initialised from ``seed``."""
    tasks = [
        Task("digit", "classification", num_outputs=10, weight=ALPHA),
        Task("coords", "regression", num_outputs=5, weight=BETA),
    ]
    torch.manual_seed(seed)
    trunk = MLPEncoder(100, hidden=[50, 20])  # Linear(100,50)-ReLU-Linear(50,20)-ReLU
    return tasks, build_model("hps", trunk, tasks)


def train_plain(epochs: int = 3, seed: int = 0) -> list[dict[str, float]]:
    """A plain PyTorch loop: mtlkit gives the tasks, the model and the loss weighting."""
    tasks, model = make_model(seed)
    weighting = get("static", weights={"digit": ALPHA, "coords": BETA})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    loader = TensorLoader(make_data(), batch_size=64, shuffle=True)
    history = []
    for _ in range(epochs):
        sums = {t.name: 0.0 for t in tasks}
        for inputs, targets in loader:
            outputs = model(inputs)
            losses = {t.name: t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks}
            optimizer.zero_grad()
            weighting.backward(losses, model)  # L = α·L1 + β·L2, one backward pass
            optimizer.step()
            for name, loss in losses.items():
                sums[name] += loss.item()
        history.append({name: total / len(loader) for name, total in sums.items()})
    return history


def train_with_trainer(epochs: int = 3, seed: int = 0) -> list[dict[str, float]]:
    """The same run through the Trainer (task weights give the static α, β)."""
    tasks, model = make_model(seed)
    weighting = get("static", weights={"digit": ALPHA, "coords": BETA})
    trainer = Trainer(
        model,
        tasks,
        weighting,
        epochs=epochs,
        seed=seed,
        device="cpu",
        optimizer="adam",
        optimizer_params={"lr": 1e-3},
        progress=False,
    )
    result = trainer.fit(TensorLoader(make_data(), batch_size=64, shuffle=True))
    return [record["train"]["loss"] for record in result.history]


if __name__ == "__main__":
    for name, history in (("plain loop", train_plain()), ("Trainer", train_with_trainer())):
        print(name)
        for epoch, losses in enumerate(history, 1):
            print(f"  epoch {epoch}: " + ", ".join(f"{t}={v:.4f}" for t, v in losses.items()))
