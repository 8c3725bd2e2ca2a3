"""The estimator engine against hand-written batched code, a Python loop, a forward pass and Pyro.

Problems: x ~ N(μ, σ²), f(x) = cos(2x)

* scalar:  μ = σ = 1 (scalar tensors), N = 10⁶ samples;
* batched: loc [100], scale [100], ``Independent(Normal(loc, scale), 1)``, f summed over the last
  axis (f(x) = Σ_d cos(2 x_d)), N = 10⁴ samples.

Every line times its two sides side by side in one run: one untimed warm-up call each, then
REPEATS rounds that alternate the order of the two sides; the best round of each side counts.

1. score per-sample:    ``get_estimator("score").per_sample`` / hand-written batched analytic score
   (ε = randn, x = μ + σε, f(x)·ε/σ and f(x)·(ε² − 1)/σ).                          target ≤ 1.15
2. pathwise per-sample: ``get_estimator("pathwise").per_sample`` / hand-written batched pathwise
   (−2 sin(2x) and −2 sin(2x)·ε). The record holds the values f(x_n) too, so the like-for-like
   hand version computes f(x) as well (target ≤ 1.15); an info line compares against the
   gradients alone. What bounds both: the engine differentiates a black-box f through autograd,
   which keeps every intermediate (cos(2x)'s backward is sin, a negation, a product with the
   incoming gradient and one with 2, where the hand code folds −2 into one product), and it checks
   the values and the gradients for NaN (a sum each). The engine's score reads ε from its own draw,
   as the hand code does (:meth:`gradest.Estimator.draw_standardized`), and writes its last product
   over a tensor it made; both still pay its verification (the contract probe's cache lookup, sample
   health, resolution: about a millisecond of Python per call, and two reductions over the draws
   for a batched family).
3. surrogate vs Pyro:   ``get_estimator("pathwise").surrogate(...).backward()`` against Pyro's
   ``Trace_ELBO(num_particles=N, vectorize_particles=True).differentiable_loss(...).backward()``
   on the same problem, at N = 10², 10⁴, 10⁶ (batched: 10², 10⁴), as seconds per sample;
   target: gradest ≥ 2× faster. An info line divides Pyro's time by the hand-written pathwise
   per-sample code's (in the gradest columns): no implementation of the same arithmetic can beat
   that ratio, so where it is below 2 (large N, where Pyro's per-call overhead no longer
   dominates) the target cannot be met. Pyro construct: the guide has ``pyro.sample("x", q.mask(False))``
   with q = Normal(μ, σ) (reparameterized, its log-density masked out), the model has the same
   site masked (a flat prior) and ``pyro.factor("cost", -f(x))``, so −ELBO = E_q[f(x)] exactly
   and its gradient is the pathwise estimate. A check on 10⁴ samples compares both gradients
   with each other and with the closed form, in standard errors. Skipped, with a line saying so,
   when pyro is not importable (``pip install -r benchmarks/requirements.txt``).
4. engine vs loop (10⁴ samples; one ``randn`` + one ``autograd.grad`` per sample): target ≥ 100×
   faster; engine vs forward evaluation (10⁶ samples: draw, evaluate f, no gradient): per-sample
   pathwise and score each ≤ 4× the forward pass.

Hand-written baselines draw their noise with ``torch.randn(..., generator=g)``; a consistency
check first confirms each one computes the engine's estimator (same numbers on the same seed, or
agreement of the means within Monte Carlo error).

Run: .venv/bin/python benchmarks/bench_engine.py [--repeats 5] [--dtypes float64,float32]
     [--threads T] [--no-pyro] [--pyro-no-validation]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import Independent, Normal

from gradest import get_estimator

try:
    import pyro
    import pyro.distributions as pdist
    from pyro.infer import Trace_ELBO
except ImportError:  # benchmark-only dependency (benchmarks/requirements.txt)
    pyro = None

REPEATS = 5
SEED = 0
LOOP_N = 10_000
PYRO_SIZES = {"scalar": (100, 10_000, 1_000_000), "batched": (100, 10_000)}
CHECK_N = 10_000
CHECK_Z = 5.0  # agreement within this many standard errors


# ── the problems ───────────────────────────────────────────────────────────────────────────────


def f_scalar(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(2 * x)


def f_batched(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(2 * x).sum(-1)


def independent_normal(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    return Independent(Normal(loc, scale), 1)


@dataclass(frozen=True)
class Problem:
    name: str
    shape: tuple[int, ...]
    n: int
    f: Callable[[torch.Tensor], torch.Tensor]
    builder: Callable[..., torch.distributions.Distribution]

    def params(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if not self.shape:
            return {"loc": torch.tensor(1.0, dtype=dtype), "scale": torch.tensor(1.0, dtype=dtype)}
        d = self.shape[-1]
        return {"loc": torch.linspace(-1.0, 1.0, d, dtype=dtype),
                "scale": torch.linspace(0.5, 1.5, d, dtype=dtype)}

    def exact(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """E f and its gradient: E cos(2x) = cos(2μ) exp(−2σ²)."""
        loc, scale = params["loc"], params["scale"]
        damp = torch.exp(-2 * scale**2)
        value = (torch.cos(2 * loc) * damp).sum()
        return value, {"loc": -2 * torch.sin(2 * loc) * damp, "scale": -4 * scale * torch.cos(2 * loc) * damp}


SCALAR = Problem("scalar", (), 1_000_000, f_scalar, Normal)
BATCHED = Problem("batched", (100,), 10_000, f_batched, independent_normal)


# ── hand-written batched baselines ─────────────────────────────────────────────────────────────


def noise(loc: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn((n, *loc.shape), generator=g, dtype=loc.dtype, device=loc.device)


def hand_score(prob: Problem, loc, scale, n, g):
    """Values f(x_n) and the analytic score-function estimates for μ and σ."""
    eps = noise(loc, n, g)
    x = loc + scale * eps
    fx = prob.f(x)
    w = fx.reshape(n, *(1,) * loc.dim())
    return fx, {"loc": w * eps / scale, "scale": w * (eps * eps - 1) / scale}


def hand_pathwise(prob: Problem, loc, scale, n, g):
    """Values f(x_n) and the pathwise estimates f'(x)·∂x/∂θ, with f'(x) = −2 sin(2x) by hand."""
    eps = noise(loc, n, g)
    x = loc + scale * eps
    d = -2 * torch.sin(2 * x)
    return prob.f(x), {"loc": d, "scale": d * eps}


def hand_pathwise_grads_only(prob: Problem, loc, scale, n, g):
    eps = noise(loc, n, g)
    d = -2 * torch.sin(2 * (loc + scale * eps))
    return None, {"loc": d, "scale": d * eps}


def forward_only(prob: Problem, loc, scale, n, g):
    """The Monte Carlo estimate of E f itself: draw, evaluate, no gradient."""
    with torch.no_grad():
        return prob.f(loc + scale * noise(loc, n, g)).mean()


def python_loop(prob: Problem, loc, scale, n, g):
    """Per-sample gradients without batching: one draw and one backward pass per sample."""
    leaves = [loc.clone().requires_grad_(), scale.clone().requires_grad_()]
    out = torch.empty(n, 2, dtype=loc.dtype)
    for i in range(n):
        x = leaves[0] + leaves[1] * torch.randn((1,), generator=g, dtype=loc.dtype)
        g_loc, g_scale = torch.autograd.grad(prob.f(x).sum(), leaves)
        out[i, 0], out[i, 1] = g_loc, g_scale
    return out


# ── Pyro ───────────────────────────────────────────────────────────────────────────────────────


def pyro_program(prob: Problem, leaves: dict[str, torch.Tensor]):
    """Model and guide whose −ELBO is E_q[f(x)], q = Normal(μ, σ): both log-densities masked out."""

    def q(loc, scale):
        d = pdist.Normal(loc, scale)
        return d.to_event(len(prob.shape)) if prob.shape else d

    def model():
        x = pyro.sample("x", q(leaves["loc"].detach(), leaves["scale"].detach()).mask(False))
        pyro.factor("cost", -prob.f(x))

    def guide():
        pyro.sample("x", q(leaves["loc"], leaves["scale"]).mask(False))

    return model, guide


def pyro_elbo(n: int):
    return Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=0)


def leaves_of(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone().requires_grad_() for k, v in params.items()}


def backward_timer(loss_fn: Callable[[], torch.Tensor], leaves: dict[str, torch.Tensor]):
    def run():
        for v in leaves.values():
            v.grad = None
        loss_fn().backward()

    return run


# ── timing and reporting ───────────────────────────────────────────────────────────────────────


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """One untimed warm-up call each, then `repeats` rounds alternating the order; best round."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, math.inf)
    for r in range(repeats):
        for key in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            start = time.perf_counter()
            fns[key]()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


