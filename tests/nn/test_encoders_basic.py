"""The table and image encoders: their options, input checks, and the stage protocol used by
stage-wise architectures (forward = finish ∘ stages ∘ prepare)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.encoders import (
    ENCODERS,
    ConvEncoder,
    MLPEncoder,
    StagedEncoder,
    require_stages,
)
from tests.nn._architectures import one_thread  # noqa: F401  (autouse fixture)


def run_stages(encoder: StagedEncoder, inputs: object) -> torch.Tensor:
    x = encoder.prepare(inputs)
    for stage in encoder.stages():
        x = stage(x)
    return encoder.finish(x)


def test_both_encoders_are_registered() -> None:
    assert ENCODERS.lookup("mlp") is MLPEncoder and ENCODERS.lookup("cnn") is ConvEncoder


def test_mlp_forward_is_its_stages_in_order() -> None:
    torch.manual_seed(0)
    encoder = MLPEncoder(5, hidden=(8, 6, 3), dropout=0.0)
    assert isinstance(encoder, StagedEncoder)
    assert encoder.stage_channels == [8, 6, 3] and encoder.out_features == 3
    assert encoder.stage_layout == "vector" and len(encoder.stages()) == 3
    x = torch.randn(4, 5)
    torch.testing.assert_close(run_stages(encoder, x), encoder(x))
    stage_params = {id(p) for p in encoder.stages().parameters()}
    assert stage_params == {id(p) for p in encoder.parameters()}  # no parameter outside stages


def test_mlp_embeds_categorical_columns() -> None:
    torch.manual_seed(0)
    encoder = MLPEncoder(2, hidden=(4,), cardinalities=(3, 5), embedding_dim=2)
    numeric = torch.randn(6, 2)
    codes = torch.stack([torch.randint(0, 3, (6,)), torch.randint(0, 5, (6,))], dim=1)
    prepared = encoder.prepare({"numeric": numeric, "categorical": codes})
    assert prepared.shape == (6, 2 + 2 * 2)
    torch.testing.assert_close(prepared[:, :2], numeric)
    torch.testing.assert_close(prepared[:, 4:], encoder.embeddings[1](codes[:, 1]))
    with pytest.raises(TaskDataError, match="'categorical' has 1 columns, expected 2"):
        encoder({"numeric": numeric, "categorical": codes[:, :1]})
    with pytest.raises(TaskDataError, match="must be a mapping"):
        encoder(numeric)


def test_mlp_rejects_a_wrong_feature_count() -> None:
    with pytest.raises(TaskDataError, match="input has 4 features, expected 5"):
        MLPEncoder(5)(torch.randn(2, 4))


@pytest.mark.parametrize(
    ("params", "option"),
    [
        ({"in_features": 0}, "in_features"),
        ({"in_features": 3, "hidden": ()}, "hidden"),
        ({"in_features": 3, "hidden": (4, 0)}, "hidden"),
        ({"in_features": 3, "dropout": 1.0}, "dropout"),
        ({"in_features": 3, "cardinalities": (0,)}, "cardinalities"),
        ({"in_features": 3, "cardinalities": (2,), "embedding_dim": 0}, "embedding_dim"),
        ({"in_features": 3, "activation": "swish"}, "activation"),
    ],
)
def test_mlp_bad_options(params: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=f"encoder 'mlp'.*{option}"):
        MLPEncoder(**params)


def test_cnn_forward_is_its_stages_then_pool_and_projection() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(3, channels=(4, 6, 8), out_features=5).eval()
    assert isinstance(encoder, StagedEncoder)
    assert encoder.stage_channels == [4, 6, 8] and encoder.stage_layout == "map"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(run_stages(encoder, x), encoder(x))
    h = encoder.prepare(x)
    sizes = []
    for stage in encoder.stages():
        h = stage(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(4, 16, 16), (6, 8, 8), (8, 4, 4)]  # blocks after the first halve H, W
    assert encoder(x).shape == (2, 5)


def test_cnn_output_size_does_not_depend_on_the_image_size() -> None:
    encoder = ConvEncoder(1, channels=(4,), out_features=7, downsample=False)
    assert encoder(torch.randn(2, 1, 9, 13)).shape == (2, 7)
    assert encoder(torch.randn(2, 20, 20)).shape == (2, 7)  # (B, H, W): one channel added


def test_cnn_input_checks_and_options() -> None:
    with pytest.raises(TaskDataError, match=r"is not \(B, 3, H, W\)"):
        ConvEncoder(3)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"encoder 'cnn'.*channels"):
        ConvEncoder(1, channels=())
    with pytest.raises(ConfigError, match=r"encoder 'cnn'.*out_features"):
        ConvEncoder(1, out_features=0)
    with pytest.raises(ConfigError, match=r"encoder 'cnn'.*dropout"):
        ConvEncoder(1, dropout=-0.1)


def test_require_stages_names_the_architecture_the_encoder_and_what_is_missing() -> None:
    encoder = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ConfigError, match=r"'mtan': encoder Sequential .*lacks stages, stage_ch"):
        require_stages(encoder, "mtan")
    assert require_stages(MLPEncoder(3), "mtan") is not None


def test_require_stages_checks_the_stage_count_and_layout() -> None:
    encoder = MLPEncoder(3, hidden=(4, 4))
    encoder.stage_channels = [4]
    with pytest.raises(ConfigError, match="2 stages but 1 stage widths"):
        require_stages(encoder, "cross_stitch")
    encoder = MLPEncoder(3)
    encoder.stage_layout = "sequence"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="stage_layout 'sequence'"):
        require_stages(encoder, "cross_stitch")
