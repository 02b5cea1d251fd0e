"""Balance two tasks inside a PyTorch Lightning module with any mtlkit method (extra
``lightning``): a 2-epoch fit, a checkpoint, and a resume for 2 more epochs.

Run: python examples/lightning_mtl.py [--method uw] [--out runs/lightning]
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from mtlkit.integrations.lightning import MTLModule
from mtlkit.weighting import get


class TwoTasks(MTLModule):
    """A shared trunk, a regression head (price) and a binary head (sold)."""

    def __init__(self, method: str) -> None:
        super().__init__(get(method), tasks=["price", "sold"])
        self.trunk = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.heads = nn.ModuleDict({"price": nn.Linear(32, 1), "sold": nn.Linear(32, 1)})

    def task_losses(self, batch):
        x, price, sold = batch
        rep = self.trunk(x)
        return {
            "price": nn.functional.mse_loss(self.heads["price"](rep), price),
            "sold": nn.functional.binary_cross_entropy_with_logits(self.heads["sold"](rep), sold),
        }

    def shared_parameters(self):
        return self.trunk

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def data(seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 8, generator=g)
    price = (2 * x[:, :1] + x[:, 2:3] * x[:, 3:4]).float()
    sold = (x[:, :1] + x[:, 1:2] > 0).float()
    dataset = torch.utils.data.TensorDataset(x, price, sold)
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="uw")
    parser.add_argument("--out", default="runs/lightning")
    args = parser.parse_args()
    torch.manual_seed(0)

    def trainer(epochs: int) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=args.out,
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=args.out, save_last=True)],
        )

    model = TwoTasks(args.method)
    first = trainer(2)
    first.fit(model, data())
    print("after 2 epochs:", {k: round(float(v), 4) for k, v in first.logged_metrics.items()})
    resumed = trainer(4)
    resumed.fit(TwoTasks(args.method), data(), ckpt_path=f"{args.out}/last.ckpt")
    print("resumed to 4:  ", {k: round(float(v), 4) for k, v in resumed.logged_metrics.items()})


if __name__ == "__main__":
    main()
