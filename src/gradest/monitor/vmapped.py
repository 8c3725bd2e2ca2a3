r"""R per-repeat gradients in one vectorized pass: ``torch.func.vmap(torch.func.grad(loss))`` over
the repeats, with each repeat's noise the very draws R consecutive calls of the loss would make.

For the loss L_r(θ) = loss_fn(batch, generator) of repeat r, the pass returns ∇θ L_r for
r = 1..R at once: the parameters are swapped in by ``torch.func.functional_call`` (they must belong
to modules), the repeats are a vmapped axis, so what does not depend on the noise (the encoder of
a VAE on a fixed batch) is computed once and what does is computed as one batched operation.

The noise. Every draw the loss makes from the monitor's generator (a call with
``generator=`` that generator: ``torch.randn(shape, generator=g)``, ``torch.rand``, …) is
recorded once — its function and arguments, which may not be tensors — and drawn outside the
vectorized pass in the loop's order (repeat 1's draws, then repeat 2's, …), then handed to each
repeat in place of its own call. So the R gradients are those of R calls of the loss, number for
number, and the generator ends where the loop leaves it. Inside the pass any other randomness
(the global RNG: dropout) raises, as does data-dependent Python control flow, an in-place update of
outside state, or an operation without a batching rule: :class:`NotBatchable`, and the monitor
measures repeat by repeat instead. A draw whose arguments differ from the record (a new batch
size) redraws the record first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

#: a recorded draw: the function, its positional and keyword arguments (the generator among them)
Draw = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class NotBatchable(Exception):
    """The loss cannot run vectorized over the repeats (the reason is the message)."""


class _Stale(NotBatchable):
    """The loss drew differently from the record (another shape): record again."""


class _Draws(TorchFunctionMode):
    """Records the loss's draws from ``generator`` (``noise`` None), or hands out ``noise[k]`` for
    the k-th, checked against the record."""

    def __init__(self, generator: torch.Generator, record: list[Draw] | None = None,
                 noise: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.record: list[Draw] = [] if record is None else record
        self.noise = noise
        self.used = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is not self.generator:
            if any(a is self.generator for a in args):
                raise NotBatchable("the loss passes the generator positionally; pass it as generator=")
            return func(*args, **kwargs)
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves((args, kwargs))):
            raise NotBatchable(f"{getattr(func, '__name__', func)} draws with tensor arguments")
        if self.noise is None:
            out = func(*args, **kwargs)
            self.record.append((func, args, dict(kwargs)))
            return out
        k = self.used
        if k >= len(self.record) or self.record[k] != (func, args, kwargs):
            raise _Stale("the loss drew differently from its record")
        self.used += 1
        return self.noise[k]


class _Bound(nn.Module):
    """The monitored modules as one module, so ``functional_call`` can swap their parameters while
    the loss (which closes over the modules themselves) runs."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.held = nn.ModuleList(modules)

    def forward(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        return call()


class Vectorized:
    """Per-repeat gradients of ``loss_fn(batch, generator)`` by one vmapped pass (module docstring).

    ``modules`` must hold every parameter of ``named`` (else :class:`NotBatchable` at construction).
    """

    def __init__(self, loss_fn: Callable[..., Any], modules: list[nn.Module],
                 named: Mapping[str, torch.Tensor]) -> None:
        self.loss_fn = loss_fn
        self.bound = _Bound(modules)
        inside = {}
        for name, p in self.bound.named_parameters(remove_duplicate=False):
            inside.setdefault(id(p), name)
        missing = [n for n, p in named.items() if id(p) not in inside]
        if missing:
            raise NotBatchable(f"parameter {missing[0]!r} belongs to no monitored module")
        self.names = {n: inside[id(p)] for n, p in named.items()}
        self.named = dict(named)
        self.record: list[Draw] | None = None

    def _record(self, batch: Any, generator: torch.Generator) -> list[Draw]:
        """One call of the loss, its draws recorded; the generator put back where it was."""
        state = generator.get_state()
        mode = _Draws(generator)
        try:
            with mode:
                loss = self.loss_fn(batch, generator)
        except NotBatchable:
            raise
        except Exception as err:  # the loop will raise it again, with the loss's own message
            raise NotBatchable(f"the loss raised {type(err).__name__}") from err
        finally:
            generator.set_state(state)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise NotBatchable("the loss returns no scalar tensor")
        return mode.record

    def gradients(self, batch: Any, generator: torch.Generator, repeats: int,
                  restore: Callable[[], None]) -> dict[str, torch.Tensor]:
        """``{name: [R, *shape]}``; ``restore`` puts back the state a recording call changed.

        Raises NotBatchable (the generator then as it was before the call)."""
        state = generator.get_state()
        for attempt in range(2):
            if self.record is None:
                self.record = self._record(batch, generator)
                restore()
            try:
                return self._pass(batch, generator, repeats, self.record)
            except _Stale:
                generator.set_state(state)
                if attempt:
                    raise
                self.record = None
            except BaseException:
                generator.set_state(state)
                raise
        raise AssertionError("unreachable")

    def _pass(self, batch: Any, generator: torch.Generator, repeats: int,
              record: list[Draw]) -> dict[str, torch.Tensor]:
        # the loop's order: all of repeat 1's draws, then repeat 2's, …
        rows = [[func(*args, **kwargs) for func, args, kwargs in record] for _ in range(repeats)]
        noise = [torch.stack([row[k] for row in rows]) for k in range(len(record))]

        def loss_of(params: dict[str, torch.Tensor], noise: list[torch.Tensor]) -> torch.Tensor:
            mode = _Draws(generator, record, noise)
            with mode:
                loss = torch.func.functional_call(self.bound, params,
                                                  (lambda: self.loss_fn(batch, generator),))
            if mode.used != len(record):
                raise _Stale("the loss drew less than its record")
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise NotBatchable("the loss returns no scalar tensor")
            return loss.reshape(())

        params = {inner: self.named[outer] for outer, inner in self.names.items()}
        try:
            grads = torch.func.vmap(torch.func.grad(loss_of), in_dims=(None, 0), randomness="error")(
                params, noise)
        except NotBatchable:
            raise
        except Exception as err:  # no batching rule, data-dependent control flow, other randomness, …
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise NotBatchable(first[:200]) from err
        return {outer: grads[inner].detach() for outer, inner in self.names.items()}


def agree(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two sets of per-repeat gradients are the same numbers up to float rounding: each
    parameter's largest difference within 10³ machine epsilons of its largest entry."""
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape or not bool(torch.isfinite(x).all()):
            return False
        if x.numel() == 0:
            continue
        tol = 1e3 * torch.finfo(y.dtype).eps * max(float(y.abs().max()), torch.finfo(y.dtype).tiny)
        if float((x - y).abs().max()) > tol:
            return False
    return True
