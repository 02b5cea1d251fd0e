"""Which optimisers step a weighting method's own parameters (UW's log-variances).

A method with learnable parameters is useless when they are in no optimiser, and nothing in a
plain training loop would say so. After each :meth:`~mtlkit.weighting.Weighting.backward`, such
a method is watched through torch's global optimiser step hook: every ``optimizer.step()``
anywhere in the process records whether that optimiser holds the method's parameters. At the
method's next backward, if optimisers stepped and none held them, the method warns, once.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle


class _Owner(Protocol):
    def parameters(self) -> list[nn.Parameter]: ...


#: per watched method: None (no optimiser stepped since its last backward), True (one that
#: stepped held its parameters), False (optimisers stepped, none held them)
_SEEN: weakref.WeakKeyDictionary[_Owner, bool | None] = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakSet[_Owner] = weakref.WeakSet()
_HANDLE: list[RemovableHandle] = []


def watch(method: _Owner) -> None:
    """Start (or restart) the watch of ``method``'s parameters, after one of its steps."""
    if not _HANDLE:
        _HANDLE.append(register_optimizer_step_post_hook(_after_step))
    _SEEN[method] = None


def _after_step(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    if not _SEEN:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for method in list(_SEEN.keys()):
        if _SEEN.get(method):
            continue
        try:
            own = method.parameters()
        except Exception:  # parameters not created (the method was reset)
            continue
        _SEEN[method] = any(id(p) in held for p in own)


def parameters_left_behind(method: _Owner) -> bool:
    """True, once per method, when optimisers stepped since its last backward and none of
    them held its parameters."""
    if _SEEN.get(method) is False and method not in _WARNED:
        _WARNED.add(method)
        return True
    return False
