"""masked_cross_entropy: the mean over labelled entries, 0 without labels, no read-back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit.tasks import LOSSES
from mtlkit.tasks.losses import IGNORE_INDEX, masked_cross_entropy


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (2, 3, 4, 5)])
def test_the_mean_over_labelled_entries(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    output = torch.randn(*shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    labels.view(-1)[::3] = IGNORE_INDEX
    expected = F.cross_entropy(output.float(), labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(masked_cross_entropy(output, labels), expected)
    kept = labels != IGNORE_INDEX
    by_hand = -F.log_softmax(output.float(), dim=1).gather(1, labels.clamp(min=0).unsqueeze(1))
    torch.testing.assert_close(
        masked_cross_entropy(output, labels), by_hand.squeeze(1)[kept].mean()
    )


def test_no_label_gives_an_exact_zero_with_zero_gradient() -> None:
    output = torch.randn(4, 3, requires_grad=True)
    loss = masked_cross_entropy(output, torch.full((4,), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert output.grad is not None and bool((output.grad == 0).all())


@pytest.mark.parametrize("name", ["cross_entropy", "segmentation_cross_entropy"])
def test_nothing_is_read_back_from_the_device(name: str) -> None:
    """On meta tensors (no data at all) any read-back raises; the losses run through."""
    if name == "cross_entropy":
        output, target = torch.empty(4, 3, device="meta"), torch.empty(4, device="meta")
        target = target.long()
    else:
        output = torch.empty(2, 3, 4, 4, device="meta")
        target = torch.empty(2, 4, 4, dtype=torch.long, device="meta")
    loss = LOSSES.lookup(name)(output, target)
    assert loss.shape == () and loss.device.type == "meta"
