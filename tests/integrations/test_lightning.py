"""mtlkit inside real PyTorch Lightning: a 2-epoch fit, a checkpoint, a resume that continues
exactly, learnable method parameters optimised and method state in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from mtlkit.integrations.lightning import CHECKPOINT_KEY, MTLModule  # noqa: E402
from mtlkit.weighting import get  # noqa: E402


class TwoTasks(MTLModule):
    def __init__(self, method: str = "uw") -> None:
        super().__init__(get(method), tasks=["a", "b"])
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})

    def task_losses(self, batch):
        x, y = batch
        rep = self.trunk(x)
        return {
            t: nn.functional.mse_loss(self.heads[t](rep).squeeze(-1), y[:, k])
            for k, t in enumerate(("a", "b"))
        }

    def shared_parameters(self):
        return self.trunk

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.stack([x[:, 0] * 3, x[:, 1] - x[:, 2]], dim=1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def trainer(root: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=root, save_last=True)],
        default_root_dir=root,
    )


def params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_fit_checkpoint_and_exact_resume(tmp_path: Path) -> None:
    straight = TwoTasks()
    trainer(tmp_path / "straight", 4).fit(straight, loader())

    first = TwoTasks()
    start = first.method.parameters()[0].detach().clone()
    trainer(tmp_path / "run", 2).fit(first, loader())
    # UW's log-variances are module parameters: the optimiser stepped them
    assert not torch.equal(first.method.parameters()[0].detach(), start)
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert ckpt[CHECKPOINT_KEY]["tasks"] == ["a", "b"]
    assert any(k.startswith("method_parameters.") for k in ckpt["state_dict"])

    resumed = TwoTasks()
    trainer(tmp_path / "run", 4).fit(resumed, loader(), ckpt_path=tmp_path / "run" / "last.ckpt")
    assert torch.equal(params(resumed), params(straight))  # 2 + 2 epochs = 4 epochs
    assert resumed.method.parameters()[0] is resumed.method_parameters[0]


def test_state_of_a_stateful_method_round_trips(tmp_path: Path) -> None:
    module = TwoTasks("dwa")
    trainer(tmp_path, 3).fit(module, loader())
    saved = module.method.state_dict()
    loaded = TwoTasks.load_from_checkpoint(tmp_path / "last.ckpt", method="dwa")
    fresh = TwoTasks("dwa").method.state_dict()
    assert repr(saved) != repr(fresh)  # DWA's loss history, filled by on_epoch_end
    assert repr(loaded.method.state_dict()) == repr(saved)


def test_a_gradient_method_balances_the_trunk(tmp_path: Path) -> None:
    module = TwoTasks("pcgrad")
    before = params(module.trunk).clone()
    trainer(tmp_path, 2).fit(module, loader())
    assert not torch.equal(params(module.trunk), before)
    logged = trainer(tmp_path / "again", 1)
    logged.fit(TwoTasks("mgda"), loader())
    assert {"weight/a_epoch", "weight/b_epoch", "loss/a_epoch"} <= set(logged.logged_metrics)
