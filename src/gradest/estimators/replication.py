"""Parameters checked and replicated along a leading sample axis: the builder probed on R
replicas (plain or right-aligned layout) so that per_sample can take N single-sample gradients
in one backward pass; refuses builders that do not broadcast or that mix the sample axis."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator, Mapping

import torch
from torch.distributions import Distribution

from gradest import limits
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.records import Builder
from gradest.stats import check_dense


def check_params(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(params, Mapping) or not params:
        raise GradestError("params must be a non-empty mapping of name -> tensor")
    out = {}
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise GradestError(
                f"parameter {name!r} must be a torch.Tensor, got {type(value).__name__}; "
                f"wrap it with torch.tensor(...)"
            )
        check_dense(value, f"parameter {name!r}",
                    "give it values on cpu or cuda (e.g. torch.empty_like(p, device='cpu'))")
        if not value.is_floating_point():
            raise GradestError(
                f"parameter {name!r} must be a floating-point tensor to be differentiated, "
                f"got dtype {value.dtype}; use torch.tensor(..., dtype=torch.float64)"
            )
        if value.numel() == 0:
            raise GradestError(f"parameter {name!r} has no elements (shape {list(value.shape)}): there is no "
                               "gradient to estimate; give it at least one value")
        finite = torch.isfinite(value)
        if not finite.all():
            bad = int((~finite).sum())
            raise NonFiniteError(
                f"parameter {name!r} contains NaN or inf ({bad} of {value.numel()} values"
                f"{', shape ' + str(list(value.shape)) if value.dim() else ''}); a diverged run, or the "
                "parameters need checking before the call"
            )
        out[name] = value
    dtypes = {str(v.dtype).removeprefix("torch.") for v in out.values()}
    if len(dtypes) > 1:
        raise GradestError(
            f"the parameters have different dtypes ({', '.join(sorted(dtypes))}), and torch would compute "
            "at the lower precision without a word; convert them to one, e.g. .to(torch.float64)"
        )
    devices = {str(v.device) for v in out.values()}
    if len(devices) > 1:
        raise GradestError(
            f"the parameters live on different devices ({', '.join(sorted(devices))}); move them to one "
            "with .to(device)"
        )
    return out


def build(dist_builder: Builder, params: Mapping[str, torch.Tensor]) -> Distribution:
    """Call the builder, turning torch's constraint errors into a message naming the parameter."""
    try:
        dist = dist_builder(**params)
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GradestError(f"could not build the distribution from {sorted(params)}: {first}") from None
    if not isinstance(dist, Distribution):
        raise GradestError(
            f"dist_builder must return a torch.distributions.Distribution, got {type(dist).__name__}"
        )
    return dist


def check_num_samples(num_samples: int, minimum: int = 1) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < minimum:
        raise GradestError(f"num_samples must be an integer ≥ {minimum}, got {num_samples!r}")
    return num_samples


#: below this many numbers (N × numbers per sample) a call is not checked against free memory
_MEMORY_CHECK_FROM = 2**26


def check_memory(num_samples: int, params: Mapping[str, torch.Tensor], dist: Distribution) -> None:
    """Refuse, with the N that fits, a call whose draws and per-sample gradients exceed free memory."""
    numbers = sum(v.numel() for v in params.values()) + dist.batch_shape.numel() * dist.event_shape.numel()
    if num_samples * numbers >= _MEMORY_CHECK_FROM:
        limits.refuse_beyond_memory("num_samples", num_samples, numbers)


def plain_replicas(params: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, *v.shape) for k, v in params.items()}


