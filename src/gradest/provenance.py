r"""Provenance: which sampled values a tensor was computed from, recorded as torch computes it.

A stochastic computation graph must know whether a node's distribution carries the particle axis
(built from upstream samples: one distribution per particle) or not (built from parameters alone:
shared by the particles), and which nodes a cost or a distribution depends on. Neither can be read
from shapes (a batch of size B = N looks like a particle axis) nor from autograd (score-function
samples carry no graph). So while a graph is open, a ``TorchFunctionMode`` follows every torch
call: a result is marked with the union of its arguments' marks, and a sample the graph returns
is marked with its node's name. A tensor's mark is then exactly the set of nodes its value was
computed from through torch — the data flow, not a guess.

What the mode cannot see: values that leave torch (``.item()``, ``.tolist()``, NumPy) and come back
as new tensors. Such a value carries no mark, which is why a graph refuses a cost with no mark
rather than guessing, and an explicit ``batched=`` is always honoured.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.distributions import Distribution
from torch.distributions.transforms import Transform
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_EMPTY: frozenset[str] = frozenset()


class Provenance(TorchFunctionMode):
    """``with Provenance() as p:`` — ``p.mark(t, name)``, then ``p.of(u)`` for anything computed."""

    def __init__(self) -> None:
        super().__init__()
        self._marks: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def mark(self, t: torch.Tensor, name: str) -> None:
        self._marks[t] = self._marks.get(t, _EMPTY) | {name}

    def of(self, value: object) -> frozenset[str]:
        """The nodes a tensor, a distribution (its parameters and transforms) or a list came from."""
        out: set[str] = set()
        for t in tensors_of(value):
            out |= self._marks.get(t, _EMPTY)
        return frozenset(out)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self._marks):
            names: frozenset[str] = _EMPTY
            flat = tree_flatten((args, kwargs))[0]
            for a in flat:
                if isinstance(a, torch.Tensor):
                    names = names | self._marks.get(a, _EMPTY)
            if names:
                targets = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
                first = args[0] if args else None
                if isinstance(first, torch.Tensor) and _mutates(func, kwargs):
                    targets.append(first)  # an in-place write (x.add_(z), x[i] = z) taints x
                for o in targets:
                    self._marks[o] = self._marks.get(o, _EMPTY) | names
        return out


def _mutates(func: object, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.startswith("__")) or name in ("__setitem__", "__iadd__",
                                                                         "__isub__", "__imul__",
                                                                         "__itruediv__") \
        or "out" in kwargs


def tensors_of(value: object, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors a value holds: itself, a distribution's attributes (recursing into its base
    distributions and transforms), or the items of a list or tuple."""
    if depth > 8:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Distribution | Transform):
        for v in vars(value).values():
            yield from tensors_of(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from tensors_of(v, depth + 1)
