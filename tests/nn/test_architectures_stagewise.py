"""Stage-wise architectures: cross-stitch units (identity init keeps columns independent, the
paper's init mixes them) and MTAN attention masks (shape, range, all-ones masks give HPS)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures import MTAN, CrossStitch, CrossStitchUnit, build_model
from tests.nn._architectures import (
    ENCODER_KINDS,
    make_encoder,
    make_inputs,
    make_model,
    make_tasks,
    one_thread,  # noqa: F401  (autouse fixture)
)


class FlatEncoder(nn.Module):
    """An encoder that is not split into stages."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 4)
        self.out_features = 4

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


@pytest.mark.parametrize("arch", ["cross_stitch", "mtan"])
def test_an_encoder_without_stages_is_a_config_error(arch: str) -> None:
    with pytest.raises(ConfigError, match=f"architecture '{arch}'.*FlatEncoder.*stages"):
        build_model(arch, FlatEncoder(), make_tasks(2))


def perturb_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


# ------------------------------------------------------------------------ cross-stitch


def test_cross_stitch_unit_initialisation() -> None:
    unit = CrossStitchUnit(3, alpha_same=0.9, alpha_diff=0.1)
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    torch.testing.assert_close(unit.alpha.detach(), expected)
    columns = torch.randn(3, 2, 4, 5, 5)
    mixed = unit(columns)
    torch.testing.assert_close(mixed[1], 0.05 * columns[0] + 0.9 * columns[1] + 0.05 * columns[2])


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_identity_cross_stitch_keeps_task_columns_independent(kind: str) -> None:
    model = make_model("cross_stitch", kind, alpha_same=1.0, alpha_diff=0.0).eval()
    assert isinstance(model, CrossStitch)
    x = make_inputs(kind)
    before = model(x)
    perturb_(model.columns["b"])
    after = model(x)
    torch.testing.assert_close(after["a"], before["a"])
    assert not torch.allclose(after["b"], before["b"])


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_identity_cross_stitch_columns_are_single_task_networks(kind: str) -> None:
    model = make_model("cross_stitch", kind, alpha_same=1.0, alpha_diff=0.0).eval()
    x = make_inputs(kind)
    outputs = model(x)
    for name in model.task_names:
        alone = model.heads[name](model.columns[name](x))
        torch.testing.assert_close(outputs[name], alone)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_paper_cross_stitch_initialisation_mixes_the_columns(kind: str) -> None:
    model = make_model("cross_stitch", kind).eval()  # (α_S, α_D) = (0.9, 0.1)
    assert isinstance(model, CrossStitch)
    x = make_inputs(kind)
    before = model(x)["a"]
    perturb_(model.columns["b"].stages())
    assert not torch.allclose(model(x)["a"], before)
    assert len(model.units) == len(make_encoder(kind).stage_channels)
    assert all(
        p is q
        for p, q in zip(model.stitch_parameters(), [u.alpha for u in model.units], strict=True)
    )


def test_cross_stitch_columns_start_from_the_same_weights() -> None:
    encoder = make_encoder("mlp")
    reference = copy.deepcopy(encoder.state_dict())
    model = build_model("cross_stitch", encoder, make_tasks(3))
    assert isinstance(model, CrossStitch)
    for column in model.columns.values():
        for key, value in column.state_dict().items():
            torch.testing.assert_close(value, reference[key])
    ids = [{id(p) for p in c.parameters()} for c in model.columns.values()]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # separate copies


# ------------------------------------------------------------------------ MTAN


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_mtan_masks_have_the_stage_shape_and_lie_in_unit_interval(kind: str) -> None:
    model = make_model("mtan", kind, n_tasks=3)
    assert isinstance(model, MTAN)
    x = make_inputs(kind, batch=4)
    h = model.encoder.prepare(x)
    stage_shapes = []
    for stage in model.encoder.stages():
        h = stage(h)
        stage_shapes.append(tuple(h.shape))
    masks = model.attention_masks(x)
    assert set(masks) == {"a", "b", "c"}
    for task_masks in masks.values():
        assert [tuple(m.shape) for m in task_masks] == stage_shapes
        for m in task_masks:
            assert bool((m >= 0).all() and (m <= 1).all())
            assert float(m.detach().std()) > 0  # a real, input-dependent mask
    expected_ndim = 2 if kind == "mlp" else 4  # feature-wise for tables, per pixel for maps
    assert all(m.dim() == expected_ndim for m in masks["a"])


def open_masks_(model: MTAN) -> None:
    """Make every mask exactly one: the last layer before the sigmoid outputs a large constant."""
    with torch.no_grad():
        for modules in model.attention.values():
            for module in modules:
                last = module.mask[-2]  # Linear (vector) or BatchNorm2d (map)
                last.weight.zero_()
                last.bias.fill_(50.0)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_mtan_with_all_ones_masks_is_hard_parameter_sharing(kind: str) -> None:
    model = make_model("mtan", kind)
    assert isinstance(model, MTAN)
    open_masks_(model)
    x = make_inputs(kind)
    rep = model.encoder(x)
    for name, out in model(x).items():
        torch.testing.assert_close(out, model.heads[name](rep))
    for task_masks in model.attention_masks(x).values():
        assert all(bool((m == 1).all()) for m in task_masks)


def test_mtan_masks_differ_between_tasks() -> None:
    masks = make_model("mtan", "cnn").attention_masks(make_inputs("cnn"))
    assert not torch.allclose(masks["a"][0], masks["b"][0])
