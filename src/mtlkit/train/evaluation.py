"""The evaluation loop: every task's mean loss and metrics over a split, and predictions.

Evaluation streams: each batch updates every metric's accumulator
(:meth:`mtlkit.tasks.Task.accumulators`: confusion matrices, sums, counts) and is then
dropped, so memory grows with the batch, not the split; only metrics without an accumulator
(AUROC, multi-label mAP, the median normal angle, user metrics) keep what they need of the
split. Under data-parallel training each rank evaluates its block of the split; the strategy
gathers the accumulators in rank order (and merges them) and sums the loss totals, so every
rank computes the metrics of the whole split, as a single process would.

Under a strategy whose forward pass is itself collective (``train.strategy: fsdp``: every
sharded layer all-gathers its weights), the ranks must run the same number of forward
passes even when their blocks of the split hold different numbers of batches. Each forward
pass is then preceded by a small all-reduce of who still has one (:class:`Lockstep`); a rank
that is done runs padding forward passes on its last input, whose outputs are dropped
(nothing is counted), until every rank is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.data.base import to_device
from mtlkit.data.multi import TaskBatches
from mtlkit.errors import DatasetError
from mtlkit.tasks import Task
from mtlkit.train.batches import Batch, task_losses
from mtlkit.train.precision import Precision
from mtlkit.train.strategy import Strategy

Metrics = dict[str, dict[str, float]]


@dataclass
class Lockstep:
    """Forward passes in step over the ranks (see the module docstring).

    :meth:`forward` runs one real forward pass; :meth:`finish` runs padding passes until
    every rank has called it. Each pass (real or padding) is preceded on every rank by one
    all-reduce of 2R numbers: which ranks still have a pass, and which need an input to pad
    with (a rank with no batch at all gets the first working rank's input, broadcast once).
    Without a collective forward pass (``strategy.lockstep`` false) it only calls the model.
    """

    model: nn.Module
    strategy: Strategy
    device: torch.device
    on: bool = False
    template: Any = field(default=None, repr=False)

    def _poll(self, working: bool) -> list[float]:
        world, rank = self.strategy.world_size, self.strategy.rank
        flags = torch.zeros(2 * world, dtype=torch.float64, device=self.device)
        flags[rank] = float(working)
        flags[world + rank] = float(not working and self.template is None)
        reduced: list[float] = self.strategy.all_reduce(flags).tolist()
        needy = [r for r in range(world) if reduced[world + r] > 0]
        working_ranks = [r for r in range(world) if reduced[r] > 0]
        if needy and working_ranks:  # every rank joins the broadcast of one input
            sent = to_device(self.template, torch.device("cpu"))
            box = self.strategy.broadcast_object(sent, src=working_ranks[0])  # type: ignore[attr-defined]
            if self.template is None:
                self.template = to_device(box, self.device)
        return reduced[:world]

    def forward(self, inputs: Any) -> Any:
        """The model's output on ``inputs`` (in step with the other ranks when ``on``)."""
        if self.on:
            self.template = inputs
            self._poll(True)
        return self.model(inputs)

    def finish(self, autocast: Any) -> None:
        """Padding forward passes until every rank is done (when ``on``)."""
        if not self.on:
            return
        while any(f > 0 for f in self._poll(False)):
            with autocast():
                self.model(self.template)


@dataclass
class Collected:
    """What :meth:`Evaluator.collect` returns (``targets``, ``losses``: None without targets)."""

    outputs: dict[str, Tensor]
    targets: dict[str, Tensor] | None = None
    losses: dict[str, float] | None = None


@dataclass
class Evaluator:
    """Evaluates a model on its tasks, in the run's precision and strategy."""

    model: nn.Module
    tasks: Mapping[str, Task]
    device: torch.device
    precision: Precision
    strategy: Strategy
    check: bool = True

    def _lockstep(self) -> Lockstep:
        on = bool(getattr(self.strategy, "lockstep", False))
        return Lockstep(self.model, self.strategy, self.device, on)

    @torch.no_grad()
    def predict(self, data: Iterable[Batch | TaskBatches]) -> dict[str, Tensor]:
        """Every task's outputs over ``data``, concatenated on the CPU."""
        return self.collect(data).outputs

    @torch.no_grad()
    def evaluate(self, data: Iterable[Batch | TaskBatches]) -> Metrics:
        """Each task's mean loss and metrics over ``data``, batch by batch."""
        self.model.eval()
        steps = self._lockstep()
        accumulators = {name: task.accumulators() for name, task in self.tasks.items()}
        # loss sums stay on the device (one read-back at the end, not one per task and batch)
        loss_sums: dict[str, Tensor | float] = dict.fromkeys(self.tasks, 0.0)
        joint: Tensor | None = None  # joint batches: the loss sums in task order
        count = 0
        task_counts = dict.fromkeys(self.tasks, 0)  # multi-input data: examples per task
        batches = 0

        def update(name: str, output: Tensor, target: Tensor) -> None:
            out, tgt = output.detach().float().cpu(), target.detach().cpu()
            for acc in accumulators[name].values():
                acc.update(out, tgt)

        for batch in data:
            batches += 1
            if isinstance(batch, TaskBatches):
                for name, (x, y) in batch.items():
                    with self.precision.autocast():
                        out_t = steps.forward(to_device(x, self.device))[name]
                    tgt_t = to_device(y[name], self.device)
                    loss = self.tasks[name].compute_loss(out_t, tgt_t, self.check)
                    loss_sums[name] = loss_sums[name] + loss.detach().double() * tgt_t.shape[0]
                    task_counts[name] += out_t.shape[0]
                    update(name, out_t, tgt_t)
                continue
            inputs = to_device(batch[0] if isinstance(batch, tuple | list) else batch, self.device)
            with self.precision.autocast():
                out = steps.forward(inputs)
            tgt = to_device(batch[1], self.device)
            losses = task_losses(self.tasks, out, tgt, self.check)
            size = next(iter(tgt.values())).shape[0]
            # every task's loss sum in one vector: a few operations per batch, not per task
            sums = torch.stack([losses[name].detach() for name in self.tasks]).double() * size
            joint = sums if joint is None else joint.add_(sums)
            count += size
            for name in self.tasks:
                update(name, out[name], tgt[name])
            del out, tgt, losses
        steps.finish(self.precision.autocast)
        if joint is not None:
            for name, total in zip(self.tasks, joint, strict=True):
                loss_sums[name] = loss_sums[name] + total
        totals = torch.stack(
            [
                torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(())
                for v in [batches, count, *loss_sums.values(), *task_counts.values()]
            ]
        )
        batches, count, *rest = self.strategy.all_reduce(totals).tolist()
        if not batches:
            raise DatasetError("the evaluation data yielded no batch: the split is empty")
        n = len(loss_sums)
        loss_sums = dict(zip(loss_sums, rest[:n], strict=True))
        task_counts = dict(zip(task_counts, rest[n:], strict=True))
        # every rank's accumulators, merged in rank order
        ranks = self.strategy.gather([accumulators])
        merged = ranks[0]
        for other in ranks[1:]:
            for name, accs in merged.items():
                for metric, acc in accs.items():
                    acc.merge(other[name][metric])
        return {
            name: {
                "loss": loss_sums[name] / (task_counts[name] or count),
                **{metric: acc.compute() for metric, acc in merged[name].items()},
            }
            for name in self.tasks
        }

    @torch.no_grad()
    def collect(self, data: Iterable[Batch | TaskBatches], with_targets: bool = False) -> Collected:
        """Every task's outputs over ``data`` (on the CPU, in the data's order over all
        ranks); ``with_targets``: also the targets and each task's mean loss."""
        self.model.eval()
        steps = self._lockstep()
        outputs: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        targets: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        # loss sums stay on the device (one read-back at the end, not one per task and batch)
        loss_sums: dict[str, Tensor | float] = dict.fromkeys(self.tasks, 0.0)
        count = 0
        task_counts = dict.fromkeys(self.tasks, 0)  # multi-input data: examples per task
        for batch in data:
            if isinstance(batch, TaskBatches):
                for name, (x, y) in batch.items():
                    with self.precision.autocast():
                        out_t = steps.forward(to_device(x, self.device))[name]
                    outputs[name].append(out_t.float().cpu())
                    if with_targets:
                        tgt_t = to_device(y[name], self.device)
                        loss = self.tasks[name].compute_loss(out_t, tgt_t, self.check)
                        loss_sums[name] = loss_sums[name] + loss.detach().double() * tgt_t.shape[0]
                        targets[name].append(tgt_t.cpu())
                    task_counts[name] += out_t.shape[0]
                continue
            inputs = to_device(batch[0] if isinstance(batch, tuple | list) else batch, self.device)
            with self.precision.autocast():
                out = steps.forward(inputs)
            if with_targets:
                tgt = to_device(batch[1], self.device)
                losses = task_losses(self.tasks, out, tgt, self.check)
                size = next(iter(tgt.values())).shape[0]
                for name, loss in losses.items():
                    loss_sums[name] += float(loss) * size
                    targets[name].append(tgt[name].cpu())
                count += size
            for name in self.tasks:
                outputs[name].append(out[name].float().cpu())
        steps.finish(self.precision.autocast)
        # every rank's outputs, in rank order, and the loss totals over all ranks
        outputs = {t: self.strategy.gather(v) for t, v in outputs.items()}
        targets = {t: self.strategy.gather(v) for t, v in targets.items()}
        totals = torch.tensor(
            [count, *loss_sums.values(), *task_counts.values()],
            dtype=torch.float64,
            device=self.device,
        )
        count, *rest = self.strategy.all_reduce(totals).tolist()
        n = len(loss_sums)
        loss_sums = dict(zip(loss_sums, rest[:n], strict=True))
        task_counts = dict(zip(task_counts, rest[n:], strict=True))
        if not outputs or not next(iter(outputs.values())):
            raise DatasetError("the evaluation data yielded no batch: the split is empty")
        cat = {t: torch.cat(v) for t, v in outputs.items()}
        if not with_targets:
            return Collected(cat)
        return Collected(
            cat,
            {t: torch.cat(v) for t, v in targets.items()},
            {t: s / (task_counts[t] or count) for t, s in loss_sums.items()},
        )
