r"""The cost's contract, verified on a probe instead of inferred from shapes.

The estimand is L(θ) = E_x[Σ_b f_b(x; θ)] for ONE draw x, so a cost evaluated on N draws
``x [N, *B, *E]`` must treat them as N independent runs, and a per-element cost ``[N, *C]`` used
as per-element learning signals must have f_n,b depend on x_n,b alone. Neither can be read from
f's output shape: ``x.sum(0)`` of a ``[N, B]`` draw with B = N has the shape of one value per sample,
and a batch-norm layer in training mode returns one value per element while mixing them. And a
cost that reads a parameter it did not declare loses the direct term ∂f/∂θ in the per-sample view
whether or not that parameter needs a gradient.

So the first evaluation of a cost (per cost code, shapes and estimator kind: :class:`ProbeKey`)
is watched and repeated once:

* **mixing**: the same f on the same draws but for one draw of one element, swapped for another
  draw's value (the global RNG replayed, so that dropout draws the same masks): every other output
  must stay as it was. One that moves in another sample's row means f mixes samples (refused:
  every estimator's estimand would change); in the same row, f mixes elements (refused where the
  estimator weights each element by its own cost, ``Capabilities.separable``; the fix: return the
  total ``[N]``);
* **undeclared parameters**: under a ``TorchFunctionMode``, the memory of every tensor f hands to
  torch is compared with the parameters' (storage identity, not ``requires_grad``): a parameter f
  reads without declaring it is refused in the per-sample view, naming the fix.

A verdict is cached (pass or the refusal), so a training loop pays for the probe once. It holds for
the cost's code together with what its closure holds that can change its structure (plain values
such as a ``kind`` string, frozen dataclasses, a module's training flags, inner functions): a
factory's costs share their code, and a batch-norm network switched to training mode mixes.

One more check runs on every call of a cost whose values an estimator weights (score-type, mvd) on a
continuous family, because it depends on θ, not on f's code: **resolution**. Where a coordinate's
draws move f by less than 64 units in its last place although f has a slope there
(``|∂f/∂x_j| · spread_j ≤ 64 ε |f|``), that coordinate's share of f's variation is lost to
rounding — (x + 3)² at draws of N(0, 10⁻¹⁷) is 9 to the last bit; a total over coordinates at
scales 10⁻¹⁷ and 10³ drowns the small ones — and a score-type or measure-valued estimate is the
gradient of the rounding (0 where the truth is 6). The slope comes from one backward pass of f, run
only where a value column is flat or the coordinates' spreads differ by more than 2²⁰; a slope below
``64 ε (|f| + 1)`` is rounding itself and passes (the estimate 0 is then right to rounding).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gradest.errors import GradestError
from gradest.rng import GLOBAL_RNG_LOCK

#: metadata reads that do not use a tensor's values
_METADATA = frozenset({"__get__", "numel", "dim", "size", "stride", "is_floating_point", "element_size",
                       "nelement", "is_contiguous", "ndimension", "data_ptr", "storage_offset",
                       "is_complex", "get_device", "__len__"})
_VERDICTS: dict[ProbeKey, str | None] = {}
_MAX_VERDICTS = 4096


class ProbeKey(NamedTuple):
    """What a verdict holds for: the cost's code (a closure made anew each step shares it) and what
    in its closure can change its structure (see :func:`_structure`), the draws' shape and dtype,
    whether element and sample mixing are refused, and — where parameters are watched — what the
    closure holds and where the parameters live (the same code can close over a parameter in one call
    and over something else in the next)."""

    code: object
    closure: tuple[object, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    separable: bool
    diagnostic: bool
    watched: tuple[object, ...]


def key_of(f: Callable, x: torch.Tensor, watched: Mapping[str, torch.Tensor], separable: bool,
           diagnostic: bool) -> ProbeKey:
    code = getattr(f, "__code__", None)
    if code is None or getattr(f, "__defaults__", None) or getattr(f, "__kwdefaults__", None):
        code = f  # a callable object, or a function whose defaults may hold state: the object itself
    cells = getattr(f, "__closure__", None) or ()
    held: tuple[object, ...] = ()
    if watched:
        held = (tuple(id(c.cell_contents) for c in cells if _filled(c)),
                tuple((k, _span(t)) for k, t in sorted(watched.items())))
    return ProbeKey(code, _closure_structure(f, _DEPTH), tuple(x.shape), x.dtype, separable, diagnostic,
                    held)


#: how deep the closure of a function inside a closure is followed
_DEPTH = 3
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _closure_structure(f: Callable, depth: int) -> tuple[object, ...]:
    cells = getattr(f, "__closure__", None) or ()
    return tuple(_structure(c.cell_contents, depth) if _filled(c) else None for c in cells)


def _structure(value: object, depth: int) -> object:
    """What of a closed-over value can change what the same code computes, as a hashable key.

    Plain values (numbers, strings, flags: a ``kind`` that picks a branch), tuples and frozen
    dataclasses of them by value; a module by its type and every submodule's ``training`` flag (batch
    norm mixes the batch only in training mode); a function by its code and its own closure; any
    other object by its type alone — a batch or a parameter tensor made anew each step shares the
    verdict. Nothing here calls a user's ``__eq__`` or ``__hash__``.
    """
    if isinstance(value, _PLAIN) or isinstance(value, enum.Enum):
        return (type(value), value)
    if depth <= 0:
        return type(value)
    if type(value) in (tuple, frozenset):
        return (type(value), tuple(_structure(v, depth - 1) for v in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type) \
            and type(value).__dataclass_params__.frozen:
        return (type(value), tuple(_structure(getattr(value, fld.name), depth - 1)
                                   for fld in dataclasses.fields(value)))
    if isinstance(value, torch.nn.Module):
        return (type(value), tuple(m.training for m in value.modules()))
    code = getattr(value, "__code__", None)
    if code is not None and callable(value):
        return (code, _closure_structure(value, depth - 1))
    return type(value)


def _filled(cell: object) -> bool:
    try:
        cell.cell_contents  # noqa: B018 — an empty cell raises
    except ValueError:
        return False
    return True


def verdict(key: ProbeKey) -> tuple[bool, str | None]:
    """(known, refusal): whether the key was probed, and the refusal found (None: it passed)."""
    if key in _VERDICTS:
        return True, _VERDICTS[key]
    return False, None


def remember(key: ProbeKey, refusal: str | None) -> None:
    if len(_VERDICTS) >= _MAX_VERDICTS:
        _VERDICTS.clear()
    _VERDICTS[key] = refusal


# ── undeclared parameters: which memory f reads ─────────────────────────────────────────────


def _span(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage, first byte, last byte) of the memory a strided tensor reads."""
    if t.numel() == 0 or t.layout != torch.strided or t.device.type == "meta":
        return (0, 0, -1)
    start = t.data_ptr()
    extent = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))
    return (t.untyped_storage().data_ptr(), start, start + (extent + 1) * t.element_size() - 1)


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2] and a[1] <= a[2] and b[1] <= b[2]


