"""Snapshots of training state, restored in place: how a diagnostic runs inside a training loop
and leaves no trace.

A diagnostic that evaluates the user's stochastic loss also runs everything the loss touches: a
moving-average baseline advances, a BatchNorm layer updates its running statistics, dropout draws
from the global RNG. :class:`Snapshot` records such objects and puts every value back *into the
same objects* — tensors by ``copy_``, generators by ``set_state``, optimizers by
``load_state_dict``, plain Python objects attribute by attribute — so references the training
code holds (``est.baseline``, ``model.bn.running_mean``) stay valid and see the old values.
:func:`global_rngs_forked` does the same for the global random number generators (torch's CPU
and initialized CUDA generators, Python's ``random``, NumPy's legacy global state), seeding
torch's CPU generator from the diagnostic's own seed inside.

What is captured: tensors, generators, optimizers, dicts, lists, tuples, and the attributes of
instances of Python classes (recursively, shared objects once); anything else (numbers,
strings, functions, modules, types) is deep-copied or, for callables, left alone.
"""

from __future__ import annotations

import contextlib
import copy
import random
import types
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from gradest.errors import GradestError
from gradest.rng import check_seed

#: values kept as they are: code and classes are not state
_OPAQUE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type,
           torch.device, torch.dtype)


class _Saved:
    """An object's attributes as captured (``kind`` 'dict' for ``__dict__``, 'slots' for slots)."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: str, values: dict[str, Any]) -> None:
        self.kind = kind
        self.values = values


def _slots(obj: object) -> list[str]:
    names = []
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                names.append(name)
    return names


def _capture(obj: Any, memo: dict[int, Any]) -> Any:
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, torch.Tensor):
        saved: Any = obj.detach().clone()
    elif isinstance(obj, torch.Generator):
        saved = obj.get_state()
    elif isinstance(obj, torch.optim.Optimizer):
        saved = copy.deepcopy(obj.state_dict())
    elif isinstance(obj, np.ndarray):
        saved = obj.copy()
    elif isinstance(obj, dict):
        memo[key] = saved = {}
        saved.update({k: _capture(v, memo) for k, v in obj.items()})
    elif isinstance(obj, list | tuple):
        saved = [_capture(v, memo) for v in obj]
    elif obj is None or isinstance(obj, (*_OPAQUE, int, float, complex, str, bytes)):
        saved = obj
    elif hasattr(obj, "__dict__") or _slots(obj):
        values: dict[str, Any] = {}
        memo[key] = saved = _Saved("dict" if hasattr(obj, "__dict__") else "slots", values)
        attrs = vars(obj) if hasattr(obj, "__dict__") else {n: getattr(obj, n) for n in _slots(obj)}
        values.update({k: _capture(v, memo) for k, v in attrs.items()})
    else:
        try:
            saved = copy.deepcopy(obj)
        except Exception as err:
            raise GradestError(f"cannot snapshot a {type(obj).__name__}: {err}; register a smaller "
                               "object (the estimator or its baseline) instead") from None
    memo[key] = saved
    return saved


def _restore(obj: Any, saved: Any, seen: set[int]) -> Any:
    """Put ``saved`` back into ``obj`` in place where possible; returns what the parent should hold."""
    if id(obj) in seen:
        return obj
    if isinstance(obj, torch.Tensor) and isinstance(saved, torch.Tensor) \
            and obj.shape == saved.shape and obj.dtype == saved.dtype:
        seen.add(id(obj))
        with torch.no_grad():
            obj.copy_(saved)
        return obj
    if isinstance(obj, torch.Generator):
        seen.add(id(obj))
        obj.set_state(saved)
        return obj
    if isinstance(obj, torch.optim.Optimizer):
        seen.add(id(obj))
        obj.load_state_dict(copy.deepcopy(saved))
        return obj
    if isinstance(obj, np.ndarray) and isinstance(saved, np.ndarray) and obj.shape == saved.shape:
        seen.add(id(obj))
        np.copyto(obj, saved)
        return obj
    if isinstance(obj, dict) and isinstance(saved, dict):
        seen.add(id(obj))
        for k in [k for k in obj if k not in saved]:
            del obj[k]
        for k, v in saved.items():
            obj[k] = _restore(obj[k], v, seen) if k in obj else _fresh(v)
        return obj
    if isinstance(obj, list) and isinstance(saved, list):
        seen.add(id(obj))
        if len(obj) == len(saved):
            obj[:] = [_restore(o, s, seen) for o, s in zip(obj, saved, strict=True)]
        else:
            obj[:] = [_fresh(s) for s in saved]
        return obj
    if isinstance(obj, tuple) and isinstance(saved, list) and len(obj) == len(saved):
        items = [_restore(o, s, seen) for o, s in zip(obj, saved, strict=True)]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return type(obj)._make(items) if hasattr(type(obj), "_make") else type(obj)(items)
    if isinstance(saved, _Saved):
        seen.add(id(obj))
        attrs = vars(obj) if saved.kind == "dict" else {n: getattr(obj, n) for n in _slots(obj)}
        for k in [k for k in attrs if k not in saved.values]:
            if saved.kind == "dict":
                del vars(obj)[k]
            else:
                object.__delattr__(obj, k)
        for k, v in saved.values.items():
            value = _restore(attrs[k], v, seen) if k in attrs else _fresh(v)
            if k not in attrs or value is not attrs[k]:
                if saved.kind == "dict":
                    vars(obj)[k] = value  # bypasses frozen dataclasses' __setattr__, on purpose
                else:
                    object.__setattr__(obj, k, value)
        return obj
    if isinstance(obj, _OPAQUE):
        return obj
    return _fresh(saved)


def _fresh(saved: Any) -> Any:
    """A new value from a captured one (the object it came from is gone)."""
    if isinstance(saved, _Saved):
        raise GradestError("a registered object lost an attribute that held an object; it cannot be "
                           "rebuilt in place: register the objects themselves")
    if isinstance(saved, list):
        return [_fresh(s) for s in saved]
    if isinstance(saved, dict):
        return {k: _fresh(v) for k, v in saved.items()}
    return copy.deepcopy(saved)


class Snapshot:
    """The state of ``objects`` now; :meth:`restore` puts it back into the same objects.

    ``Snapshot([est, model.bn])`` captures ``est``'s attributes (its baseline's moving average)
    and the BatchNorm buffers; after any number of forward passes, ``restore()`` makes them equal,
    bit for bit, to what they were, and may be called again.
    """

    def __init__(self, objects: Iterable[Any]) -> None:
        if isinstance(objects, str | bytes | dict) or not isinstance(objects, Iterable):
            raise GradestError(f"Snapshot takes a list of the objects to restore (e.g. [estimator, "
                               f"model.bn]), got {type(objects).__name__}")
        self.objects = list(objects)
        memo: dict[int, Any] = {}
        self._saved = [_capture(obj, memo) for obj in self.objects]

    def restore(self) -> None:
        seen: set[int] = set()
        for obj, saved in zip(self.objects, self._saved, strict=True):
            if _restore(obj, saved, seen) is not obj:
                raise GradestError(f"a registered {type(obj).__name__} cannot be restored in place; "
                                   "register a mutable object (an estimator, a baseline, a tensor)")


@contextlib.contextmanager
def global_rngs_forked(seed: int) -> Iterator[None]:
    """Run a block on torch's global CPU generator seeded with ``seed``; restore every global RNG.

    Restored afterwards: torch's CPU generator, the generators of every CUDA device already
    initialized, Python's ``random`` and NumPy's legacy global state. CUDA devices are not seeded
    (seeding an uninitialized device would act later, on the training run); their streams are
    restored.
    """
    seed = check_seed(seed)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002  (the legacy global state is restored)
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
