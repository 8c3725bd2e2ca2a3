"""GradientMonitor: R independent gradient estimates every ``every`` steps, their statistics per
parameter group (and per stochastic node of a graph loss), with no side effect on training
(see :mod:`gradest.monitor`)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gradest.diagnostics import check_groups
from gradest.errors import GradestError
from gradest.estimators.base import PerSampleGradients
from gradest.rng import check_seed, make_generator
from gradest.snapshot import Snapshot, global_rngs_forked
from gradest.stats import gradient_sums, statistics_of

if TYPE_CHECKING:
    pass


from gradest.monitor.checks import (
    _check_prefix,
    _check_step,
    _check_tags,
    _refuse_beyond_memory,
    _takes_repeats,
    check_jsonl,
)
from gradest.monitor.groups import _union, parameter_groups
from gradest.monitor.records import (
    ALL,
    MODES,
    NODE_PREFIX,
    EstimatesFn,
    GroupStats,
    LossFn,
    MonitorWarning,
    NodeEstimates,
    Overhead,
)
from gradest.monitor.sinks import _tensorboard_writer, scalars
from gradest.monitor.vmapped import NotBatchable, Vectorized, agree

_SEED_HIGH = 2**62


#: separates the monitor's global-RNG seeds from its main stream (which must not be consumed by them)
_FORK_SALT = 0x9E3779B97F4A7C15


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
        mode: ``"auto"`` (vectorized over the repeats where the loss allows it and, on the first
            measurement, gives the loop's numbers; else batched when ``loss_fn`` takes ``repeats``;
            else the loop), ``"vmap"``, ``"batched"`` or ``"loop"``.
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
        if mode == "vmap" and loss_fn is None:
            raise GradestError("mode='vmap' vectorizes a loss_fn over the repeats; estimates_fn returns "
                               "them itself: leave mode at 'auto'")
        self.mode = mode
        self._vmap_path = "vmap"
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
        self._vectorized: Vectorized | None = None
        self._verified = False
        if loss_fn is not None and mode in ("auto", "vmap"):
            try:
                self._vectorized = Vectorized(loss_fn, modules, self.named)
            except NotBatchable as err:
                if mode == "vmap":
                    raise GradestError(f"mode='vmap' needs parameters of modules: {err}; give the "
                                       "module(s), or use mode='loop'") from None
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
        parts = {id(p): gradient_sums(grads[n].reshape(repeats, -1), labels) for n, p in self.named.items()}
        stats = {group: statistics_of([parts[id(p)] for p in members.values()])
                 for group, members in self.groups.items()}
        sizes = {group: sum(p.numel() for p in members.values()) for group, members in self.groups.items()}
        for node, node_grads in nodes.items():  # a graph loss: each node's share, over every parameter
            stats[NODE_PREFIX + node] = statistics_of([gradient_sums(g.reshape(repeats, -1), None)
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
                if self._vectorized is not None:
                    vectorized = self._vmap(batch, snapshot)
                    if vectorized is not None:
                        return vectorized, None, self._vmap_path, {}
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

    def _vmap(self, batch: Any, snapshot: Snapshot) -> dict[str, torch.Tensor] | None:
        """The R gradients by one vectorized pass (:mod:`gradest.monitor.vmapped`), or None where the
        loss cannot run so. The first measurement runs the loop too, on the same draws, and keeps the
        vectorized pass only where both give the same numbers (the loop's are then returned)."""
        assert self._vectorized is not None
        start = self.generator.get_state()
        try:
            grads = self._vectorized.gradients(batch, self.generator, self.repeats, snapshot.restore)
        except NotBatchable as err:
            snapshot.restore()
            self._vectorized = None
            if self.mode == "vmap":
                raise GradestError(f"mode='vmap': the loss cannot run vectorized over the repeats ({err}); "
                                   "use mode='auto' or mode='loop'") from None
            return None
        snapshot.restore()
        self._vmap_path = "vmap"
        if self._verified:
            return grads
        end = self.generator.get_state()
        self.generator.set_state(start)
        loop, nodes = self._loop(batch, snapshot)
        if nodes or not torch.equal(self.generator.get_state(), end) or not agree(grads, loop):
            self._vectorized = None
            if self.mode == "vmap":
                raise GradestError("mode='vmap': the vectorized gradients differ from the loop's on the "
                                   "same draws (the loss couples its repeats or keeps state between "
                                   "calls); use mode='loop'")
            warnings.warn("the loss's vectorized gradients differ from the loop's on the same draws; the "
                          "monitor measures repeat by repeat", MonitorWarning, stacklevel=4)
            self._vmap_path = "loop"
            return loop
        self._verified = True
        return grads

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
        if self._writer is not None and records:
            for tag, value in scalars(records, self.prefix, self.overhead().share).items():
                self._writer.add_scalar(tag, value, records[0].step)
            self._writer.flush()