def aliases(x: torch.Tensor, watched: Mapping[str, torch.Tensor]) -> bool:
    """Whether the points ``x`` share memory with a watched parameter (f evaluated at θ itself)."""
    span = _span(x)
    return any(_overlap(span, _span(t)) for t in watched.values())


class _Reads(TorchFunctionMode):
    """Records the memory spans of every tensor argument of the torch calls made under it."""

    def __init__(self, watched: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.spans = {name: _span(t) for name, t in watched.items()}
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.spans and getattr(func, "__name__", "") not in _METADATA:
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, torch.Tensor):
                    self._check(a)
        return func(*args, **kwargs)

    def _check(self, t: torch.Tensor) -> None:
        span = _span(t)
        for name, watched in list(self.spans.items()):
            if _overlap(span, watched):
                self.found.append(name)
                del self.spans[name]


@contextlib.contextmanager
def reads(watched: Mapping[str, torch.Tensor]) -> Iterator[list[str]]:
    """``with reads({name: tensor}) as found:`` — the watched parameters read under the block."""
    if not watched:
        yield []
        return
    mode = _Reads(watched)
    with mode:
        yield mode.found


def undeclared_message(name: str) -> str:
    return (
        f"f uses the parameter {name!r} without declaring it, so its direct term ∂f/∂{name} would be "
        f"lost; declare it, e.g. def f(x, {name}): …, and gradest passes it (with a leading sample axis) "
        "and adds the term"
    )


