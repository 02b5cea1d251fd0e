"""mtlkit inside the real Hugging Face Trainer, on a tiny randomly initialised BERT (never a
download): a 2-epoch fit, checkpoints with the method's state, a resume that restores it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mtlkit.integrations.hf import STATE_FILE, MTLTrainer  # noqa: E402
from mtlkit.weighting import get  # noqa: E402


class TinyMultiTask(nn.Module):
    """A 1-layer BERT trunk, a topic head (2 classes) and a length head (regression)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
        self.encoder = transformers.BertModel(config)
        self.topic = nn.Linear(16, 2)
        self.length = nn.Linear(16, 1)

    def forward(self, input_ids, attention_mask, topic, length):
        rep = self.encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        losses = {
            "topic": nn.functional.cross_entropy(self.topic(rep), topic),
            "length": nn.functional.mse_loss(self.length(rep).squeeze(-1), length),
        }
        return {"losses": losses}


def examples(n: int = 48) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        size = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.zeros(12, dtype=torch.long)
        ids[:size] = torch.randint(1, 30, (size,), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": (ids > 0).long(),
                "topic": torch.tensor(int(ids[0] > 15)),
                "length": torch.tensor(size / 12.0),
            }
        )
    return out


def make(tmp: Path, method: str, epochs: int, shared: bool = True) -> MTLTrainer:
    args = transformers.TrainingArguments(
        output_dir=str(tmp),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # so that 2 + 1 epochs is the same schedule as 3
        save_strategy="epoch",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    return MTLTrainer(
        model=TinyMultiTask(),
        args=args,
        train_dataset=examples(),
        method=get(method),
        tasks=["topic", "length"],
        shared_params=(lambda model: model.encoder) if shared else None,
    )


def test_fit_checkpoint_and_resume(tmp_path: Path) -> None:
    trainer = make(tmp_path, "uw", epochs=2, shared=False)
    start = trainer.method.parameters()[0].detach().clone()
    trainer.train()
    trained = trainer.method.parameters()[0].detach().clone()
    assert not torch.equal(trained, start)  # UW's log-variances were in the optimiser
    checkpoints = sorted(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2 and (checkpoints[-1] / STATE_FILE).is_file()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]

    resumed = make(tmp_path, "uw", epochs=3, shared=False)
    resumed.train(resume_from_checkpoint=str(checkpoints[-1]))
    assert resumed.state.global_step == 18
    saved = torch.load(checkpoints[-1] / STATE_FILE, weights_only=True)
    assert torch.equal(saved["log_vars"], trained) and saved["tasks"] == ["topic", "length"]
    # the resumed run continued from the saved state: 2 + 1 epochs give the 3-epoch run
    fresh = make(tmp_path / "fresh", "uw", epochs=3, shared=False)
    fresh.train()
    assert not torch.equal(resumed.method.parameters()[0].detach(), trained)
    assert torch.allclose(
        resumed.method.parameters()[0].detach(), fresh.method.parameters()[0].detach(), atol=1e-5
    )
    again = make(tmp_path / "check", "uw", epochs=2, shared=False)
    again._load_from_checkpoint(str(checkpoints[-1]))
    assert torch.equal(again.method.parameters()[0].detach(), trained)


def test_a_gradient_method_on_the_shared_encoder(tmp_path: Path) -> None:
    trainer = make(tmp_path, "pcgrad", epochs=2)
    before = torch.cat([p.detach().reshape(-1) for p in trainer.model.encoder.parameters()])
    trainer.train()
    after = torch.cat([p.detach().reshape(-1) for p in trainer.model.encoder.parameters()])
    assert not torch.equal(before, after)
    with pytest.raises(Exception, match="shared"):  # gradient methods need the shared part
        make(tmp_path / "none", "pcgrad", epochs=1, shared=False).train()


def test_gradient_accumulation_is_refused(tmp_path: Path) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), gradient_accumulation_steps=2, use_cpu=True, report_to=[]
    )
    with pytest.raises(Exception, match="gradient_accumulation_steps must be 1"):
        MTLTrainer(model=TinyMultiTask(), args=args, method=get("ew"), tasks=["topic", "length"])
