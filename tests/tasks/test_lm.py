"""Language modelling as a task: masking, next-token targets, metrics, head, loader, Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtlkit import Task, Trainer, build_model
from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.data.lm import LMLoader, mask_tokens, next_token_targets
from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn import HEADS
from mtlkit.nn.lm import LMHead, check_lm_encoder
from mtlkit.nn.sequence import TokenEncoder
from mtlkit.tasks import METRICS, lm_task
from mtlkit.tasks.lm import perplexity
from mtlkit.tasks.tagging import token_macro_f1

V = 50


def random_tokens(n: int = 400, length: int = 50, seed: int = 0) -> torch.Tensor:
    """Word ids in [3, V) with right padding (id 0) of random length."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, V, (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    tokens[torch.arange(length) >= lengths.unsqueeze(1)] = 0
    return tokens


# --------------------------------------------------------------------------- masking


def test_mask_tokens_follows_the_80_10_10_rule() -> None:
    tokens = random_tokens(2000)
    tokens[:, 0] = torch.where(tokens[:, 0] > 0, 1, 0)  # some <unk>, never selected
    torch.manual_seed(0)
    inputs, targets = mask_tokens(tokens, vocab_size=V)
    selected = targets != -100
    eligible = tokens > 2
    # targets: the original word exactly where selected; only eligible words are selected
    assert torch.equal(targets[selected], tokens[selected])
    assert not bool((selected & ~eligible).any())
    assert torch.equal(inputs[~selected], tokens[~selected])
    share = selected.sum() / eligible.sum()
    assert abs(float(share) - 0.15) < 0.01
    masked = (inputs == 2) & selected
    kept = (inputs == tokens) & selected
    swapped = selected & ~masked & ~kept
    n = float(selected.sum())
    assert abs(float(masked.sum()) / n - 0.8) < 0.02
    # a random word equals the original with chance 1/47, so "kept" is 0.1 + 0.1/47
    assert abs(float(kept.sum()) / n - (0.1 + 0.1 / (V - 3))) < 0.02
    assert abs(float(swapped.sum()) / n - (0.1 - 0.1 / (V - 3))) < 0.02
    assert bool((inputs[swapped] > 2).all())  # random words are never special ids


def test_mask_tokens_extremes_and_errors() -> None:
    tokens = random_tokens(20)
    inputs, targets = mask_tokens(
        tokens, vocab_size=V, mask_prob=1.0, mask_fraction=1.0, random_fraction=0.0
    )
    real = tokens > 0
    assert bool((inputs[real] == 2).all()) and torch.equal(inputs[~real], tokens[~real])
    assert torch.equal(targets[real], tokens[real]) and bool((targets[~real] == -100).all())
    with pytest.raises(ConfigError, match="masked LM: option 'mask_prob' must be in"):
        mask_tokens(tokens, vocab_size=V, mask_prob=0.0)
    with pytest.raises(ConfigError, match="'mask_fraction' \\+ 'random_fraction' must be ≤ 1"):
        mask_tokens(tokens, vocab_size=V, mask_fraction=0.95)
    with pytest.raises(ConfigError, match="option 'mask_id'"):
        mask_tokens(tokens, vocab_size=V, mask_id=V)
    with pytest.raises(ConfigError, match="leaves no word"):
        mask_tokens(tokens, vocab_size=3)


def test_next_token_targets_closed_form() -> None:
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [4, 0, 0, 0, 0]])
    assert next_token_targets(tokens).tolist() == [
        [6, 7, -100, -100, -100],
        [9, 10, 11, 12, -100],
        [-100, -100, -100, -100, -100],
    ]


# --------------------------------------------------------------------------- loader


def lm_batches(seed: int = 0) -> TensorLoader:
    tokens = random_tokens(64, 12, seed)
    split = TensorSplit(tokens, {"tag": (tokens % 3).masked_fill(tokens == 0, -100)})
    return TensorLoader(split, 16, shuffle=True)


def test_dynamic_masks_are_seeded_fresh_and_resume_exactly() -> None:
    loader = LMLoader(lm_batches(), "lm", vocab_size=V)
    torch.manual_seed(3)
    first = [b[1]["lm"] for b in loader]
    state = torch.get_rng_state()
    second = [b[1]["lm"] for b in loader]
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))  # dynamic
    torch.manual_seed(3)
    assert all(torch.equal(a, b[1]["lm"]) for a, b in zip(first, loader, strict=True))
    torch.set_rng_state(state)  # a resumed run continues with the same masks
    assert all(torch.equal(a, b[1]["lm"]) for a, b in zip(second, loader, strict=True))


def test_fixed_and_clean_modes() -> None:
    base = TensorLoader(lm_batches().split, 16)
    fixed = LMLoader(base, "lm", vocab_size=V, mode="fixed", seed=1)
    state = torch.get_rng_state()
    a = [b[0] for b in fixed]
    b = [b[0] for b in fixed]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    clean = LMLoader(base, "lm", vocab_size=V, mode="clean")
    for (inputs, targets), (raw, raw_targets) in zip(clean, base, strict=True):
        assert torch.equal(inputs, raw) and bool((targets["lm"] == -100).all())
        assert torch.equal(targets["tag"], raw_targets["tag"])
    causal = LMLoader(base, "lm", "causal", vocab_size=V)
    inputs, targets = next(iter(causal))
    assert torch.equal(targets["lm"], next_token_targets(inputs))
    mapping = LMLoader([({"tokens": inputs}, {})], "lm", vocab_size=V, mode="fixed")
    masked, _ = next(iter(mapping))
    assert set(masked) == {"tokens"} and not torch.equal(masked["tokens"], inputs)
    with pytest.raises(ConfigError, match="option 'mode'"):
        LMLoader(base, "lm", vocab_size=V, mode="random")
    with pytest.raises(TaskDataError, match="already has targets for task 'tag'"):
        next(iter(LMLoader(base, "tag", vocab_size=V)))


