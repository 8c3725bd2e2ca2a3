r"""The REBAR toy problem: every discrete estimator on D independent bits, against the closed form.

    L(θ) = E_{b ~ Bernoulli(σ(θ))}[Σ_{i=1}^{D} (b_i − t)²],   ∂L/∂θ_i = σ'(θ_i)[(1 − t)² − t²]

with one logit θ_i per bit, all starting at θ₀ (Tucker et al. 2017, §5.1, with D bits summed into
one cost as in their multi-bit variant). At t = 0.499 the gradient is σ'(θ)·0.002: tiny beside the
noise, so an estimator must be unbiased AND low-variance to get its sign right, and a relaxed
estimator's bias can point the wrong way. Larger D adds the other bits' costs to each bit's
learning signal (a cost of shape [N], the sum), which is where the score function's variance grows
and the antithetic and control-variate estimators earn their keep.

For each target t, each D of the grid and each estimator, ``per_sample`` draws N single-sample
estimates ĝ_n ∈ R^D (coordinates exchangeable by symmetry), and the cell records:

    bias        mean over n and i of ĝ_n,i − ∂L/∂θ_i; its standard error from the means of 20
                independent calls of N/20 samples (a leave-one-out baseline makes one call's
                samples dependent), z = bias / stderr
    variance    the single-sample variance of one coordinate, mean_i Var_n ĝ_n,i (centred per
                call); its standard error from q_n = mean_i (ĝ_n,i − ḡ_i)² · m/(m − 1)
    sign(m)     the probability that the mean of m estimates has the sign of ∂L/∂θ_i (positive for
                t < ½), for each m of the grid: the N estimates in ⌊N/m⌋ groups of m, the fraction
                of coordinates right per group, averaged over the groups (stderr over the groups)

and, for the score function without baseline, the exact single-sample variance
Var ĝ_i = E[F² (b_i − p)²] − (∂L/∂θ_i)², F = Σ_j (b_j − t)², in closed form (:func:`score_variance`).

RELAX's control network is trained first, ``relax_steps`` surrogate calls of 16 samples on the same
problem (its variance step), then measured like the others; ``per_sample`` never trains it.

References: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR", NeurIPS; Grathwohl et
al. (2018), "Backpropagation through the void", ICLR; Yin & Zhou (2019), "ARM"; Dong, Mnih & Tucker
(2020), "DisARM".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch.distributions import Bernoulli

from gradest import report as html
from gradest.diagnostics import mean_stderr
from gradest.errors import GradestError
from gradest.estimators import get_estimator
from gradest.estimators.base import Estimator
from gradest.io import write_atomic, write_json
from gradest.lab.threads import check_threads, intra_op_threads
from gradest.limits import refuse_beyond_memory, refuse_beyond_time
from gradest.rng import make_generator
from gradest.runs import OUTPUTS

#: the unbiased and the relaxed (biased) estimators for Bernoulli nodes
DEFAULT_ESTIMATORS = ("score", "score-loo", "mvd", "arm", "disarm", "rebar", "relax",
                      "gumbel-softmax=0.5", "gumbel-st=0.5", "straight-through")
DEFAULT_TARGETS = (0.499, 0.45)
DEFAULT_BITS = (1, 10, 50, 200)
DEFAULT_SIGN_SAMPLES = (1, 4, 16, 64)
MAX_BITS = 1000
#: enumerate sums over 2^D points
MAX_ENUMERATED_BITS = 12
FILES = OUTPUTS["discrete"]
RELAX_BATCH = 16
#: independent per_sample calls per cell: the bias's standard error comes from their means
BLOCKS = 20
#: |bias| per bit below which a difference is float64 rounding of costs of order D
ROUNDING = 1e-13
#: numbers held per sample and bit while a cell is measured: the N × D estimates twice (the blocks and
#: their deviations) and the estimator's draws, relaxations and per-sample gradient graph
NUMBERS_PER_BIT = 16
#: the fastest RELAX control step measured (16 samples, one bit: about 7 ms on a 2-core machine), halved
#: again and again: a lower bound for the time check
RELAX_STEP_SECONDS = 1e-3


@dataclass(frozen=True)
class DiscreteConfig:
    """What ``gradest discrete`` runs: targets t, bit counts D, estimators, N samples per cell."""

    targets: tuple[float, ...] = DEFAULT_TARGETS
    bits: tuple[int, ...] = DEFAULT_BITS
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    samples: int = 1000
    theta: float = 0.0
    sign_samples: tuple[int, ...] = DEFAULT_SIGN_SAMPLES
    relax_steps: int = 50
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        if not self.targets or not all(isinstance(t, float | int) and math.isfinite(t) for t in self.targets):
            raise GradestError(f"--t takes finite numbers, got {list(self.targets)}")
        if any(t == 0.5 for t in self.targets):
            raise GradestError("--t 0.5 makes the gradient exactly 0 (no sign to get right); give t ≠ 0.5, "
                               "e.g. 0.499 or 0.45")
        if not self.bits or not all(isinstance(d, int) and 1 <= d <= MAX_BITS for d in self.bits):
            raise GradestError(f"--bits takes integers from 1 to {MAX_BITS}, got {list(self.bits)}")
        if not math.isfinite(self.theta) or abs(self.theta) > 20:
            raise GradestError(f"--theta is a logit in [-20, 20] (σ(θ) inside (0, 1)), got {self.theta}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 4 * BLOCKS:
            raise GradestError(f"--samples must be an integer ≥ {4 * BLOCKS} ({BLOCKS} independent blocks "
                               f"of 4 at least), got {self.samples!r}")
        bad = [m for m in self.sign_samples if not 1 <= m <= self.samples // 2]
        if not self.sign_samples or bad:
            raise GradestError(f"--sign-samples takes sample counts from 1 to samples/2 = "
                               f"{self.samples // 2} (two groups at least), got {list(self.sign_samples)}")
        check_threads(self.threads)
        if self.relax_steps < 0:
            raise GradestError(f"--relax-steps must be ≥ 0, got {self.relax_steps}")
        # one cell holds its N × D estimates at once: beyond memory, refused with the N that fits
        refuse_beyond_memory("--samples", self.samples, NUMBERS_PER_BIT * max(self.bits))
        if len(set(self.estimators)) != len(self.estimators) or not self.estimators:
            raise GradestError("give each --estimator once (and at least one)")
        probe = Bernoulli(logits=torch.zeros(2))
        for name in self.estimators:
            reason = get_estimator(name).applicable(probe)
            if reason is not None:
                raise GradestError(f"--estimator {name}: {reason}")
            if name.split("+")[0] == "enumerate" and max(self.bits) > MAX_ENUMERATED_BITS:
                raise GradestError(f"--estimator enumerate sums over 2^D values; use it with --bits up to "
                                   f"{MAX_ENUMERATED_BITS}, or leave it out")
        learned = sum(bool(getattr(get_estimator(name), "learn", False)) for name in self.estimators)
        if learned:  # every (t, D) cell of a learned control trains it afresh
            refuse_beyond_time("--relax-steps", self.relax_steps,
                               RELAX_STEP_SECONDS * learned * len(self.targets) * len(self.bits), unit="step")

    def cells(self) -> list[tuple[float, int, str]]:
        return [(t, d, e) for t in self.targets for d in self.bits for e in self.estimators]


class SignPoint(NamedTuple):
    samples: int
    probability: float
    stderr: float


class DiscreteRow(NamedTuple):
    """One (t, D, estimator) cell; gradients and variances per coordinate (all are alike)."""

    t: float
    bits: int
    estimator: str
    biased: bool
    exact: float
    mean: float
    bias: float
    bias_stderr: float
    bias_z: float
    variance: float
    variance_stderr: float
    variance_exact: float | None
    sign: tuple[SignPoint, ...]
    seconds: float


class DiscreteResult(NamedTuple):
    config: DiscreteConfig
    rows: list[DiscreteRow]
    files: dict[str, Path]


# ── the closed forms ─────────────────────────────────────────────────────────────────────────


def exact_gradient(theta: float, t: float) -> float:
    """∂L/∂θ_i = σ'(θ)[(1 − t)² − t²] = σ(θ)(1 − σ(θ))(1 − 2t)."""
    p = 1.0 / (1.0 + math.exp(-theta))
    return p * (1.0 - p) * ((1.0 - t) ** 2 - t**2)