def _aligned(params: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Right-aligned: a parameter of lower rank gets singleton axes after the sample axis."""
    rank = max(v.dim() for v in params.values())
    return {k: v.reshape(*([1] * (rank - v.dim())), *v.shape).expand(n, *([1] * (rank - v.dim())), *v.shape)
            for k, v in params.items()}


def _family_tensors(dist: Distribution, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors a distribution was built from (its arg_constraints), recursing into parts."""
    try:
        names = list(dist.arg_constraints)
    except NotImplementedError:
        names = []
    for name in names:
        value = vars(dist).get(name)
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
    for name, value in vars(dist).items():
        if isinstance(value, Distribution):
            yield from _family_tensors(value, f"{prefix}{name}.")


def _mixes(replicated: Distribution, single: Distribution, rows: int) -> str | None:
    """The first family tensor whose replicated rows differ from the single build (None: none)."""
    for (name, a), (_, b) in zip(_family_tensors(replicated), _family_tensors(single), strict=False):
        try:
            b = torch.broadcast_to(b, a.shape)
        except RuntimeError:
            return name
        if a.shape[:1] != (rows,):
            return name
        eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
        tol = math.sqrt(eps) if eps else 0.0
        a, b = a.detach(), b.detach()
        if not torch.allclose(a, b, rtol=tol, atol=tol * (1.0 + float(b.abs().max()))):
            return name
    return None


def replicate(dist_builder: Builder, params: Mapping[str, torch.Tensor], num_samples: int,
              single: Distribution | None = None
              ) -> tuple[dict[str, torch.Tensor], Distribution, Distribution]:
    """Replicas ``[N, …]`` of the parameters, the replicated distribution and the single one.

    Tries the plain layout (every parameter ``[N, *shape]``), then the right-aligned one (a shared
    parameter of lower rank gets singleton axes), on a probe of R replicas (R ≥ 2, a size no axis
    has): the builder must give batch shape ``[R, *B]`` and the same family tensors in every row as
    without replication. ``single``: the build from ``params`` themselves, where the caller has it.
    """
    single = build(dist_builder, params) if single is None else single
    key = _layout_key(dist_builder, params)
    known = _LAYOUTS.get(key) if key is not None else None
    if known is not None:  # this builder was probed at these shapes: its verdict stands
        replicas = known(params, num_samples)
        dist = _replicated(dist_builder, replicas)
        if dist.batch_shape == (num_samples, *single.batch_shape):
            return replicas, dist, single
    # probe with a replica count no axis has, so that broadcasting cannot succeed by coincidence
    sizes = {n for v in params.values() for n in v.shape} | set(single.batch_shape) | set(single.event_shape)
    rows = next(r for r in range(2, 3 + len(sizes)) if r not in sizes)
    target = torch.Size((rows, *single.batch_shape))
    layouts = [plain_replicas] if len({v.dim() for v in params.values()}) == 1 else [plain_replicas, _aligned]
    problems = []
    for layout in layouts:
        try:
            probe = dist_builder(**layout(params, rows))
        except Exception as err:  # any failure of the user's builder on replicas means: not this layout
            problems.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        if not isinstance(probe, Distribution) or probe.batch_shape != target \
                or probe.event_shape != single.event_shape:
            shape = list(probe.batch_shape) if isinstance(probe, Distribution) else type(probe).__name__
            problems.append(f"batch shape {shape} instead of {list(target)}")
            continue
        mixed = _mixes(probe, single, rows)
        if mixed is not None:
            raise GradestError(
                f"the builder mixes the leading sample axis: built from {rows} replicas of the parameters, "
                f"its {mixed!r} differs from the one built from the parameters themselves (a softmax, "
                "sum or mean over dim 0?); act on each sample alone with negative dims, e.g. "
                "softmax(logits, -1)"
            )
        replicas = layout(params, num_samples)
        dist = _replicated(dist_builder, replicas)
        if dist.batch_shape != (num_samples, *single.batch_shape):
            problems.append(f"batch shape {list(dist.batch_shape)} with {num_samples} replicas")
            break
        if key is not None:
            if len(_LAYOUTS) >= _MAX_LAYOUTS:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        return replicas, dist, single
    raise GradestError(
        "per-sample gradients replicate the parameters along a leading sample axis, and the builder "
        f"does not broadcast over it ({'; '.join(problems)}); write it with batched operations "
        "(torch.diag_embed instead of torch.diag, x[..., None] instead of x[:, None]), or use "
        "surrogate(), which does not replicate"
    )


#: the layout each builder passed its probe with, per parameter names, shapes, dtypes and devices (a
#: verdict on how the builder treats a leading axis, which does not depend on the values)
_LAYOUTS: dict[tuple[object, ...], object] = {}
_MAX_LAYOUTS = 256


def _layout_key(dist_builder: Builder, params: Mapping[str, torch.Tensor]) -> tuple[object, ...] | None:
    try:
        hash(dist_builder)
    except TypeError:
        return None
    return (dist_builder, tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in params.items()))


def _replicated(dist_builder: Builder, replicas: Mapping[str, torch.Tensor]) -> Distribution:
    """The builder on the replicas, without validating their values again: the single build
    validated these very values (under the caller's setting), and the probe showed every row of the
    replicated build equal to it, so N copies need no check (it cost N passes over the samples)."""
    if isinstance(dist_builder, type) and issubclass(dist_builder, Distribution):
        return build(functools.partial(dist_builder, validate_args=False), replicas)
    if threading.active_count() > 1:  # torch's switch is process-wide: another thread could build meanwhile
        return build(dist_builder, replicas)
    default = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        return build(dist_builder, replicas)
    finally:
        Distribution.set_default_validate_args(default)


def _graph_reaches(output: torch.Tensor, targets: list[torch.Tensor]) -> list[int]:
    """Indices of ``targets`` (tensors needing gradients) that ``output``'s autograd graph reaches."""
    nodes, leaves = {}, {}
    for i, t in enumerate(targets):
        if t.grad_fn is not None:
            nodes[t.grad_fn] = i
        elif t.requires_grad:
            leaves[id(t)] = i
    found, seen, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in nodes:
            found.add(nodes[node])
            continue
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in leaves:
            found.add(leaves[id(variable)])
        stack.extend(n for n, _ in node.next_functions)
    return sorted(found)
