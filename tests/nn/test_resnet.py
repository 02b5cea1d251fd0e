"""The small ResNet: any input size, stages, spatial maps for dense heads."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.architectures.base import build_head
from mtlkit.nn.encoders import ENCODERS, require_stages
from mtlkit.nn.resnet import BasicBlock, ResNetEncoder
from mtlkit.tasks import Task


def small(**params: object) -> ResNetEncoder:
    torch.manual_seed(0)
    return ENCODERS.build("resnet", **{"widths": (4, 8, 8), "blocks": 1, **params})


@pytest.mark.parametrize("size", [(8, 16), (32, 32), (64, 48)])
def test_any_input_size(size: tuple[int, int]) -> None:
    images = torch.randn(2, 3, *size)
    assert small()(images).shape == (2, 8)
    encoder = small(pool=False)
    h, w = size
    assert encoder.output_stride == 4
    assert encoder(images).shape == (2, 8, -(-h // 4), -(-w // 4))


def test_odd_sizes_round_up() -> None:
    assert small(pool=False)(torch.randn(1, 3, 9, 5)).shape == (1, 8, 3, 2)


def test_stages_compose_to_forward() -> None:
    encoder = small(widths=(4, 6, 8, 10), blocks=(1, 2, 1, 1)).eval()
    assert encoder.stage_channels == [4, 6, 8, 10]
    assert len(encoder.stages()) == 4
    assert encoder.out_features == 10 and encoder.output_stride == 8
    x = torch.randn(2, 3, 16, 16)
    h = encoder.prepare(x)
    shapes = []
    for stage in encoder.stages():
        h = stage(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(2, 4, 16, 16), (2, 6, 8, 8), (2, 8, 4, 4), (2, 10, 2, 2)]
    torch.testing.assert_close(encoder.finish(h), encoder(x))
    torch.testing.assert_close(encoder.finish(h), h.mean(dim=(2, 3)))
    assert require_stages(encoder, "mtan") is encoder and encoder.stage_layout == "map"
    # the stages hold every parameter exactly once
    stage_params = {id(p) for s in encoder.stages() for p in s.parameters()}
    assert stage_params == {id(p) for p in encoder.parameters()}


def test_basic_block_is_residual() -> None:
    # With the second BN's scale at 0, F(x) = β = 0, so y = ReLU(x): the identity shortcut.
    block = BasicBlock(4, 4).eval()
    torch.nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert isinstance(BasicBlock(4, 8, stride=2).shortcut, torch.nn.Sequential)


def test_grayscale_and_gradients() -> None:
    encoder = small(in_channels=1)
    out = encoder(torch.randn(2, 12, 10))  # (B, H, W) for one channel
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_dense_head_on_the_map_recovers_the_input_size() -> None:
    encoder = small(pool=False)
    task = Task(
        "seg",
        "segmentation",
        num_outputs=3,
        head="dense",
        head_params={"scale_factor": encoder.output_stride},
    )
    head = build_head(task, encoder.out_features)
    images = torch.randn(2, 3, 32, 24)
    target = torch.randint(0, 3, (2, 32, 24))
    loss = task.compute_loss(head(encoder(images)), target)
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())
    # 33 is not a multiple of the stride: ⌈33/4⌉·4 = 36 rows do not fit 33.
    with pytest.raises(TaskDataError, match=r"task 'seg'.*\(2, 33, 24\).*\(2, 3, 36, 24\)"):
        task.check(head(encoder(torch.randn(2, 3, 33, 24))), torch.zeros(2, 33, 24).long())


@pytest.mark.parametrize(
    ("params", "option"),
    [
        ({"widths": ()}, "widths"),
        ({"widths": (4, 0)}, "widths"),
        ({"blocks": (1, 1)}, "blocks"),
        ({"blocks": 0}, "blocks"),
        ({"in_channels": 0}, "in_channels"),
        ({"stem_stride": 3}, "stem_stride"),
    ],
)
def test_bad_options(params: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=f"encoder 'resnet'.*'{option}'"):
        ResNetEncoder(**{"widths": (4, 8, 8), **params})


def test_bad_input_shape() -> None:
    with pytest.raises(TaskDataError, match=r"\(B, 3, H, W\)"):
        small()(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("architecture", ["hps", "mtan", "cross_stitch"])
def test_dense_multi_task_model(architecture: str) -> None:
    from mtlkit.nn.architectures import ARCHITECTURES, build_model

    if architecture not in ARCHITECTURES:
        pytest.skip(f"architecture '{architecture}' is not registered")
    tasks = [
        Task("seg", "segmentation", 3, head="dense", head_params={"scale_factor": 2}),
        Task("depth", "depth", 1, head="dense", head_params={"out_size": (16, 12)}),
        Task("normals", "normals", 3, head="dense", head_params={"out_size": (16, 12)}),
    ]
    model = build_model(architecture, small(widths=(4, 8), pool=False), tasks)
    outputs = model(torch.randn(2, 3, 16, 12))
    targets = {
        "seg": torch.randint(0, 3, (2, 16, 12)),
        "depth": torch.rand(2, 16, 12) + 0.5,
        "normals": torch.randn(2, 3, 16, 12),
    }
    loss = sum(t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks)
    loss.backward()
    assert all(p.grad is not None for p in model.shared_parameters())
