"""Balance two tasks in the Hugging Face Trainer with any mtlkit method (extra ``nlp``), on a
small randomly initialised BERT (nothing is downloaded): topic (a word of the first half of
the vocabulary opens the text) and length (the share of non-padding tokens).

Run: python examples/hf_trainer_mtl.py [--method pcgrad] [--out runs/hf]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from transformers import BertConfig, BertModel, TrainingArguments

from mtlkit.integrations.hf import MTLTrainer
from mtlkit.weighting import get


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
        self.encoder = BertModel(config)
        self.topic, self.length = nn.Linear(32, 2), nn.Linear(32, 1)

    def forward(self, input_ids, attention_mask, topic, length):
        rep = self.encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        topic_logits = self.topic(rep)
        return {
            "losses": {
                "topic": nn.functional.cross_entropy(topic_logits, topic),
                "length": nn.functional.mse_loss(self.length(rep).squeeze(-1), length),
            },
            "topic_accuracy": (topic_logits.argmax(-1) == topic).float().mean(),
        }


def rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(2, 24, (1,), generator=g))
        ids = torch.zeros(24, dtype=torch.long)
        ids[:size] = torch.randint(1, 100, (size,), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": (ids > 0).long(),
                "topic": torch.tensor(int(ids[0] < 50)),
                "length": torch.tensor(size / 24),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--out", default="runs/hf")
    args = parser.parse_args()
    torch.manual_seed(0)
    training = TrainingArguments(
        args.out,
        num_train_epochs=2,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        save_strategy="epoch",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = MTLTrainer(
        model=TwoHeads(),
        args=training,
        train_dataset=rows(1024, 0),
        eval_dataset=rows(256, 1),
        method=get(args.method),
        tasks=["topic", "length"],
        shared_params=lambda model: model.encoder,
    )
    trainer.train()
    model = trainer.model.eval()
    test = torch.utils.data.default_collate(rows(256, 2))
    with torch.no_grad():
        out = model(**test)
    print({t: round(float(v), 4) for t, v in out["losses"].items()})
    print("topic accuracy:", round(float(out["topic_accuracy"]), 3))


if __name__ == "__main__":
    main()