def score_variance(theta: float, t: float, bits: int) -> float:
    """Var of ĝ_i = F (b_i − p) with F = f_i + R, f_j = (b_j − t)², R = Σ_{j≠i} f_j independent of b_i:
    E[F²(b − p)²] = E[f²(b − p)²] + 2 E[f (b − p)²] E R + E[R²] E[(b − p)²]."""
    p = 1.0 / (1.0 + math.exp(-theta))
    one, zero = (1.0 - t) ** 2, t**2
    mean_f = p * one + (1 - p) * zero
    var_f = p * one**2 + (1 - p) * zero**2 - mean_f**2
    rest_mean = (bits - 1) * mean_f
    rest_sq = (bits - 1) * var_f + rest_mean**2
    w1, w0 = (1 - p) ** 2, p**2  # (b − p)² at b = 1, 0
    second = (p * (one**2 * w1) + (1 - p) * (zero**2 * w0)
              + 2 * rest_mean * (p * one * w1 + (1 - p) * zero * w0)
              + rest_sq * (p * w1 + (1 - p) * w0))
    return second - exact_gradient(theta, t) ** 2


def block_sizes(samples: int) -> list[int]:
    """``samples`` split into :data:`BLOCKS` near-equal independent calls."""
    base, extra = divmod(samples, BLOCKS)
    return [base + (1 if i < extra else 0) for i in range(BLOCKS)]


