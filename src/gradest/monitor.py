r"""Gradient-variance monitoring for any PyTorch training loop.

Every ``every`` steps the monitor draws R independent estimates ĝ_1..ĝ_R of the gradient of the
user's stochastic loss, all on one fixed batch at the current parameters, and records per
parameter group (the group's gradients flattened to P numbers):

    ḡ         = (1/R) Σ_r ĝ_r                                    mean gradient; ``mean_norm`` = ‖ḡ‖
    variance  = tr Ĉov(ĝ) = Σ_p Σ_r (ĝ_{r,p} − ḡ_p)² / (R − 1)     unbiased for E‖ĝ − E ĝ‖²
    snr       = ‖ḡ‖ / √variance
    stderr    = √( V̂ / R + 2 T̂ / (R (R − 1)) )                  standard error of ``variance``

``variance`` is the expected squared distance of ONE training gradient from its mean, in the
loss's units squared; ``variance_max`` is its largest single coordinate Σ_r (ĝ_{r,p} − ḡ_p)²/(R − 1).
The variance estimate is a U-statistic with kernel ½‖ĝ_r − ĝ_s‖², whose variance is exactly
Var‖ĝ − E ĝ‖²/R + 2 tr(Σ²)/(R(R − 1)) (Σ the covariance): V̂ is the sample variance of
q_r = ‖ĝ_r − ḡ‖² scaled by (R/(R − 1))² for the centering, and T̂ the unbiased (Gaussian) estimate
of tr Σ² from the R × R Gram matrix of the centred estimates, n²/((n − 1)(n + 2)) (‖S‖²_F − (tr S)²/n)
with n = R − 1, clamped at 0. In simulations its root-mean-square is within a few per cent of the
true spread for Gaussian gradients (R ≥ 4) and ~10% low for heavy tails (Student t, 5 degrees of
freedom). Real stochastic gradients are heavy-tailed (ε² terms, the score function's f·∇log q), and
then one measurement's standard error is itself noisy and small exactly when the variance came
out small: for a small network's pathwise and score-loo gradients, (variance − truth)/stderr had a
standard deviation of 1.7–3.7 at R = 64 and 1.2–2.0 at R = 256 instead of 1. Take R ≥ 128 where
the interval matters, and read trends across steps rather than one point. Note that ‖ḡ‖²
overestimates ‖∇L‖² by variance/R on average, so a small SNR is floored near 1/√R.

How the R estimates are drawn (``GroupStats.path`` says which ran):

* ``"batched"`` — when ``loss_fn`` takes a ``repeats`` argument. ``loss_fn(batch, generator,
  repeats=R)`` returns ``[R]`` independent losses, each distributed like one call's, typically by
  adding a leading repeat axis to the noise (``torch.randn((R, *shape), generator=g)``) or to the
  batch. One forward pass of the R repeats, then ONE batched vector–Jacobian product
  (``autograd.grad`` with ``is_grads_batched``: torch vmaps the backward pass, where nothing is
  random) gives the R gradients. If an operation has no batching rule, R backward passes through
  the same R losses take over (``"batched-forward"``): the same numbers.
* ``"loop"`` — otherwise, or with ``mode="loop"``: R calls of ``loss_fn(batch, generator)`` and R
  backward passes, the documented fallback. When the ``repeats`` form draws each repeat's noise in
  turn, as R consecutive calls would (``torch.stack([torch.randn(shape, generator=g) for _ in
  range(R)])``: torch's CPU generator fills one ``[R, …]`` tensor differently), the two paths give
  the same numbers up to float rounding (tested to 10⁻¹² relative).
* ``"estimates"`` — ``estimates_fn(batch, generator, repeats)`` returns the R estimates itself,
  ``{parameter name: [R, *shape]}`` or gradest's ``PerSampleGradients`` (whose single-sample
  estimates come from one backward pass; their ``groups``, for antithetic and quasi-Monte Carlo
  samplers, are honoured: the variance is then the i.i.d.-equivalent one,
  :func:`gradest.diagnostics.effective_variance` summed over coordinates).

Why not ``torch.func.vmap`` over the repeats: in torch 2.13 ``vmap(grad(loss),
randomness="different")`` does accept explicit generators in simple losses, but it draws the R
repeats' noise as one ``[R, …]`` tensor, which torch's CPU generator fills differently from R
separate draws (so the numbers would not match the loop), and it refuses data-dependent Python
control flow, which every gradest surrogate has (its NaN check on the costs). So the monitor
batches only the backward pass, over losses the user's own code produced.

No side effects: the training run is bit-for-bit the same with and without the monitor. The
monitor differentiates with ``torch.autograd.grad`` (no ``.grad`` is written, no optimizer is
touched; every ``.grad`` attribute is put back as it was anyway), draws from its own generator
(``seed``), runs under the global RNGs forked and seeded from its own seed (dropout inside the
loss is reproducible; torch's, Python's and NumPy's global RNGs are restored), restores the
buffers of every module among the parameters (BatchNorm statistics), and restores the objects
registered as ``state`` — an estimator whose moving-average baseline the loss advances, a learned
control variate, a generator the loss closes over — after EACH repeat, so every repeat sees the
training's state, as the next training step will (:mod:`gradest.snapshot`). The loss must draw its
noise from the generator it is given; a generator it closes over must be registered as ``state``.

Per stochastic node: when ``loss_fn(batch, generator)`` returns the :class:`gradest.graph.Graph` it
built (instead of ``g.surrogate()``), each repeat's gradient is ∇ surrogate split by node through
the graph's attribution (:meth:`~gradest.graph.Graph.node_means`: a score node's term, a callable
node's estimate, a pathwise node's share of the costs' gradient, ``direct``), and the monitor adds
one record per node, group ``"node:NAME"``, over every monitored parameter: the variance of that
node's contribution to ONE training gradient, its standard error, SNR and mean norm. The node
records go wherever the group records go (JSONL, TensorBoard ``gradient/node:NAME/…``, Lightning,
:func:`plot`). A graph loss runs on the loop path (each repeat's split needs its own graph).

Outputs: ``records`` in memory; JSONL (``jsonl=PATH``: one line per step and group, appended by one
``write`` and a flush per measurement); TensorBoard scalars (``tensorboard=LOGDIR`` or a
``SummaryWriter``; needs the ``tensorboard`` extra, skipped with a :class:`MonitorWarning` when it
is not installed); :func:`plot` (variance and SNR against the step); :meth:`GradientMonitor.overhead`
(the monitor's share of the wall time between its first and latest call). A PyTorch Lightning
callback lives in :mod:`gradest.monitor_lightning`.

Example::

    monitor = GradientMonitor(model, loss_fn, every=50, repeats=16, state=[est], jsonl="run/monitor.jsonl")
    for step, batch in enumerate(loader):
        monitor.step(step, batch)          # measures at steps 0, 50, 100, …; changes nothing
        opt.zero_grad(); loss_fn(batch, train_gen).backward(); opt.step()
    plot(monitor.records, "run/monitor.png"); print(monitor.overhead().share)
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from gradest.diagnostics import check_groups
from gradest.errors import GradestError
from gradest.estimators.base import PerSampleGradients
from gradest.rng import check_seed, make_generator
from gradest.snapshot import Snapshot, global_rngs_forked

if TYPE_CHECKING:
    from gradest.graph import Graph

MODES = ("auto", "batched", "loop")
ALL = "all"
#: the group name of a stochastic node's records: ``"node:z1"``
NODE_PREFIX = "node:"
_SEED_HIGH = 2**62
#: separates the monitor's global-RNG seeds from its main stream (which must not be consumed by them)
_FORK_SALT = 0x9E3779B97F4A7C15

LossFn = Callable[..., "torch.Tensor | Graph"]
#: node -> parameter name -> ``[R, *shape]``: each repeat's gradient split by stochastic node
NodeEstimates = dict[str, dict[str, torch.Tensor]]
EstimatesFn = Callable[[Any, torch.Generator, int], "Mapping[str, torch.Tensor] | PerSampleGradients"]


class MonitorWarning(UserWarning):
    """An optional output of the monitor is skipped (its package is not installed)."""


class Statistics(NamedTuple):
    """Statistics of R gradient estimates of one parameter group (see the module docstring)."""

    mean_norm: float
    variance: float
    variance_stderr: float
    variance_max: float
    snr: float


class GroupStats(NamedTuple):
    """One record: a parameter group at one step.

    size: P, the numbers in the group. repeats: R. seconds: wall time of the whole measurement
    (every group). path: how the estimates were drawn (module docstring).
    """

    step: int
    group: str
    size: int
    repeats: int
    mean_norm: float
    variance: float
    variance_stderr: float
    variance_max: float
    snr: float
    seconds: float
    path: str

    def to_json(self, tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-ready dict; NaN and ±inf become null (JSON has no such numbers)."""
        out = dict(tags or {})
        for key, value in self._asdict().items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out


