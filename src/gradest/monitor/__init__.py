r"""Gradient-variance monitoring for any PyTorch training loop.

Every ``every`` steps the monitor draws R independent estimates ĝ_1..ĝ_R of the gradient of the
user's stochastic loss, all on one fixed batch at the current parameters, and records per
parameter group (the group's gradients flattened to P numbers)::

    ḡ         = (1/R) Σ_r ĝ_r                                    mean gradient; mean_norm = ‖ḡ‖
    variance  = tr Ĉov(ĝ) = Σ_p Σ_r (ĝ_{r,p} − ḡ_p)² / (R − 1)     unbiased for E‖ĝ − E ĝ‖²
    snr       = ‖ḡ‖ / √variance
    stderr    = √( V̂ / R + 2 T̂ / (R (R − 1)) )                  standard error of variance

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

* ``"vmap"`` — by default (``mode="auto"``) wherever the loss allows it: ONE vectorized pass,
  ``torch.func.vmap(torch.func.grad(loss))`` over the repeats with the parameters swapped in by
  ``functional_call`` (they must belong to modules), gives the R gradients of ``loss_fn(batch,
  generator)``; what does not depend on the noise is computed once, the rest as batched
  operations. Each repeat's draws from the monitor's generator are recorded once and drawn in the
  loop's order, so the numbers are the loop's (:mod:`gradest.monitor.vmapped`). Verified, not
  assumed: the first measurement runs the loop too, on the same draws, and keeps the vectorized
  pass only where both agree (to 10³ machine epsilons of each parameter's largest entry); a loss
  that differs (it keeps state between calls) is measured by the loop from then on, with a
  :class:`MonitorWarning`. A loss the pass cannot run — global-RNG randomness (dropout),
  data-dependent Python control flow (gradest's own surrogates check their costs), in-place updates
  of outside state, a draw with tensor arguments, an operation without a batching rule — goes to
  the next path silently (``path`` says which ran). Cost: a 784-400-20 MLP VAE (batch 128, R = 16,
  float32, one thread) measured at ~0.8× the time of 16 plain forward + backward passes plus the
  statistics (``benchmarks/bench_monitor.py``); the per-repeat weight gradients need the same
  multiply-adds as R backward passes, so the saving is the shared forward and the per-call overhead.
* ``"batched"`` — when ``loss_fn`` takes a ``repeats`` argument and the vectorized pass cannot run,
  or with ``mode="batched"``. ``loss_fn(batch, generator, repeats=R)`` returns ``[R]`` independent
  losses, each distributed like one call's, typically by adding a leading repeat axis to the noise
  (``torch.randn((R, *shape), generator=g)``) or to the batch. One forward pass of the R repeats,
  then ONE batched vector–Jacobian product (``autograd.grad`` with ``is_grads_batched``) gives the R
  gradients. Each of its R vector–Jacobian products runs through the whole ``[R, …]`` graph, so its
  cost grows as R² where the graph carries the repeat axis (7× the loop's floor for the VAE above):
  it pays only for small networks. If an operation has no batching rule, R backward passes through
  the same R losses take over (``"batched-forward"``): the same numbers.
* ``"loop"`` — otherwise, or with ``mode="loop"``: R calls of ``loss_fn(batch, generator)`` and R
  backward passes, the documented fallback. When the ``repeats`` form draws each repeat's noise in
  turn, as R consecutive calls would (``torch.stack([torch.randn(shape, generator=g) for _ in
  range(R)])``: torch's CPU generator fills one ``[R, …]`` tensor differently), the batched and
  loop paths give the same numbers up to float rounding (tested to 10⁻¹² relative).
* ``"estimates"`` — ``estimates_fn(batch, generator, repeats)`` returns the R estimates itself,
  ``{parameter name: [R, *shape]}`` or gradest's ``PerSampleGradients`` (whose single-sample
  estimates come from one backward pass; their ``groups``, for antithetic and quasi-Monte Carlo
  samplers, are honoured: the variance is then the i.i.d.-equivalent one,
  :func:`gradest.diagnostics.effective_variance` summed over coordinates).

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

from gradest.monitor.core import GradientMonitor
from gradest.monitor.groups import parameter_groups
from gradest.monitor.records import ALL, MODES, NODE_PREFIX, GroupStats, MonitorWarning, Overhead
from gradest.monitor.sinks import plot, read_jsonl
from gradest.stats import Statistics, gradient_statistics

__all__ = [
    "ALL",
    "MODES",
    "NODE_PREFIX",
    "GradientMonitor",
    "GroupStats",
    "MonitorWarning",
    "Overhead",
    "Statistics",
    "gradient_statistics",
    "parameter_groups",
    "plot",
    "read_jsonl",
]