# --------------------------------------------------------------------------- metrics, kinds


def test_perplexity_and_token_macro_f1() -> None:
    target = torch.tensor([[1, 2, -100], [0, 3, 3]])
    uniform = torch.zeros(2, 3, 4)
    assert perplexity(uniform, target) == pytest.approx(4.0)  # uniform over 4 words
    sure = torch.nn.functional.one_hot(target.clamp_min(0), 4).float() * 50
    assert perplexity(sure, target) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(perplexity(uniform, torch.full((2, 3), -100)))
    assert METRICS.lookup("perplexity").direction == "min"
    # predictions 1, 2 | 0, 3, 0 against 1, 2 | 0, 3, 3: F1 per class 1, 1, 2/3 (class 0:
    # tp 1, fp 1), 2/3 (class 3: tp 1, fn 1) -> mean (1 + 1 + 2/3 + 2/3) / 4
    pred = torch.nn.functional.one_hot(torch.tensor([[1, 2, 0], [0, 3, 0]]), 4).float()
    assert token_macro_f1(pred, target) == pytest.approx((2 + 4 / 3) / 4)
    assert METRICS.lookup("token_macro_f1").direction == "max"


def test_lm_task_kind_and_head() -> None:
    task = lm_task("lm", "masked", V)
    assert task.kind == "masked_lm" and task.auxiliary and task.head == "lm_head"
    assert task.metrics == ["perplexity", "token_accuracy"]
    assert lm_task("lm", "causal", V).kind == "causal_lm"
    assert HEADS.lookup("lm_head") is LMHead
    out = torch.randn(2, 5, V, requires_grad=True)
    loss = task.compute_loss(out, torch.full((2, 5), -100))
    loss.backward()  # nothing selected: an exact zero that still has a gradient
    assert float(loss.detach()) == 0.0 and out.grad is not None
    with pytest.raises(TaskDataError, match="task 'lm'"):
        task.compute_loss(torch.randn(2, 5, V - 1), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="'objective'"):
        lm_task("lm", "both", V)


def test_causal_lm_needs_a_causal_encoder() -> None:
    with pytest.raises(ConfigError, match="causal LM: encoder TokenEncoder is not causal"):
        check_lm_encoder(TokenEncoder(V, 16, hidden=16), "causal")
    check_lm_encoder(TokenEncoder(V, 16, kind="transformer", causal=True, num_heads=2), "causal")
    check_lm_encoder(TokenEncoder(V, 16, hidden=16), "masked")


def test_lm_head_beside_tagging_on_one_encoder() -> None:
    tasks = [Task("tag", "tagging", 3), lm_task("lm", "masked", V)]
    model = build_model("hps", TokenEncoder(V, 16, hidden=8), tasks)
    out = model(random_tokens(4, 7))
    assert out["tag"].shape == (4, 7, 3) and out["lm"].shape == (4, 7, V)
    lm_params = {id(p) for p in model.task_parameters("lm")}
    assert lm_params and not lm_params & {id(p) for p in model.shared_parameters()}


# --------------------------------------------------------------------------- training


def cyclic_tokens(n: int = 96, length: int = 10, seed: int = 0) -> torch.Tensor:
    """A language where word t + 1 is word t + 1 (mod 10) shifted into [3, 13)."""
    start = torch.randint(0, 10, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(length)) % 10 + 3


def test_causal_lm_learns_a_deterministic_language() -> None:
    tokens = cyclic_tokens()
    loader = LMLoader(
        TensorLoader(TensorSplit(tokens, {}), 32, shuffle=True), "lm", "causal", vocab_size=13
    )
    task = lm_task("lm", "causal", 13)
    torch.manual_seed(0)
    encoder = TokenEncoder(
        13, 16, kind="transformer", hidden=32, causal=True, num_heads=2, dropout=0.0
    )
    model = build_model("hps", encoder, [task])
    trainer = Trainer(
        model, [task], epochs=6, optimizer_params={"lr": 2e-2}, device="cpu", progress=False
    )
    before = trainer.evaluate(loader)["lm"]["perplexity"]
    trainer.fit(loader)
    after = trainer.evaluate(loader)["lm"]
    assert before > 5 and after["perplexity"] < 1.3 and after["token_accuracy"] > 0.95


def test_masked_lm_beside_tagging_resumes_exactly(tmp_path: Path) -> None:
    tokens = random_tokens(48, 8)
    split = TensorSplit(tokens, {"tag": (tokens % 3).masked_fill(tokens == 0, -100)})

    def run(run_dir: Path, stop_after: int | None, resume: bool) -> dict[str, torch.Tensor]:
        tasks = [Task("tag", "tagging", 3), lm_task("lm", "masked", V)]
        torch.manual_seed(0)
        model = build_model("hps", TokenEncoder(V, 8, hidden=8), tasks)
        trainer = Trainer(model, tasks, epochs=3, run_dir=run_dir, device="cpu", progress=False)
        train = LMLoader(TensorLoader(split, 16, shuffle=True), "lm", vocab_size=V)
        trainer.fit(train, resume=run_dir if resume else None, stop_after=stop_after)
        return {k: v.clone() for k, v in model.state_dict().items()}

    straight = run(tmp_path / "a", None, False)
    run(tmp_path / "b", 1, False)
    resumed = run(tmp_path / "b", None, True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