# ── mixing: does one draw's change move other outputs ───────────────────────────────────────


@contextlib.contextmanager
def replayed_rng(device: torch.device) -> Iterator[Callable[[], None]]:
    """Yields ``replay()``, which puts the global RNG back where it was on entry; the RNG state
    after the block is the one it had before ``replay`` was first called."""
    with GLOBAL_RNG_LOCK:  # another thread's locked draw must never see the state replayed under it
        with _replayed(device) as replay:
            yield replay


@contextlib.contextmanager
def _replayed(device: torch.device) -> Iterator[Callable[[], None]]:
    cuda = device.type == "cuda"
    start = torch.get_rng_state(), (torch.cuda.get_rng_state(device) if cuda else None)
    after: list = []

    def replay() -> None:
        if not after:
            after.append((torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None))
        torch.set_rng_state(start[0])
        if cuda:
            torch.cuda.set_rng_state(start[1], device)

    try:
        yield replay
    finally:
        if after:
            torch.set_rng_state(after[0][0])
            if cuda:
                torch.cuda.set_rng_state(after[0][1], device)


def swaps(x: torch.Tensor, cells: int, limit: int = 6) -> list[tuple[torch.Tensor, int, int]]:
    """Up to ``limit`` copies of x with one draw (0, e) replaced by a different value: of element e
    from another sample (the farthest, then the nearest: a cost can give the farthest value the same
    cost, e.g. a count of ones), for the first elements; else another element of sample 0. Each is
    (x′, e, source row); empty when every candidate is equal."""
    n = x.shape[0]
    flat = x.detach().reshape(n, cells, -1)
    out: list[tuple[torch.Tensor, int, int]] = []
    for e in range(min(cells, 4)):
        gap = (flat[:, e] != flat[0, e]).any(-1)
        if not bool(gap.any()):
            continue
        if flat.is_floating_point():
            distance = (flat[:, e] - flat[0, e]).abs().sum(-1)
            rows = [int((distance * gap).argmax()), int(distance.masked_fill(~gap, math.inf).argmin())]
        else:
            rows = [int(r) for r in gap.nonzero()[:2, 0]]
        for j in dict.fromkeys(rows):
            moved = flat.clone()
            moved[0, e] = flat[j, e]
            out.append((moved.reshape(x.shape), e, j))
            if len(out) >= limit:
                return out
    if not out and cells > 1:
        differs = (flat[0] != flat[0, 0]).any(-1)
        cols = differs.nonzero()
        if cols.numel():
            moved = flat.clone()
            moved[0, 0] = flat[0, int(cols[0, 0])]
            out.append((moved.reshape(x.shape), 0, 0))
    return out