@dataclass
class Row:
    comparison: str
    dtype: str
    n: int
    a_s: float  # the gradest side
    b_s: float  # the baseline side
    ratio: float
    op: str  # "<=", ">=" or "" (information only)
    target: float = math.nan

    def verdict(self) -> str:
        if not self.op:
            return "info"
        ok = self.ratio <= self.target if self.op == "<=" else self.ratio >= self.target
        return "PASS" if ok else "MISS"


def print_table(rows: list[Row]) -> None:
    head = (f"{'comparison':<40} {'dtype':<7} {'N':>9} {'gradest s':>10} {'other s':>10} "
            f"{'gradest ns/smp':>14} {'other ns/smp':>12} {'ratio':>8} {'target':>8}  result")
    print(head)
    print("─" * len(head))
    for r in rows:
        target = f"{'≤' if r.op == '<=' else '≥'} {r.target:g}" if r.op else "—"
        print(f"{r.comparison:<40} {r.dtype:<7} {r.n:>9} {r.a_s:10.5f} {r.b_s:10.5f} "
              f"{1e9 * r.a_s / r.n:14.1f} {1e9 * r.b_s / r.n:12.1f} {r.ratio:8.2f} {target:>8}  "
              f"{r.verdict()}")


def z_scores(a: torch.Tensor, b: torch.Tensor, se: torch.Tensor) -> float:
    return float(((a - b).abs() / se.clamp(min=1e-300)).max())


