"""Token encoders: padding is invisible, causality holds, inputs are checked."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.encoders import ENCODERS
from mtlkit.nn.sequence import TokenEncoder, sinusoidal_positions

VOCAB = 30


def build(kind: str, **params: object) -> TokenEncoder:
    torch.manual_seed(0)
    defaults: dict[str, object] = {"embedding_dim": 16, "hidden": 24, "num_layers": 2}
    if kind == "transformer":
        defaults["num_heads"] = 2
    encoder = ENCODERS.build("token", VOCAB, kind=kind, **{**defaults, **params})
    return encoder.eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (3, 6) right-padded with 0, lengths 6, 3 and 1."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VOCAB, (3, 6), generator=gen)
    lengths = torch.tensor([6, 3, 1])
    tokens[torch.arange(6) >= lengths.unsqueeze(1)] = 0
    return tokens, lengths


ENCODER_KINDS = [
    pytest.param({"kind": "bilstm"}, id="bilstm"),
    pytest.param({"kind": "transformer"}, id="transformer"),
    pytest.param({"kind": "transformer", "causal": True}, id="causal-transformer"),
]


@pytest.mark.parametrize("params", ENCODER_KINDS)
def test_output_shape_and_zero_padding(params: dict) -> None:
    encoder = build(**params)
    tokens, _ = batch()
    out = encoder(tokens)
    width = 48 if params["kind"] == "bilstm" else 16
    assert encoder.out_features == width
    assert out.shape == (3, 6, width)
    pad = tokens == 0
    assert bool((out[pad] == 0).all())
    assert bool((out[~pad].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("params", ENCODER_KINDS)
def test_pad_content_and_extra_padding_do_not_change_real_positions(params: dict) -> None:
    encoder = build(**params)
    tokens, lengths = batch()
    ref = encoder({"tokens": tokens, "lengths": lengths})
    real = torch.arange(6) < lengths.unsqueeze(1)
    # arbitrary ids at padded positions, with the padding given by lengths
    noisy = torch.where(real, tokens, torch.randint(1, VOCAB, tokens.shape))
    out = encoder({"tokens": noisy, "lengths": lengths})
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)
    # four more padded positions
    longer = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    out = encoder(longer)
    assert out.shape == (3, 10, encoder.out_features)
    torch.testing.assert_close(out[:, :6][real], ref[real], rtol=1e-5, atol=1e-5)
    # the same sequence alone, without any padding
    alone = encoder(tokens[1:2, :3])
    torch.testing.assert_close(alone[0], ref[1, :3], rtol=1e-5, atol=1e-5)


def test_mask_input_equals_lengths_input() -> None:
    encoder = build("transformer")
    tokens, lengths = batch()
    mask = (torch.arange(6) < lengths.unsqueeze(1)).long()
    torch.testing.assert_close(
        encoder({"tokens": tokens, "mask": mask}), encoder({"tokens": tokens, "lengths": lengths})
    )


def test_transformer_mask_may_have_gaps() -> None:
    # Left padding: real tokens at the end. The real positions only see each other.
    encoder = build("transformer", causal=True)
    tokens = torch.randint(1, VOCAB, (1, 5))
    mask = torch.tensor([[False, False, True, True, True]])
    out = encoder({"tokens": tokens, "mask": mask})
    assert bool(torch.isfinite(out).all()) and bool((out[0, :2] == 0).all())
    changed = tokens.clone()
    changed[0, :2] = (changed[0, :2] % (VOCAB - 1)) + 1
    torch.testing.assert_close(encoder({"tokens": changed, "mask": mask})[0, 2:], out[0, 2:])


def test_causal_position_does_not_depend_on_later_tokens() -> None:
    encoder = build("transformer", causal=True)
    tokens = torch.randint(1, VOCAB, (2, 7))
    ref = encoder(tokens)
    for t in range(6):
        changed = tokens.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] % (VOCAB - 1)) + 1  # new ids, still ≠ 0
        out = encoder(changed)
        torch.testing.assert_close(out[:, : t + 1], ref[:, : t + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[:, t + 1 :], ref[:, t + 1 :])


def test_bidirectional_encoders_see_later_tokens() -> None:
    # The property the causal test checks is not trivially true: without the causal mask
    # (and for the BiLSTM) position 0 does depend on the last token.
    for kind in ("bilstm", "transformer"):
        encoder = build(kind)
        tokens = torch.randint(1, VOCAB, (1, 5))
        changed = tokens.clone()
        changed[0, -1] = tokens[0, -1] % (VOCAB - 1) + 1
        assert not torch.allclose(encoder(tokens)[0, 0], encoder(changed)[0, 0])


@pytest.mark.parametrize("params", ENCODER_KINDS)
def test_gradients_flow_and_empty_sequences_are_finite(params: dict) -> None:
    encoder = build(**params).train()
    tokens, _ = batch()
    tokens[2] = 0  # a sequence with no real token
    out = encoder(tokens)
    assert bool(torch.isfinite(out).all()) and bool((out[2] == 0).all())
    out.pow(2).sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert float(encoder.embedding.weight.grad[tokens[0]].abs().sum()) > 0
    assert bool((encoder.embedding.weight.grad[0] == 0).all())  # padding row is never used


def test_mean_pooling_averages_real_tokens() -> None:
    per_token = build("bilstm")
    pooled = build("bilstm", pool="mean")
    tokens, lengths = batch()
    expected = per_token(tokens).sum(dim=1) / lengths.unsqueeze(1)
    torch.testing.assert_close(pooled(tokens), expected)


def test_sinusoidal_positions_match_the_formula() -> None:
    pe = sinusoidal_positions(5, 4)
    assert pe[3, 0] == pytest.approx(torch.sin(torch.tensor(3.0)).item())
    assert pe[3, 3] == pytest.approx(torch.cos(torch.tensor(3.0 / 100.0)).item())


@pytest.mark.parametrize(
    ("params", "option"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"kind": "gru"}, "kind"),
        ({"causal": True}, "causal"),
        ({"kind": "transformer", "num_heads": 3}, "num_heads"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"pool": "max"}, "pool"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_options(params: dict, option: str) -> None:
    full = {"vocab_size": VOCAB, **params}
    with pytest.raises(ConfigError, match=f"encoder 'token'.*'{option}'"):
        TokenEncoder(**full)


def test_bad_inputs() -> None:
    lstm = build("bilstm")
    with pytest.raises(TaskDataError, match="out of range"):
        lstm(torch.tensor([[1, VOCAB]]))
    with pytest.raises(TaskDataError, match="integer"):
        lstm(torch.ones(2, 3))
    with pytest.raises(TaskDataError, match=r"\(B, L\)"):
        lstm(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(TaskDataError, match="right padding"):
        lstm({"tokens": torch.ones(1, 3, dtype=torch.long), "mask": torch.tensor([[1, 0, 1]])})
    with pytest.raises(TaskDataError, match="lengths"):
        lstm({"tokens": torch.ones(2, 3, dtype=torch.long), "lengths": torch.tensor([4, 1])})
    with pytest.raises(TaskDataError, match="'tokens'"):
        lstm({"ids": torch.ones(2, 3, dtype=torch.long)})


def test_tagging_model_end_to_end() -> None:
    from mtlkit.nn.architectures import build_model
    from mtlkit.tasks import Task

    tasks = [Task("ner", "bio_tagging", 5), Task("pos", "tagging", 4, head="mlp")]
    model = build_model("hps", build("transformer"), tasks)
    tokens, lengths = batch()
    outputs = model(tokens)
    real = torch.arange(6) < lengths.unsqueeze(1)
    targets = {
        "ner": torch.where(real, torch.randint(0, 5, (3, 6)), -100),
        "pos": torch.where(real, torch.randint(0, 4, (3, 6)), -100),
    }
    loss = sum(t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks)
    loss.backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    metrics = tasks[0].compute_metrics(outputs["ner"].detach(), targets["ner"])
    assert set(metrics) == {"entity_f1", "token_accuracy"}
    assert 0.0 <= metrics["token_accuracy"] <= 1.0