def _moved(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``[n, C]``: which outputs moved (each against its own size: one huge element hides no other)."""
    n = before.shape[0]
    a, b = before.detach().reshape(n, -1), after.detach().reshape(n, -1)
    if a.is_floating_point():
        return (a - b).abs() > 64 * torch.finfo(a.dtype).eps * (1.0 + torch.maximum(a.abs(), b.abs()))
    return a != b


def mixing(before: torch.Tensor, after: torch.Tensor, element: int) -> str | None:
    """'samples' or 'elements' when outputs other than (0, element) moved, else None."""
    n = before.shape[0]
    moved = _moved(before, after)
    if n > 1 and bool(moved[1:].any()):
        return "samples"
    cells = moved.shape[1]
    if cells > 1:
        others = torch.ones(cells, dtype=torch.bool, device=moved.device)
        others[element if element < cells else 0] = False
        if bool((moved[0] & others).any()):
            return "elements"
    return None


def mixing_message(kind: str, estimator: str, shape: list[int]) -> str:
    if kind == "samples":
        return (
            f"f mixes the samples: changing one draw moved the cost of other samples (a mean, sum or "
            f"normalisation over dim 0, or a batch-norm layer in training mode over the draws; output "
            f"shape {shape}); each of the N samples is an independent run of the model, so f must act "
            "on each alone: reduce over negative dims (x.sum(-1)), or put the network in eval mode"
        )
    return (
        f"f mixes the batch elements of one sample: changing one element's draw moved the cost of "
        f"others (a centring over the batch, a batch-norm layer in training mode; output shape {shape}), "
        f"and {estimator} weights each element's log-density by that element's own cost, which would "
        "bias it; return the total per sample, shape [N] (e.g. f(x).sum(-1)), or make f act on each "
        "element alone"
    )


def probe(evaluate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, key: ProbeKey,
          watched: Mapping[str, torch.Tensor], estimator: str, separable: bool, diagnostic: bool,
          cells: Callable[[torch.Tensor], int] | None = None) -> torch.Tensor:
    """``evaluate(x)``, the first time for ``key`` watched and repeated once on a changed draw.

    Returns the output of the real evaluation; raises GradestError with the refusal (remembered for
    the key) when the cost mixes samples (refused where ``separable`` or ``diagnostic``), mixes
    elements (where ``separable``) or reads a watched parameter. ``cells``: how many leading
    elements of a draw the output's elements stand for (default: the output's per-sample size).
    """
    known, refusal = verdict(key)
    if known:
        if refusal is not None:
            raise GradestError(refusal)
        return evaluate(x)
    with replayed_rng(x.device) as replay:
        with reads(watched) as found:
            out = evaluate(x)
        if found:
            refusal = undeclared_message(found[0])
        else:
            width = cells(out) if cells is not None else math.prod(out.shape[1:])
            kind, conclusive = None, False
            for moved, element, _ in swaps(x, width):
                replay()
                with torch.no_grad():
                    after = evaluate(moved)
                    kind = mixing(out, after, element)
                    if kind is not None:  # the same draws again: a cost that is random, not mixing?
                        replay()
                        if mixing(out, evaluate(x), element):
                            kind = None  # f is not a function of x alone here: nothing to conclude
                        conclusive = True
                        break
                if bool(_moved(out, after).any()):  # the change showed, and only where it was made
                    conclusive = True
                    break
            if not conclusive:  # every draw equal, or no change showed in f: probe the next call
                return out
            if (kind == "samples" and (separable or diagnostic)) or (kind == "elements" and separable):
                refusal = mixing_message(kind, estimator or "the estimator", list(out.shape))
    remember(key, refusal)
    if refusal is not None:
        raise GradestError(refusal)
    return out


# ── resolution: do f's values still show the draws' spread ──────────────────────────────────


def _flat(values: torch.Tensor, ulps: float = 64.0) -> torch.Tensor:
    """Per output column of ``values [n, C]``: equal over the n rows to ``ulps`` of the largest magnitude."""
    eps = torch.finfo(values.dtype).eps
    hi, lo = values.amax(0), values.amin(0)
    return (hi - lo) <= ulps * eps * torch.maximum(hi, -lo)  # (the largest |value|, with no pass of abs)


def _any_flat(values: torch.Tensor) -> bool:
    """Whether some column of ``values`` is :func:`_flat`, reading the first SCREEN rows alone where they
    settle it: a column whose first rows spread beyond 128 ulps of their largest |value| spreads beyond
    64 ulps of the whole column's (the whole range is at least the head's, and at least M − M_head
    where the whole column reaches |value| M)."""
    if values.shape[0] > SCREEN and not bool(_flat(values[:SCREEN], 128.0).any()):
        return False
    return bool(_flat(values).any())


#: rows read first by the screens of :func:`resolution`
SCREEN = 1024


#: coordinates whose draws spread less than this fraction of the widest one's are checked for
#: resolution even where no value is flat (their share of f can drown in the others' rounding)
UNEVEN = 2.0**-20


def resolution(evaluate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, out: torch.Tensor,
               estimator: str) -> str | None:
    """The refusal when some coordinate's draws move f by less than its rounding although f has a
    slope in that coordinate (``|∂f/∂x_j| · spread_j ≤ 64 ε |f|`` while ``|∂f/∂x_j| > 64 ε (|f| + 1)``): its
    share of f's variation is lost, and an estimator that weights f's values reads it as 0. Costs two
    reductions; one backward pass of f only where a value column is flat or the coordinates' spreads
    differ by more than 2²⁰ (``UNEVEN``)."""
    def slope_of(points: torch.Tensor) -> torch.Tensor | None:
        probe_x = points.clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                again = evaluate(probe_x)
                return torch.autograd.grad(again.sum(), probe_x, allow_unused=True)[0] \
                    if again.requires_grad else None
        except (RuntimeError, GradestError):
            return None  # f has no derivative in x to read: nothing to conclude

    return resolution_given(x, out, estimator, slope_of)


def resolution_given(x: torch.Tensor, out: torch.Tensor, estimator: str,
                     slope_of: Callable[[torch.Tensor], torch.Tensor | None]) -> str | None:
    """:func:`resolution` where f cannot be evaluated again (a graph's cost is a value): ``slope_of(x)``
    gives ∂Σf/∂x at the draws (autograd through a zero leaf added to them), or None."""
    n = out.shape[0]
    if n < 2 or not out.is_floating_point() or not x.is_floating_point():
        return None
    values = out.detach().reshape(n, -1)
    points = x.detach()
    flat_points = points.reshape(n, -1)
    if flat_points.shape[1] == 1 and not _any_flat(values):
        return None  # one coordinate (nothing to be uneven against) and f's values spread
    if flat_points.shape[0] > SCREEN and not _any_flat(values):
        # even, read cheaply: each coordinate's spread is at least that of its first rows, the widest
        # at most the range of all draws (two whole-tensor reductions instead of two per column)
        head = flat_points[:SCREEN]
        least = (head.amax(0) - head.amin(0)).amin()
        if bool(least > 0) and bool(least >= UNEVEN * (flat_points.amax() - flat_points.amin())):
            return None
    spreads = flat_points.amax(0) - flat_points.amin(0)
    moving = spreads > 0
    if not bool(moving.any()):
        return None  # every draw equal: collapsed draws are sample health's refusal (gradest.health)
    uneven = bool(spreads[moving].amin() < UNEVEN * spreads.amax())
    if not uneven and not _any_flat(values):
        return None
    slope = slope_of(points)
    if slope is None:
        return None
    steep = slope.reshape(n, -1).abs().mean(0)  # [D]
    cells, width = values.shape[1], flat_points.shape[1]
    size = values.abs().mean(0)  # [C]
    # coordinate j belongs to output column j // (D / C) where the cost is per element, else to all
    size_j = size.repeat_interleave(width // cells) if width % cells == 0 else size.amax().expand(width)
    eps = torch.finfo(values.dtype).eps
    lost = moving & (steep * spreads <= 64 * eps * size_j) & (steep > 64 * eps * (size_j + 1.0))
    if not bool(lost.any()):
        return None
    j = int(lost.nonzero()[0, 0])
    return (
        f"f's values do not resolve its draws: coordinate {j}'s draws spread by {float(spreads[j]):.3g} "
        f"and f's slope there is {float(steep[j]):.3g}, so they move f (|f| ≈ {float(size_j[j]):.3g}) by "
        f"less than 64 units in its last place — f's variation is below its own resolution, and "
        f"{estimator or 'the estimator'}, which weights each draw by its cost, would estimate the "
        "gradient of the rounding (0); use a pathwise estimator (it differentiates f) where the family "
        "has rsample, compute in float64, or write f relative to a reference value so that its "
        "variation shows (e.g. (x + 3)² − 9 = x² + 6x, or the cost of each coordinate apart)"
    )