# ── the checks ─────────────────────────────────────────────────────────────────────────────────


def check_baseline(prob: Problem, estimator: str, hand, dtype: torch.dtype) -> str:
    """Does the hand-written baseline compute the engine's estimator?"""
    params = prob.params(dtype)
    rec = get_estimator(estimator).per_sample(prob.f, prob.builder, params, CHECK_N,
                                              torch.Generator().manual_seed(SEED))
    _, mine = hand(prob, params["loc"], params["scale"], CHECK_N, torch.Generator().manual_seed(SEED))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    same = all(torch.allclose(rec.grads[k], mine[k], rtol=tol, atol=tol) for k in mine)
    if same:
        return "identical on the same seed"
    _, mine = hand(prob, params["loc"], params["scale"], CHECK_N, torch.Generator().manual_seed(SEED + 1))
    z = max(
        z_scores(rec.grads[k].mean(0), mine[k].mean(0),
                 (rec.grads[k].var(0) / CHECK_N + mine[k].var(0) / CHECK_N).sqrt())
        for k in mine
    )
    return f"different noise; means agree within {z:.2f} SE ({'ok' if z <= CHECK_Z else 'DISAGREE'})"


def check_pyro(prob: Problem, dtype: torch.dtype) -> str:
    """Both gradients of E f on CHECK_N samples, against each other and the closed form, in SEs."""
    params = prob.params(dtype)
    _, exact = prob.exact(params)
    est = get_estimator("pathwise")
    rec = est.per_sample(prob.f, prob.builder, params, CHECK_N, torch.Generator().manual_seed(SEED + 7))
    se = {k: (g.var(0) / CHECK_N).sqrt() for k, g in rec.grads.items()}  # SE of one N-sample mean
    ours = leaves_of(params)
    est.surrogate(prob.f, prob.builder, ours, CHECK_N, torch.Generator().manual_seed(SEED)).backward()

    def pyro_grads(seed: int) -> dict[str, torch.Tensor]:
        theirs = leaves_of(params)
        torch.manual_seed(seed)  # Pyro draws from torch's global generator
        model, guide = pyro_program(prob, theirs)
        pyro_elbo(CHECK_N).differentiable_loss(model, guide).backward()
        return theirs

    # the same seed gives the same noise on CPU (one Mersenne Twister): the two must then coincide
    same = pyro_grads(SEED)
    diff = max(float((ours[k].grad - same[k].grad).abs().max()) for k in se)
    theirs = pyro_grads(SEED + 1)  # independent noise: agreement within Monte Carlo error
    z_pair = max(z_scores(ours[k].grad, theirs[k].grad, math.sqrt(2) * se[k]) for k in se)
    z_ours = max(z_scores(ours[k].grad, exact[k], se[k]) for k in se)
    z_theirs = max(z_scores(theirs[k].grad, exact[k], se[k]) for k in se)
    ok = max(z_pair, z_ours, z_theirs) <= CHECK_Z
    detail = ""
    if not prob.shape:
        detail = (f"  [dμ, dσ: gradest {ours['loc'].grad.item():+.4f}, {ours['scale'].grad.item():+.4f}; "
                  f"pyro {theirs['loc'].grad.item():+.4f}, {theirs['scale'].grad.item():+.4f}; "
                  f"exact {exact['loc'].item():+.4f}, {exact['scale'].item():+.4f}; "
                  f"SE {se['loc'].item():.4f}, {se['scale'].item():.4f}]")
    return (f"same seed: max |Δ| = {diff:.1e}; independent seeds, max |z|: gradest−pyro {z_pair:.2f}, "
            f"gradest−exact {z_ours:.2f}, pyro−exact {z_theirs:.2f} (limit {CHECK_Z:g}) "
            f"{'AGREE' if ok else 'DISAGREE'}{detail}")


