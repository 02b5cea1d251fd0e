"""Set encoders: a representation of an unordered set of elements (the atoms of a molecule).

``atom_sum`` is Deep Sets (Zaheer et al., 2017, "Deep Sets", NeurIPS): an element MLP φ, a
sum over the set's elements (padding masked out), then a set MLP ρ. The sum makes it
invariant to the order of the elements; the QM9 dataset (:mod:`mtlkit.data.qm9`, ``inputs:
atoms``) gives it per-atom features that are invariant to rotation and translation.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.encoders import ENCODERS


@ENCODERS.register("atom_sum")
class AtomSumEncoder(nn.Module):
    """Deep Sets (Zaheer et al., 2017, NeurIPS): ``ρ(Σ_i φ(x_i))`` over a molecule's atoms.

    Inputs ``{"atoms": (B, M, in_features), "mask": (B, M)}``; φ and ρ are ReLU MLPs of sizes
    ``atom_hidden`` and ``hidden``; the output is ``(B, hidden[-1])``.
    """

    def __init__(
        self,
        in_features: int,
        atom_hidden: Sequence[int] = (128, 128),
        hidden: Sequence[int] = (128,),
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ConfigError(
                f"encoder 'atom_sum': option 'in_features' must be ≥ 1, got {in_features}"
            )
        if not atom_hidden or not hidden or min(*atom_hidden, *hidden) < 1:
            raise ConfigError(
                "encoder 'atom_sum': options 'atom_hidden' and 'hidden' must be non-empty "
                f"sizes ≥ 1, got {list(atom_hidden)} and {list(hidden)}"
            )

        def mlp(sizes: list[int]) -> nn.Sequential:
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*layers)

        self.phi = mlp([in_features, *atom_hidden])
        self.rho = mlp([atom_hidden[-1], *hidden])
        self.in_features = in_features
        self.out_features = int(hidden[-1])

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(inputs, Mapping) or {"atoms", "mask"} - set(inputs):
            raise TaskDataError("encoder 'atom_sum': inputs must be a mapping with atoms and mask")
        atoms, mask = inputs["atoms"].float(), inputs["mask"]
        if atoms.dim() != 3 or atoms.shape[-1] != self.in_features:
            raise TaskDataError(
                f"encoder 'atom_sum': input 'atoms' has shape {tuple(atoms.shape)}, "
                f"expected (B, M, {self.in_features})"
            )
        pooled = (self.phi(atoms) * mask.unsqueeze(-1).to(atoms.dtype)).sum(dim=1)
        return self.rho(pooled)


__all__ = ["AtomSumEncoder"]
