"""Optional encoders: clear errors without their extra, and correct wiring with it.

Nothing here downloads: torchvision models are built with ``weights=None`` and Hugging Face
models from a config dict or a local directory written by the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.nn.adapters import HFEncoder, TorchvisionResNet, require
from mtlkit.nn.encoders import ENCODERS, require_stages

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


# --------------------------------------------------------------------------- without the extra


@pytest.mark.parametrize(
    ("package", "build", "extra"),
    [
        ("torchvision.models", lambda: TorchvisionResNet(), "vision"),
        ("transformers", lambda: HFEncoder(config=TINY_BERT), "nlp"),
    ],
)
def test_missing_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, package: str, build: object, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(MissingExtraError) as err:
        build()  # type: ignore[operator]
    message = str(err.value)
    assert f"'{package.split('.')[0]}'" in message and f"mtlkit[{extra}]" in message
    assert isinstance(err.value, ImportError)


def test_require_returns_the_module() -> None:
    assert require("math", "none", "test").sqrt(4.0) == 2.0


def test_adapters_are_registered() -> None:
    assert "torchvision_resnet" in ENCODERS and "hf_encoder" in ENCODERS


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"arch": "vgg16"}, "option 'arch'"),
        ({"checkpoint": "/nonexistent/weights.pt"}, "option 'checkpoint'"),
        ({"in_channels": 0}, "option 'in_channels'"),
    ],
)
def test_torchvision_bad_options_before_import(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"encoder 'torchvision_resnet'.*{message}"):
        TorchvisionResNet(**params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one.*got none"),
        ({"config": TINY_BERT, "model_name": "bert-base-uncased"}, "got config, model_name"),
        ({"path": "/nonexistent/model"}, "not a local directory"),
        ({"config": {"hidden_size": 8}}, "model_type"),
        ({"config": TINY_BERT, "pool": "max"}, "option 'pool'"),
    ],
)
def test_hf_bad_options_before_import(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"encoder 'hf_encoder'.*{message}"):
        HFEncoder(**params)


# --------------------------------------------------------------------------- with the extra


def test_torchvision_resnet18_stages_and_maps(tmp_path: Path) -> None:
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    encoder = ENCODERS.build("torchvision_resnet", arch="resnet18").eval()
    assert encoder.out_features == 512 and encoder.stage_channels == [64, 128, 256, 512]
    x = torch.randn(2, 3, 64, 48)
    h = encoder.prepare(x)
    for stage, channels in zip(encoder.stages(), encoder.stage_channels, strict=True):
        h = stage(h)
        assert h.shape[1] == channels
    assert h.shape == (2, 512, 2, 2)
    torch.testing.assert_close(encoder(x), h.mean(dim=(2, 3)))
    assert require_stages(encoder, "cross_stitch") is encoder
    # the backbone is torchvision's: same features as the full model without its fc
    full = models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(full.state_dict(), path)
    loaded = TorchvisionResNet(checkpoint=str(path)).eval()
    full.fc = torch.nn.Identity()
    torch.testing.assert_close(loaded(x), full(x))
    assert TorchvisionResNet(pool=False, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (
        2,
        512,
        1,
        1,
    )


def test_torchvision_resnet50_width() -> None:
    pytest.importorskip("torchvision.models")
    encoder = TorchvisionResNet(arch="resnet50")
    assert encoder.out_features == 2048 and encoder.stage_channels == [256, 512, 1024, 2048]


def test_hf_encoder_from_config_and_local_path(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    encoder = ENCODERS.build("hf_encoder", config=TINY_BERT).eval()
    assert encoder.out_features == 16
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    out = encoder(tokens)
    assert out.shape == (2, 5, 16)
    assert bool((out[0, 3:] == 0).all()) and bool((out[0, :3].abs().sum(-1) > 0).all())
    # padding is masked: other ids at padded positions leave the real positions unchanged
    mask = tokens != 0
    noisy = encoder({"input_ids": torch.where(mask, tokens, 3), "attention_mask": mask})
    torch.testing.assert_close(noisy[mask], out[mask], rtol=1e-4, atol=1e-5)
    # save, then load from the local directory only
    encoder.model.save_pretrained(tmp_path)
    reloaded = HFEncoder(path=str(tmp_path), pool="mean").eval()
    expected = out.sum(dim=1) / mask.sum(dim=1, keepdim=True)
    torch.testing.assert_close(reloaded(tokens), expected, rtol=1e-4, atol=1e-5)
    frozen = HFEncoder(config=TINY_BERT, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