# ── the benchmark ──────────────────────────────────────────────────────────────────────────────


def per_sample_rows(prob: Problem, dtype: torch.dtype, name: str, repeats: int) -> list[Row]:
    params = prob.params(dtype)
    loc, scale = params["loc"], params["scale"]
    g = torch.Generator().manual_seed(SEED)
    n = prob.n
    dname = str(dtype).removeprefix("torch.")
    rows = []
    if name == "score":
        est = get_estimator("score")
        t = best_times({
            "engine": lambda: est.per_sample(prob.f, prob.builder, params, n, g),
            "hand": lambda: hand_score(prob, loc, scale, n, g),
        }, repeats)
        rows.append(Row(f"score per-sample / hand ({prob.name})", dname, n,
                        t["engine"], t["hand"], t["engine"] / t["hand"], "<=", 1.15))
    else:
        est = get_estimator("pathwise")
        t = best_times({
            "engine": lambda: est.per_sample(prob.f, prob.builder, params, n, g),
            "hand": lambda: hand_pathwise(prob, loc, scale, n, g),
            "grads": lambda: hand_pathwise_grads_only(prob, loc, scale, n, g),
        }, repeats)
        rows.append(Row(f"pathwise per-sample / hand ({prob.name})", dname, n,
                        t["engine"], t["hand"], t["engine"] / t["hand"], "<=", 1.15))
        rows.append(Row(f"  … / hand grads only, no f(x) ({prob.name})", dname, n,
                        t["engine"], t["grads"], t["engine"] / t["grads"], ""))
    return rows


def pyro_rows(prob: Problem, dtype: torch.dtype, repeats: int) -> list[Row]:
    params = prob.params(dtype)
    dname = str(dtype).removeprefix("torch.")
    est = get_estimator("pathwise")
    g = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    rows = []
    for n in PYRO_SIZES[prob.name]:
        ours, theirs = leaves_of(params), leaves_of(params)
        model, guide = pyro_program(prob, theirs)
        elbo = pyro_elbo(n)
        t = best_times({
            "gradest": backward_timer(
                lambda n=n, ours=ours: est.surrogate(prob.f, prob.builder, ours, n, g), ours),
            "pyro": backward_timer(
                lambda elbo=elbo, model=model, guide=guide: elbo.differentiable_loss(model, guide), theirs),
            "hand": lambda n=n: hand_pathwise(prob, params["loc"], params["scale"], n, g),
        }, repeats)
        rows.append(Row(f"Pyro / pathwise surrogate+bwd ({prob.name})", dname, n,
                        t["gradest"], t["pyro"], t["pyro"] / t["gradest"], ">=", 2.0))
        rows.append(Row("  … ceiling: Pyro / hand pathwise", dname, n,
                        t["hand"], t["pyro"], t["pyro"] / t["hand"], ""))
    return rows