# ── one cell ─────────────────────────────────────────────────────────────────────────────────


def _cost(t: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(b: torch.Tensor) -> torch.Tensor:
        return ((b - t) ** 2).sum(-1)

    return f


def _estimator(name: str, t: float, bits: int, theta: float, steps: int, seed: int) -> Estimator:
    est = get_estimator(name)
    if getattr(est, "learn", False) and steps:  # RELAX: train the control on this problem first
        logits = torch.full((bits,), theta, dtype=torch.float64)
        gen = make_generator(seed + 104_729)
        for _ in range(steps):
            est.surrogate(_cost(t), Bernoulli, {"logits": logits}, RELAX_BATCH, gen)
    return est


def measure_cell(config: DiscreteConfig, t: float, bits: int, name: str, seed: int) -> DiscreteRow:
    """The N single-sample estimates of one estimator at (t, D), and their statistics."""
    start = time.perf_counter()
    est = _estimator(name, t, bits, config.theta, config.relax_steps, seed)
    logits = torch.full((bits,), config.theta, dtype=torch.float64)
    gen = make_generator(seed)
    n = config.samples
    blocks, devs = [], []
    for size in block_sizes(n):  # independent calls: a leave-one-out baseline couples one call's samples
        out = est.per_sample(_cost(t), Bernoulli, {"logits": logits}, size, gen)
        g_block = out.grads["logits"].reshape(size, bits)
        blocks.append(g_block)
        devs.append((g_block - g_block.mean(0)) * math.sqrt(size / (size - 1)))
    g = torch.cat(blocks)  # [N, D]
    exact = exact_gradient(config.theta, t)
    averaged = g.mean(1)  # a_n
    bias = float(averaged.mean()) - exact
    if abs(bias) <= ROUNDING * bits:  # an exact estimator's rounding (mvd, disarm at D = 1): no bias
        bias = 0.0
    labels = torch.repeat_interleave(torch.arange(len(blocks)), torch.tensor([len(b) for b in blocks]))
    bias_se = float(mean_stderr(averaged, labels))  # the spread of the independent blocks' means
    q = torch.cat(devs).square().mean(1)
    variance, variance_se = float(q.mean()), float(mean_stderr(q))
    sign = []
    positive = exact > 0
    for m in config.sign_samples:
        groups = n // m
        means = g[: groups * m].reshape(groups, m, bits).mean(1)
        right = ((means > 0) == positive).to(torch.float64).mean(1)  # per group
        se = float(mean_stderr(right)) if groups > 1 else math.nan
        sign.append(SignPoint(m, float(right.mean()), se))
    base = name.split("+")[0]
    return DiscreteRow(
        t, bits, name, est.capabilities.biased, exact, float(averaged.mean()), bias, bias_se,
        bias / bias_se if bias_se > 0 else (0.0 if bias == 0 else math.inf), variance, variance_se,
        score_variance(config.theta, t, bits) if base == "score" else None, tuple(sign),
        time.perf_counter() - start)


def run_discrete(config: DiscreteConfig, out: str | Path | None = None,
                 on_cell: Callable[[int, int, str], None] | None = None) -> DiscreteResult:
    """Every cell in order (cell k's generator is seeded seed + k), then the files into ``out``."""
    cells = config.cells()
    rows = []
    with intra_op_threads(config.threads):
        for k, (t, bits, name) in enumerate(cells):
            rows.append(measure_cell(config, t, bits, name, config.seed + k))
            if on_cell is not None:
                on_cell(k + 1, len(cells), f"t={t:g} D={bits} {name}")
    files = write_outputs(config, rows, Path(out)) if out is not None else {}
    return DiscreteResult(config, rows, files)


# ── outputs ──────────────────────────────────────────────────────────────────────────────────


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def to_json(config: DiscreteConfig, rows: Sequence[DiscreteRow]) -> dict:
    records = []
    for r in rows:
        record = {k: _number(v) if isinstance(v, float) else v for k, v in r._asdict().items() if k != "sign"}
        record["sign"] = [{"samples": s.samples, "probability": s.probability, "stderr": _number(s.stderr)}
                          for s in r.sign]
        records.append(record)
    return {"problem": "E_{b ~ Bernoulli(sigmoid(theta))}[sum_i (b_i - t)^2]",
            "config": asdict(config), "rows": records}


def summary_sentences(rows: Sequence[DiscreteRow], config: DiscreteConfig | None = None) -> list[str]:
    """What the numbers say, computed from them (with ``config``, why a noisy estimator's bias is 0)."""
    out = [] if config is None else _exactly_zero(rows, config)
    for t in dict.fromkeys(r.t for r in rows):
        at_t = [r for r in rows if r.t == t]
        largest = max(r.bits for r in at_t)
        cells = [r for r in at_t if r.bits == largest]
        unbiased = [r for r in cells if not r.biased]
        exact = [r.estimator for r in unbiased if r.variance <= (ROUNDING * r.bits) ** 2]
        if exact:
            out.append(f"t = {t:g}, D = {largest}: {', '.join(exact)} exact here (variance at float "
                       "rounding): the cost separates over the bits, and each bit's estimate sees its own "
                       "cost only.")
        rest = [r for r in unbiased if r.estimator not in exact]
        if len(rest) > 1:
            best = min(rest, key=lambda r: r.variance)
            worst = max(rest, key=lambda r: r.variance)
            out.append(f"t = {t:g}, D = {largest}: the lowest single-sample variance among the other "
                       f"unbiased estimators is {best.estimator}'s ({best.variance:.3g} per coordinate), "
                       f"{worst.variance / best.variance:.3g} times below {worst.estimator}'s.")
        wrong = [r for r in cells if r.biased and abs(r.bias_z) > 5 and (r.mean > 0) != (r.exact > 0)]
        for r in wrong:
            out.append(f"t = {t:g}, D = {largest}: {r.estimator} is biased to the wrong sign (mean "
                       f"{r.mean:.3g} against the exact {r.exact:.3g}); more samples make it surer of it.")
        off = [r for r in at_t if not r.biased and abs(r.bias_z) > 5]
        for r in off:
            out.append(f"warning: {r.estimator} at t = {t:g}, D = {r.bits} is {r.bias_z:.1f} standard "
                       "errors off the exact gradient although it is unbiased.")
    return out


def _exactly_zero(rows: Sequence[DiscreteRow], config: DiscreteConfig) -> list[str]:
    """Why an unbiased estimator with a non-zero variance can show bias 0 and z = 0.

    With one bit the score estimate is f(b)(b − p), p = σ(θ): f(1)(1 − p) = (1 − t)²(1 − p) for b = 1 and
    −f(0)p = −t²p for b = 0. The mean of N estimates therefore depends on the draws only through the
    number of ones n₁, [n₁(1 − t)²(1 − p) − (N − n₁)t²p]/N, and equals the exact p(1 − p)[(1 − t)² − t²]
    exactly when n₁[(1 − t)²(1 − p) + t²p] = Np[(1 − p)(1 − t)² + pt²], i.e. when n₁ = Np: a draw with
    Binomial(N, p) probability, not a defect. Any other estimator at bias 0 is flagged as a coincidence.
    """
    out = []
    p = 1.0 / (1.0 + math.exp(-config.theta))
    n = config.samples
    for r in rows:
        if r.biased or r.bias != 0.0 or r.variance <= (ROUNDING * r.bits) ** 2:
            continue
        if r.estimator == "score" and r.bits == 1 and abs(n * p - round(n * p)) < 1e-9:
            k = round(n * p)
            chance = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                              + k * math.log(p) + (n - k) * math.log1p(-p))
            out.append(
                f"score at t = {r.t:g}, D = 1: bias 0 and z = 0 are right, not a defect. With one bit the "
                "estimate is f(b)(b − p), so the mean of N estimates depends on the draws only through the "
                "number of ones n₁: [n₁(1 − t)²(1 − p) − (N − n₁)t²p]/N, which equals the exact "
                "p(1 − p)[(1 − t)² − t²] exactly when n₁ = Np. This draw had n₁ = Np = "
                f"{k} of N = {n} (p = {p:.4g}; a chance of {100 * chance:.2g}%), so its mean is the exact "
                "gradient to rounding; another --seed gives a non-zero bias.")
        else:
            out.append(f"{r.estimator} at t = {r.t:g}, D = {r.bits}: its mean equals the exact gradient to "
                       f"rounding (within {ROUNDING:g} per bit) although its single-sample variance is "
                       f"{r.variance:.3g}: a coincidence of this draw, shown as bias 0 and z = 0; another "
                       "--seed gives a non-zero bias.")
    return out


