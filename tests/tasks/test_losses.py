"""masked_cross_entropy: the mean over labelled entries, 0 without labels, no read-back; its
unmasked form for fully labelled targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit.tasks import LOSSES, Task
from mtlkit.tasks.losses import IGNORE_INDEX, LABELLED_LOSSES, masked_cross_entropy


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


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6)])
def test_the_labelled_form_is_the_same_loss_and_gradient(shape: tuple[int, ...]) -> None:
    """For a target whose every entry is a valid label, the unmasked form the training step
    takes (LABELLED_LOSSES) gives cross_entropy's value and gradient."""
    gen = torch.Generator().manual_seed(1)
    output = torch.randn(*shape, generator=gen, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    masked, plain = LOSSES.lookup("cross_entropy"), LABELLED_LOSSES.lookup("cross_entropy")
    (g_masked,) = torch.autograd.grad(masked(output, labels), output)
    (g_plain,) = torch.autograd.grad(plain(output, labels), output)
    torch.testing.assert_close(plain(output, labels), masked(output, labels), rtol=1e-6, atol=0)
    torch.testing.assert_close(g_plain, g_masked, rtol=1e-6, atol=1e-9)


def test_a_task_takes_the_labelled_form_only_when_told_and_registered() -> None:
    output = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, IGNORE_INDEX, 1])
    task = Task("t", "classification", num_outputs=4)
    assert task.labelled_loss_fn is LABELLED_LOSSES.lookup("cross_entropy")
    masked = task.compute_loss(output, labels, check=False)  # not told: the mask is used
    torch.testing.assert_close(masked, F.cross_entropy(output, labels))
    full = labels.clamp(min=0)
    told = task.compute_loss(output, full, check=False, labelled=True)
    torch.testing.assert_close(told, F.cross_entropy(output, full), rtol=1e-6, atol=0)
    calls: list[str] = []

    def mine(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append("mine")
        return out.sum() * 0.0

    custom = Task("c", "classification", num_outputs=4, loss=mine)
    custom.compute_loss(output, labels.clamp(min=0), check=False, labelled=True)
    assert calls == ["mine"] and custom.labelled_loss_fn is mine
    reg = Task("r", "regression")
    assert reg.labelled_loss_fn is reg.loss_fn  # no labelled form registered for mse