def engine_rows(dtype: torch.dtype, repeats: int) -> list[Row]:
    prob = SCALAR
    params = prob.params(dtype)
    loc, scale = params["loc"], params["scale"]
    g = torch.Generator().manual_seed(SEED)
    dname = str(dtype).removeprefix("torch.")
    pathwise, score = get_estimator("pathwise"), get_estimator("score")
    rows = []
    n = LOOP_N
    t = best_times({
        "engine": lambda: pathwise.per_sample(prob.f, prob.builder, params, n, g),
        "loop": lambda: python_loop(prob, loc, scale, n, g),
    }, repeats)
    rows.append(Row("loop / pathwise per-sample", dname, n, t["engine"], t["loop"],
                    t["loop"] / t["engine"], ">=", 100.0))
    n = prob.n
    t = best_times({
        "pathwise": lambda: pathwise.per_sample(prob.f, prob.builder, params, n, g),
        "score": lambda: score.per_sample(prob.f, prob.builder, params, n, g),
        "forward": lambda: forward_only(prob, loc, scale, n, g),
    }, repeats)
    for key in ("pathwise", "score"):
        rows.append(Row(f"{key} per-sample / forward pass", dname, n, t[key], t["forward"],
                        t[key] / t["forward"], "<=", 4.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-pyro", action="store_true", help="skip the Pyro comparison")
    parser.add_argument("--pyro-no-validation", action="store_true",
                        help="time Pyro with pyro.enable_validation(False) (default: Pyro's default, on)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",")]

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"WARNING: 1-minute load average {load:.2f} before starting: other processes compete for "
              f"the {os.cpu_count()} CPUs, the timings may be off")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} "
          f"after one warm-up; f(x) = cos(2x), scalar N = {SCALAR.n:.0e}, "
          f"batched [{BATCHED.shape[0]}] N = {BATCHED.n:.0e}")
    use_pyro = pyro is not None and not args.no_pyro
    if use_pyro and args.pyro_no_validation:
        pyro.enable_validation(False)
    if pyro is None:
        print("Pyro: not importable, SKIPPING the Pyro comparison "
              "(pip install -r benchmarks/requirements.txt)")
    elif args.no_pyro:
        print("Pyro: skipped (--no-pyro)")
    else:
        print(f"Pyro {pyro.__version__}: guide pyro.sample('x', Normal(μ, σ).mask(False)); model "
              f"pyro.sample('x', <same>.mask(False)) + pyro.factor('cost', -f(x)); "
              f"Trace_ELBO(num_particles=N, vectorize_particles=True).differentiable_loss; "
              f"validation {'on' if pyro.infer.util.is_validation_enabled() else 'off'}")

    print("\nchecks (float64, N = 10⁴):")
    for prob in (SCALAR, BATCHED):
        print(f"  hand score ({prob.name}) vs engine: "
              f"{check_baseline(prob, 'score', hand_score, torch.float64)}")
        print(f"  hand pathwise ({prob.name}) vs engine: "
              f"{check_baseline(prob, 'pathwise', hand_pathwise, torch.float64)}")
        if use_pyro:
            print(f"  Pyro vs gradest surrogate gradient ({prob.name}): {check_pyro(prob, torch.float64)}")
    print()

    rows: list[Row] = []
    for dtype in dtypes:
        for prob in (SCALAR, BATCHED):
            rows += per_sample_rows(prob, dtype, "score", args.repeats)
            rows += per_sample_rows(prob, dtype, "pathwise", args.repeats)
        if use_pyro:
            for prob in (SCALAR, BATCHED):
                rows += pyro_rows(prob, dtype, args.repeats)
        rows += engine_rows(dtype, args.repeats)
    print_table(rows)
    print("ratio: gradest/other for ≤ targets (overhead), other/gradest for ≥ targets (speed-up); "
          "ns/smp = seconds per call / N")
    misses = sum(r.verdict() == "MISS" for r in rows)
    print(f"{sum(r.verdict() == 'PASS' for r in rows)} PASS, {misses} MISS")


if __name__ == "__main__":
    main()