def report_page(config: DiscreteConfig, rows: Sequence[DiscreteRow], pngs: Sequence[bytes]) -> str:
    """The page: problem, findings, one figure per target t (``pngs``, in the rows' order of t), the cells."""
    headers = ["t", "D", "estimator", "biased", "exact ∂L/∂θᵢ", "bias", "z", "variance",
               "± se", "exact variance", f"P(sign right), m = {config.sign_samples[-1]}"]
    body = [[r.t, r.bits, r.estimator, "yes" if r.biased else "no", r.exact, r.bias, r.bias_z, r.variance,
             r.variance_stderr, r.variance_exact, r.sign[-1].probability] for r in rows]
    return html.page(
        "gradest discrete: the REBAR toy problem",
        html.section(
            "Problem",
            html.math("L(θ) = E_{b~Bernoulli(σ(θ))}[Σᵢ (bᵢ − t)²],   ∂L/∂θᵢ = σ'(θᵢ)[(1 − t)² − t²]",
                      r"L(\theta)=\mathbb{E}_{b\sim\mathrm{Bernoulli}(\sigma(\theta))}"
                      r"\Big[\sum_i (b_i-t)^2\Big],\quad \frac{\partial L}{\partial\theta_i}"
                      r"=\sigma'(\theta_i)\big[(1-t)^2-t^2\big]"),
            html.paragraph(f"θ₀ = {config.theta:g} for every bit, N = {config.samples} single-sample "
                           f"estimates per cell, seed {config.seed}; RELAX's control trained for "
                           f"{config.relax_steps} steps first. Variances are per coordinate."),
        ),
        html.section("Findings", *[html.paragraph(s) for s in summary_sentences(rows, config)]),
        html.section("Bias, variance and the sign against D and the number of samples",
                     *[html.figure(png, f"t = {t:g}: single-sample variance and |bias| (± 2 se) against "
                                        "D; the probability that the mean of m estimates has the right "
                                        "sign, at the largest D. Biased estimators dashed.")
                       for t, png in zip(dict.fromkeys(r.t for r in rows), pngs, strict=True)]),
        html.section("Every cell", html.table(headers, body)),
    )


def write_outputs(config: DiscreteConfig, rows: Sequence[DiscreteRow], out: Path) -> dict[str, Path]:
    """results.json, discrete.png and report.html, each written atomically."""
    from gradest.lab.plots import discrete_figure

    per_target = [html.png_bytes(discrete_figure(rows, t)) for t in dict.fromkeys(r.t for r in rows)]
    png = per_target[0] if len(per_target) == 1 else html.png_bytes(discrete_figure(rows))
    return {
        "results.json": write_json(out / "results.json", to_json(config, rows)),
        "discrete.png": write_atomic(out / "discrete.png", png),
        "report.html": write_atomic(out / "report.html", report_page(config, rows, per_target)),
    }