class Overhead(NamedTuple):
    """The monitor's own wall time against the wall time between its first and latest call."""

    monitor_seconds: float
    total_seconds: float

    @property
    def share(self) -> float:
        return self.monitor_seconds / self.total_seconds if self.total_seconds > 0 else math.nan


# ── the statistics: a pure function ──────────────────────────────────────────────────────────


def _deviations(estimates: torch.Tensor, mean: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Centred independent units ``[U, P]``: the R estimates, or one per group of dependent ones.

    With groups of sizes n_g and means m_g (N estimates in all), y_g = √(N G)·(n_g/N)(m_g − ḡ) gives
    Σ_g y_g²/(G − 1) = N · stderr², the cluster estimate of :func:`gradest.diagnostics.mean_stderr`.
    """
    if groups is None:
        return estimates - mean
    n = estimates.shape[0]
    size = int(groups.max()) + 1
    counts = torch.bincount(groups.to(estimates.device), minlength=size).to(estimates.dtype)
    present = counts > 0
    sums = estimates.new_zeros(size, estimates.shape[1]).index_add_(0, groups.to(estimates.device), estimates)
    sums, counts = sums[present], counts[present]
    g = sums.shape[0]
    return math.sqrt(n * g) * (counts[:, None] / n) * (sums / counts[:, None] - mean)


class _Sums(NamedTuple):
    """The additive parts of the statistics of some coordinates: a group's are the sums (for
    ``variance_max`` the maximum) of its parameters', so no coordinate is processed twice."""

    mean_sq: torch.Tensor  # ‖ḡ‖²
    variance: torch.Tensor  # Σ_p of the per-coordinate variances
    variance_max: torch.Tensor
    gram: torch.Tensor  # [U, U] Gram matrix of the centred independent units


#: numbers per block on the CPU (2 MB in float64): a large parameter's float64 copy and its
#: deviations stay in cache, one block at a time
_CPU_BLOCK = 1 << 18


def _sums(estimates: torch.Tensor, groups: torch.Tensor | None) -> _Sums:
    if estimates.dim() != 2 or estimates.shape[0] < 2:
        raise GradestError(f"need R ≥ 2 estimates as [R, P], got shape {list(estimates.shape)}")
    dtype = estimates.dtype if estimates.device.type == "mps" else torch.float64  # MPS has no float64
    width = max(_CPU_BLOCK // estimates.shape[0], 1) if estimates.device.type == "cpu" else \
        max(estimates.shape[1], 1)
    parts = []
    for block in estimates.split(width, dim=1) if estimates.shape[1] else [estimates]:
        block = block.to(dtype)
        mean = block.mean(0)
        dev = _deviations(block, mean, groups)
        if dev.shape[0] < 2:
            raise GradestError("the estimates form a single group of dependent samples; draw more groups")
        per_coordinate = torch.einsum("up,up->p", dev, dev) / (dev.shape[0] - 1)
        most = per_coordinate.max() if per_coordinate.numel() else per_coordinate.new_tensor(-math.inf)
        parts.append(_Sums(mean.square().sum(), per_coordinate.sum(), most, dev @ dev.T))
    return _added(parts)


def _added(parts: Sequence[_Sums]) -> _Sums:
    """The parts of the coordinates of ``parts`` together."""
    if len(parts) == 1:
        return parts[0]
    mean_sq, variance, gram = (sum(p[i] for p in parts) for i in (0, 1, 3))
    return _Sums(mean_sq, variance, torch.stack([p.variance_max for p in parts]).max(), gram)


def gradient_statistics(estimates: torch.Tensor, groups: torch.Tensor | None = None) -> Statistics:
    """Mean-gradient norm, variance (trace of the covariance), its standard error, SNR.

    Args:
        estimates: ``[R, P]`` R ≥ 2 gradient estimates of P numbers.
        groups: ``[R]`` labels of dependent estimates (antithetic pairs, quasi-Monte Carlo
            randomizations), or None when the R estimates are independent.
    """
    if not isinstance(estimates, torch.Tensor) or not estimates.is_floating_point() or estimates.is_meta \
            or estimates.layout != torch.strided:
        got = f"{estimates.dtype} {estimates.layout} on {estimates.device}" \
            if isinstance(estimates, torch.Tensor) else type(estimates).__name__
        raise GradestError(f"estimates must be a dense real floating-point tensor [R, P], got {got}")
    if estimates.dim() == 2 and estimates.shape[1] == 0:
        raise GradestError("the estimates have no coordinates (shape [R, 0]); give at least one")
    groups = check_groups(groups, estimates.shape[0] if estimates.dim() else 0, estimates.device)
    return _statistics([_sums(estimates, groups)])


def _statistics(parts: Sequence[_Sums]) -> Statistics:
    """The statistics of the coordinates of ``parts`` together (the module docstring's formulas)."""
    mean_sq, variance, most, gram = _added(parts)
    units = gram.shape[0]
    n = units - 1
    spread = gram.diagonal().var(correction=1) * (units / n) ** 2
    frobenius = (gram * gram).sum() / n**2
    trace_sq = n**2 / ((n - 1) * (n + 2)) * (frobenius - variance**2 / n) if n >= 2 else frobenius
    stderr = (spread / units + 2 * trace_sq.clamp_min(0) / (units * n)).sqrt()
    norm = math.sqrt(float(mean_sq))
    var = float(variance)
    snr = norm / math.sqrt(var) if var > 0 else (math.inf if norm > 0 else math.nan)
    return Statistics(norm, var, float(stderr), float(most), snr)


# ── parameter groups ─────────────────────────────────────────────────────────────────────────


def parameter_groups(source: nn.Module | Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Group name -> {parameter name: tensor}, with ``"all"`` (their union) added.

    ``source``: a module (one group per top-level child module, and one per parameter of its
    own; frozen parameters left out), or a mapping group name -> a tensor, a module or an
    iterable of tensors.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    if isinstance(source, nn.Module):
        for name, p in source.named_parameters():
            if p.requires_grad:
                groups.setdefault(name.split(".")[0], {})[name] = p
    elif isinstance(source, Mapping):
        for group, value in source.items():
            if isinstance(value, torch.Tensor):
                members = {str(group): value}
            elif isinstance(value, nn.Module):
                members = {f"{group}.{n}": p for n, p in value.named_parameters() if p.requires_grad}
            elif isinstance(value, Iterable):
                members = {f"{group}.{i}": p for i, p in enumerate(value)}
            else:
                raise GradestError(f"group {group!r}: give a tensor, a module or an iterable of tensors, "
                                   f"got {type(value).__name__}")
            groups[str(group)] = members
    else:
        raise GradestError("give a module or a mapping of group name -> parameters, got "
                           f"{type(source).__name__}")
    for group, members in groups.items():
        for name, p in members.items():
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise GradestError(f"parameter {name!r} of group {group!r} must be a floating-point tensor")
            if p.is_meta:
                raise GradestError(f"parameter {name!r} of group {group!r} is a meta tensor, which holds no "
                                   "values; monitor the model once its parameters are materialized")
            if p.layout != torch.strided:
                raise GradestError(f"parameter {name!r} of group {group!r} is a {p.layout} tensor; the "
                                   "monitor takes dense parameters")
            if p.numel() == 0:
                raise GradestError(f"parameter {name!r} of group {group!r} has no numbers (shape "
                                   f"{list(p.shape)}): it has no gradient to measure; leave it out")
    groups = {g: m for g, m in groups.items() if m}
    if not groups:
        raise GradestError("no parameters to monitor (all frozen?): give tensors that require gradients")
    if ALL not in groups:
        groups[ALL] = _union(groups.values())
    return groups


def _union(groups: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every tensor once (by identity), under its first name."""
    union: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for members in groups:
        for name, p in members.items():
            if id(p) not in seen:
                seen.add(id(p))
                union[name] = p
    return union


def _takes_repeats(fn: Callable[..., Any]) -> bool:
    try:
        return "repeats" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ── checks of the monitor's arguments ────────────────────────────────────────────────────────


def check_jsonl(path: object) -> Path:
    """``path`` as a file the monitor can append to, or a GradestError — at construction, not at the
    first measurement minutes into training. Leaves no trace (an absent file is created and removed)."""
    if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
        raise GradestError(f"jsonl must be a file path (a str or a pathlib.Path), got {type(path).__name__}")
    text = os.fspath(path)
    if not text.strip() or "\0" in text:
        raise GradestError(f"jsonl={text!r} is not a file name; give one, e.g. jsonl='run/monitor.jsonl'")
    target = Path(text)
    try:
        _check_file_target(target, text)
    except OSError as err:  # a name too long, a loop of links, …
        raise GradestError(f"jsonl={text[:60]!r}: cannot write there ({err.strerror or err}); give a "
                           "writable file path") from None
    return target


def _check_file_target(target: Path, text: str) -> None:
    longest = max(target.parts, key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > _NAME_MAX:
        raise GradestError(f"jsonl: the name {longest[:40]}… has {len(os.fsencode(longest))} bytes, more "
                           f"than the {_NAME_MAX} a file name may have; give a shorter one")
    if target.is_dir() or text.endswith(os.sep):
        raise GradestError(f"jsonl={text!r} is a folder; give a file in it, e.g. {target / 'monitor.jsonl'}")
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise GradestError(f"jsonl={text!r} lies under {folder}, which is a file; give a path in a folder")
    try:
        if target.exists():
            with open(target, "a", encoding="utf-8"):
                pass
        elif target.parent.exists():
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            os.unlink(target)
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except FileExistsError:  # created meanwhile by someone else: it exists, the monitor appends to it
        pass


def _check_tags(tags: object) -> dict[str, Any]:
    """Constant JSON fields; a tag named like a record field would silently overwrite it (or be lost)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise GradestError(f"tags must be a mapping of field -> value, e.g. {{'estimator': 'score-loo'}}, "
                           f"got {type(tags).__name__}")
    out = dict(tags)
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        raise GradestError(f"tag names must be strings, got {bad[0]!r}")
    taken = [k for k in out if k in GroupStats._fields]
    if taken:
        raise GradestError(f"tag {taken[0]!r} is a field of every record ({', '.join(GroupStats._fields)}); "
                           "name the tag otherwise, e.g. 'run_" + taken[0] + "'")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GradestError(f"tags must be JSON values (str, finite numbers, bool, None, lists, dicts): "
                           f"{err}") from None
    return out


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        raise GradestError(f"prefix (the TensorBoard tag prefix) must be a non-empty string, got {prefix!r}")
    return prefix


def _check_step(step: object) -> int:
    if isinstance(step, bool | np.bool_) or not isinstance(step, int | np.integer) or step < 0:
        raise GradestError(f"step must be the training step, an integer ≥ 0, got {step!r}")
    return int(step)


#: the longest file or folder name most file systems take, in bytes (ext4, XFS, APFS, NTFS)
_NAME_MAX = 255
#: bytes per repeat and monitored number (float64 estimates, their deviations and a copy), and per
#: pair of repeats (the Gram matrix and the batched path's identity)
_BYTES_PER_ESTIMATE, _BYTES_PER_PAIR = 32, 16


def _refuse_beyond_memory(repeats: int, numbers: int, device: torch.device) -> None:
    """Refuse ``repeats`` whose estimates could never fit in memory (the kernel would kill the run)."""
    from gradest.compare import available_gpu_memory, available_memory

    available = available_gpu_memory(device) if device.type == "cuda" else available_memory()
    if available is None:
        return
    need = repeats * numbers * _BYTES_PER_ESTIMATE + repeats**2 * _BYTES_PER_PAIR
    if need > available:
        fits = 2
        while 2 * fits * numbers * _BYTES_PER_ESTIMATE + (2 * fits) ** 2 * _BYTES_PER_PAIR <= available // 2:
            fits *= 2
        raise GradestError(f"repeats={repeats} needs about {need / 2**30:.1f} GiB for the estimates of "
                           f"{numbers} numbers, more than the {available / 2**30:.1f} GiB available; use "
                           f"repeats ≤ {fits} (128 to 256 resolve the variance well)")


# ── the monitor ──────────────────────────────────────────────────────────────────────────────


class GradientMonitor:
    """Measure the gradient variance of a stochastic loss while training, leaving the run unchanged.

    Args:
        params: a module (default groups: one per top-level child, and ``"all"``) or a mapping
            group name -> tensor | module | iterable of tensors.
        loss_fn: ``loss_fn(batch, generator) -> scalar`` — the training loss with its noise drawn
            from ``generator`` — or ``-> Graph`` (a :func:`gradest.graph` it built: per-node records
            too, module docstring); optionally ``loss_fn(batch, generator, repeats=R) -> [R]`` (the
            batched path; module docstring).
        estimates_fn: instead of ``loss_fn``: ``(batch, generator, repeats) -> {name: [R, *shape]}``
            or ``PerSampleGradients``, the names those of :func:`parameter_groups`.
        every: measure at steps 0, every, 2·every, … of :meth:`step`.
        repeats: R ≥ 2 estimates per measurement.
        batch: a fixed batch for every measurement (curves then compare like with like); None:
            the batch given to :meth:`step`.
        state: stateful objects the loss changes (estimators with moving-average baselines,
            learned control variates, generators it closes over); restored after each repeat.
        seed: the monitor's generator: a seed (a generator on the parameters' device) or a
            ``torch.Generator`` of the monitor's own, used in sequence — never the training's.
        mode: ``"auto"`` (batched when ``loss_fn`` takes ``repeats``), ``"batched"`` or ``"loop"``.
        jsonl: a file to append one JSON line per step and group to.
        tensorboard: a log folder or a ``SummaryWriter``.
        tags: constant fields added to every JSON record (e.g. ``{"estimator": "score-loo"}``).
        prefix: the TensorBoard tag prefix.
    """

    def __init__(
        self,
        params: nn.Module | Mapping[str, Any],
        loss_fn: LossFn | None = None,
        *,
        estimates_fn: EstimatesFn | None = None,
        every: int = 10,
        repeats: int = 16,
        batch: Any = None,
        state: Sequence[Any] = (),
        seed: int | torch.Generator = 0,
        mode: str = "auto",
        jsonl: str | os.PathLike | None = None,
        tensorboard: Any = None,
        tags: Mapping[str, Any] | None = None,
        prefix: str = "gradient",
    ) -> None:
        if (loss_fn is None) == (estimates_fn is None):
            raise GradestError("give exactly one of loss_fn (a stochastic loss) and estimates_fn")
        for what, fn in (("loss_fn", loss_fn), ("estimates_fn", estimates_fn)):
            if fn is not None and not callable(fn):
                raise GradestError(f"{what} must be a function (batch, generator, …), got "
                                   f"{type(fn).__name__}")
        if isinstance(every, bool | np.bool_) or not isinstance(every, int | np.integer) or every < 1:
            raise GradestError(f"every must be an integer ≥ 1, got {every!r}")
        if isinstance(repeats, bool | np.bool_) or not isinstance(repeats, int | np.integer) or repeats < 2:
            raise GradestError(f"repeats must be an integer ≥ 2 (a variance needs two), got {repeats!r}")
        every, repeats = int(every), int(repeats)
        if mode not in MODES:
            raise GradestError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.groups = parameter_groups(params)
        self.named = _union(self.groups.values())
        if estimates_fn is None:
            frozen = [n for n, p in self.named.items() if not p.requires_grad]
            if frozen:
                raise GradestError(f"parameter {frozen[0]!r} does not require gradients; leave it out")
        self.loss_fn = loss_fn
        self.estimates_fn = estimates_fn
        batched = loss_fn is not None and _takes_repeats(loss_fn)
        if mode == "batched" and not batched:
            raise GradestError("mode='batched' needs loss_fn(batch, generator, repeats=R) returning [R] "
                               "losses; without a repeats argument use mode='loop'")
        self.batched = batched and mode != "loop"
        self.every, self.repeats, self.batch = every, repeats, batch
        self.tags, self.prefix = _check_tags(tags), _check_prefix(prefix)
        device = next(iter(self.named.values())).device
        _refuse_beyond_memory(repeats, sum(p.numel() for p in self.named.values()), device)
        if isinstance(state, str | bytes | Mapping) or not isinstance(state, Iterable):
            raise GradestError(f"state must be a list of the objects the loss changes (e.g. [estimator]), "
                               f"got {type(state).__name__}")
        if isinstance(seed, torch.Generator):
            self.generator = seed
        else:
            self.generator = make_generator(check_seed(seed), device)
        # the global RNG's seeds come from a side stream, so the main one is the loss's alone
        self._fork_seeds = make_generator((self.generator.initial_seed() ^ _FORK_SALT) % _SEED_HIGH)
        modules = [params] if isinstance(params, nn.Module) else \
            [v for v in params.values() if isinstance(v, nn.Module)]
        buffers = [b for m in modules for b in m.buffers()]
        self._restorable = [*state, buffers]
        self.jsonl = None if jsonl is None else check_jsonl(jsonl)
        self._writer, self._own_writer = _tensorboard_writer(tensorboard)
        self.records: list[GroupStats] = []
        self._first: float | None = None
        self._last: float | None = None
        self._seconds = 0.0

    # the training loop's entry points ----------------------------------------------------

    def step(self, step: int, batch: Any = None) -> list[GroupStats] | None:
        """Call once per training step: measures when ``step % every == 0``, else only keeps time."""
        step = _check_step(step)
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        records = self.measure(step, batch) if step % self.every == 0 else None
        self._last = time.perf_counter()
        return records

    def measure(self, step: int, batch: Any = None) -> list[GroupStats]:
        """Draw R estimates now, record and write their statistics (one record per group)."""
        step = _check_step(step)
        start = time.perf_counter()
        if self._first is None:
            self._first = start
        if self.batch is not None:
            batch = self.batch
        if batch is None:
            raise GradestError("no batch to measure on: give one to step() or measure(), or batch= "
                               "to the monitor")
        grads, labels, path, nodes = self._draw(batch)
        repeats = int(next(iter(grads.values())).shape[0])
        # each parameter's parts once, then summed per group ("all" repeats no work)
        parts = {id(p): _sums(grads[n].reshape(repeats, -1), labels) for n, p in self.named.items()}
        stats = {group: _statistics([parts[id(p)] for p in members.values()])
                 for group, members in self.groups.items()}
        sizes = {group: sum(p.numel() for p in members.values()) for group, members in self.groups.items()}
        for node, node_grads in nodes.items():  # a graph loss: each node's share, over every parameter
            stats[NODE_PREFIX + node] = _statistics([_sums(g.reshape(repeats, -1), None)
                                                     for g in node_grads.values()])
            sizes[NODE_PREFIX + node] = sizes[ALL]
        device = next(iter(grads.values())).device
        if device.type == "cuda":  # kernels run asynchronously: time them to completion
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        records = [GroupStats(int(step), group, sizes[group], repeats, *s, seconds, path)
                   for group, s in stats.items()]
        self.records.extend(records)
        self._write(records)
        self._seconds += time.perf_counter() - start
        self._last = time.perf_counter()
        return records

    def overhead(self) -> Overhead:
        """The monitor's wall time and the wall time from its first to its latest call."""
        total = 0.0 if self._first is None or self._last is None else self._last - self._first
        return Overhead(self._seconds, total)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The monitor's random state — its generator and the stream of its global-RNG seeds — for a
        checkpoint: a training run resumed with :meth:`load_state_dict` measures as the
        uninterrupted run would have."""
        return {"generator": self.generator.get_state(), "fork_seeds": self._fork_seeds.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (the states may come back on any device)."""
        keys = ("generator", "fork_seeds")
        if not isinstance(state, Mapping) or any(not isinstance(state.get(k), torch.Tensor) for k in keys):
            got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise GradestError(f"load_state_dict takes what GradientMonitor.state_dict() returned, tensors "
                               f"under {', '.join(keys)}; got {got}")
        generator, fork_seeds = self.generator.get_state(), self._fork_seeds.get_state()
        try:
            self.generator.set_state(state["generator"].cpu())
            self._fork_seeds.set_state(state["fork_seeds"].cpu())
        except (RuntimeError, TypeError, ValueError) as err:
            self.generator.set_state(generator)  # all or nothing
            self._fork_seeds.set_state(fork_seeds)
            first = (str(err).splitlines() or [""])[0]
            raise GradestError(f"load_state_dict: not a GradientMonitor state ({first}); give what "
                               "state_dict() returned") from None

    def close(self) -> None:
        """Flush and close a TensorBoard writer the monitor opened (JSONL needs nothing)."""
        if self._writer is not None:
            self._writer.flush()
            if self._own_writer:
                self._writer.close()

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # drawing the estimates, with no side effects ------------------------------------------

    def _draw(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str, NodeEstimates]:
        snapshot = Snapshot(self._restorable)
        grads_before = {n: p.grad for n, p in self.named.items()}
        seed = int(torch.randint(_SEED_HIGH, (1,), generator=self._fork_seeds))
        try:
            with global_rngs_forked(seed), torch.enable_grad():
                if self.estimates_fn is not None:
                    given, labels = self._given(self.estimates_fn(batch, self.generator, self.repeats))
                    return given, labels, "estimates", {}
                if self.batched:
                    return (*self._batched(batch), {})
                grads, nodes = self._loop(batch, snapshot)
                return grads, None, "loop", nodes
        finally:
            snapshot.restore()
            for name, p in self.named.items():
                if p.grad is not grads_before[name]:
                    p.grad = grads_before[name]

    def _given(self, out: Mapping[str, torch.Tensor] | PerSampleGradients
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        grads, labels = (out.grads, out.groups) if isinstance(out, PerSampleGradients) else (out, None)
        if not isinstance(grads, Mapping):
            raise GradestError(f"estimates_fn must return {{name: [R, *shape]}} or a PerSampleGradients, got "
                               f"{type(out).__name__}")
        missing = [n for n in self.named if n not in grads]
        if missing:
            raise GradestError(f"estimates_fn returned no estimates for {missing[0]!r}; "
                               f"expected the names {', '.join(self.named)}")
        count = None
        for n, p in self.named.items():
            g = grads[n]
            shape = list(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            if not isinstance(g, torch.Tensor) or not g.is_floating_point() or g.dim() == 0 \
                    or tuple(g.shape[1:]) != tuple(p.shape) or g.shape[0] < 2 \
                    or (count is not None and g.shape[0] != count):
                raise GradestError(f"estimates_fn returned {shape} for {n!r}; give R ≥ 2 floating-point "
                                   f"estimates of its shape, [R, {', '.join(map(str, p.shape))}], the same R "
                                   "for every parameter")
            count = g.shape[0]
        labels = check_groups(labels, count, next(iter(self.named.values())).device)
        return {n: grads[n].detach() for n in self.named}, labels

    def _loop(self, batch: Any, snapshot: Snapshot) -> tuple[dict[str, torch.Tensor], NodeEstimates]:
        from gradest.graph import Graph  # (the graph module is not needed by plain losses)

        params = list(self.named.values())
        rows = []
        nodes: dict[str, dict[str, list[torch.Tensor]]] = {}
        for _ in range(self.repeats):
            loss = self.loss_fn(batch, self.generator)
            if isinstance(loss, Graph):
                # each node's share of this repeat's gradient; their sum is ∇ surrogate
                shares = loss.node_means(self.named)
                for node, grads in shares.items():
                    for n in self.named:
                        nodes.setdefault(node, {}).setdefault(n, []).append(grads[n])
                rows.append(tuple(sum(grads[n] for grads in shares.values()) for n in self.named))
                snapshot.restore()
                continue
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                got = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise GradestError(f"loss_fn(batch, generator) must return a scalar tensor or a "
                                   f"gradest.graph Graph, got {got}")
            rows.append(torch.autograd.grad(loss.reshape(()), params, allow_unused=True,
                                            materialize_grads=True))
            snapshot.restore()  # each repeat sees the training's state (a baseline's value, BatchNorm's)
        if nodes and len(next(iter(next(iter(nodes.values())).values()))) != self.repeats:
            raise GradestError("loss_fn returned a gradest.graph Graph in some repeats only; return one "
                               "every time (or never)")
        stacked = {node: {n: torch.stack(v) for n, v in per.items()} for node, per in nodes.items()}
        return {n: torch.stack([r[i] for r in rows]) for i, n in enumerate(self.named)}, stacked

    def _batched(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str]:
        params = list(self.named.values())
        losses = self.loss_fn(batch, self.generator, repeats=self.repeats)
        from gradest.graph import Graph

        if isinstance(losses, Graph):
            raise GradestError("a loss built with gradest.graph is measured repeat by repeat (its "
                               "per-node records need each repeat's split); drop loss_fn's repeats "
                               "argument or use mode='loop'")
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (self.repeats,):
            shape = list(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise GradestError(f"loss_fn(batch, generator, repeats={self.repeats}) must return the "
                               f"{self.repeats} repeats' losses, shape [{self.repeats}], got {shape}")
        eye = torch.eye(self.repeats, dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                        retain_graph=True, allow_unused=True, materialize_grads=True)
            path = "batched"
        except (RuntimeError, NotImplementedError):  # an operation without a batching rule
            rows = [torch.autograd.grad(losses[r], params, retain_graph=r < self.repeats - 1,
                                        allow_unused=True, materialize_grads=True)
                    for r in range(self.repeats)]
            grads = tuple(torch.stack([row[i] for row in rows]) for i in range(len(params)))
            path = "batched-forward"
        named = self.named.items()
        out = {n: g.reshape(self.repeats, *p.shape) for (n, p), g in zip(named, grads, strict=True)}
        return out, None, path

    # outputs ------------------------------------------------------------------------------

    def _write(self, records: list[GroupStats]) -> None:
        if self.jsonl is not None:
            text = "".join(json.dumps(r.to_json(self.tags), allow_nan=False) + "\n" for r in records)
            try:
                self.jsonl.parent.mkdir(parents=True, exist_ok=True)
                with open(self.jsonl, "a", encoding="utf-8") as handle:  # one write per measurement
                    handle.write(text)
                    handle.flush()
            except OSError as err:
                raise GradestError(f"cannot append to {self.jsonl}: {err.strerror}") from None
        if self._writer is not None:
            for r in records:
                for key in ("variance", "variance_stderr", "snr", "mean_norm"):
                    self._writer.add_scalar(f"{self.prefix}/{r.group}/{key}", getattr(r, key), r.step)
            if records:
                share = self.overhead().share
                self._writer.add_scalar(f"{self.prefix}/monitor_share", share, records[0].step)
            self._writer.flush()


def _tensorboard_writer(target: Any) -> tuple[Any, bool]:
    """(writer, whether the monitor owns it) from a log folder or a writer; (None, False) if skipped."""
    if target is None:
        return None, False
    if not isinstance(target, str | os.PathLike):
        if not callable(getattr(target, "add_scalar", None)) or not callable(getattr(target, "flush", None)):
            raise GradestError(f"tensorboard must be a log folder or a SummaryWriter (with add_scalar and "
                               f"flush), got {type(target).__name__}")
        return target, False
    if Path(target).exists() and not Path(target).is_dir():
        raise GradestError(f"tensorboard={os.fspath(target)!r} is a file; give a log folder")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(MonitorWarning(
            "TensorBoard output skipped: the tensorboard package is not installed "
            "(pip install 'gradest[tensorboard]'); the JSONL and in-memory records are unaffected"),
            stacklevel=3)
        return None, False
    return SummaryWriter(log_dir=str(target)), True


# ── reading and plotting ─────────────────────────────────────────────────────────────────────


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a monitor's JSONL file (a torn last line, from a crash, is left out)."""
    out = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict):
                    raise GradestError(f"{path}: line {number} is not a record (a JSON object); is it a "
                                       "gradest monitor JSONL file?")
                out.append(row)
    except OSError as err:
        raise GradestError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise GradestError(f"{path} is not text (UTF-8); give a gradest monitor JSONL file") from None
    return out


def plot(records: Iterable[GroupStats | Mapping[str, Any]], path: str | os.PathLike | None = None,
         title: str = "Gradient variance while training", series: Sequence[str] = ()):
    """Variance (± 2 standard errors) and SNR against the step, one line per group.

    Args:
        records: :class:`GroupStats` or JSON records (:func:`read_jsonl`).
        path: write the figure there as PNG (atomically).
        series: record fields that tell runs apart, e.g. ``("estimator",)``: one line per
            (their values, group).
    Returns:
        the matplotlib ``Figure``.
    """
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
        raise GradestError(f"plot takes a list of records (monitor.records or read_jsonl(path)), got "
                           f"{type(records).__name__}")
    if isinstance(series, str):
        series = (series,)
    lines: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        row = r.to_json() if isinstance(r, GroupStats) else r
        lacking = [k for k in ("step", "group", "variance", "snr")
                   if not isinstance(row, Mapping) or k not in row]
        if lacking:
            raise GradestError(f"plot: a record lacks {', '.join(lacking)}; give GroupStats or the rows of "
                               "read_jsonl(path)")
        lines.setdefault((" ".join(str(row.get(k)) for k in series), str(row["group"])), []).append(row)
    # one colour per run and one line style per group when runs are told apart; else a colour per group
    runs = list(dict.fromkeys(run for run, _ in lines))
    groups = list(dict.fromkeys(group for _, group in lines))
    colours = [f"C{i % 10}" for i in range(len(runs) if series else len(groups))]
    styles = ["-", "--", ":", "-."]
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_var, ax_snr = fig.subplots(1, 2)
    for (run, group), rows in lines.items():
        rows = sorted(rows, key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        var = [_num(r["variance"]) for r in rows]
        err = [2 * _num(r.get("variance_stderr")) for r in rows]
        style = {"color": colours[runs.index(run)], "ls": styles[groups.index(group) % len(styles)]} \
            if series else {"color": colours[groups.index(group)], "ls": "-"}
        label = f"{run} {group}" if series else group
        ax_var.plot(steps, [v if v > 0 else math.nan for v in var], lw=1.3, label=label, **style)
        low = [max(v - e, v * 1e-3) if v > 0 else math.nan for v, e in zip(var, err, strict=True)]
        high = [v + e if v > 0 else math.nan for v, e in zip(var, err, strict=True)]
        ax_var.fill_between(steps, low, high, color=style["color"], alpha=0.12, lw=0)
        ax_snr.plot(steps, [_num(r["snr"]) for r in rows], lw=1.3, label=label, **style)
    for ax, name in ((ax_var, "variance tr Cov(ĝ) (± 2 s.e.)"), (ax_snr, "SNR ‖ḡ‖ / √variance")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_var.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    if path is not None:
        from gradest.io import write_atomic
        from gradest.report import png_bytes

        write_atomic(path, png_bytes(fig))
    return fig


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
