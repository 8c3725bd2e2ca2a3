r"""Sample health: draws that stopped being samples of p(x; θ), found before they make an estimate.

Every estimate is a function of its draws, and in floating point a family can stop producing
samples of p while every draw stays finite:

* **On the support's edge.** Gamma, Beta and Dirichlet draws with a concentration ≪ 1 fall below
  the dtype's smallest positive normal number or within ε of 1, where torch clamps them. log p and
  its θ-derivative at a clamped draw are not those at the true draw (log(1 − x) is −36 instead of
  −7000), so a score-function estimate from them is confidently wrong (Beta(10⁻⁴, 10⁻⁴), f = x:
  d/dc₀ = +2502 ± 6 where the truth is −2500). For a continuous family a draw on the edge has
  probability 0, so more of them than the dtype's resolution explains (a fraction ``EDGE_RATE``)
  means the family's mass lies beyond the clamp. Measured on Beta: the score's bias is 8 standard
  errors with 1.4 % of the draws clamped, and nil with 10⁻⁵.
* **Collapsed onto a point.** Every draw of an element equal, or spread over fewer than
  ``RESOLUTION`` representable numbers: a continuous family whose scale is below the resolution
  of its location (Normal(1, 10⁻¹⁷): x − μ is 0 or rounding), a discrete one whose other outcomes
  are too rare for N draws (Poisson(10⁻⁹): every draw 0). An estimate built from how f varies
  across the draws then reads 0 ± 0, or a rounding artefact, whatever the truth.

The edge also blinds pathwise gradients: Gamma(10⁻⁶)'s mean comes from draws of order 1 with
probability 10⁻⁶, which 10⁴ draws do not see (d/d rate: −7·10⁻⁸ ± 7·10⁻⁸ where the truth is
−10⁻⁶), and torch's implicit gradient of Beta at two concentrations of 0.003 is 48 standard errors
off. ``Capabilities.health`` says which checks an estimator needs: ``"any"`` (score function, its
baselines and control variates, ARM and DisARM: they read log p at the draws and how f varies
across them), ``"continuous"`` (measure-valued derivatives: a continuous family's perturbed points
collapse with its draws, a discrete family's differences are exact), ``"edge"`` (pathwise: f′(x)
∂x/∂θ is unaffected by a collapse, not by the edge), ``"none"`` (enumeration, relaxations).

A continuous family's draws collapse by chance with probability ≈ (RESOLUTION·ulp/σ)^(N−1), nil
for N ≥ ``MIN_DRAWS``; a discrete family's do with probability p₀^N (p₀ the collapsed value's
probability), which is not small for small N: that collapse is refused where standard errors are
read (``per_sample``, the diagnostic view, from ``MIN_DISCRETE_DRAWS`` draws on: a smaller call is a
block its caller pools), with the number of draws the regime needs, and left alone in training
steps, where an uninformative step is unbiased.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Dirichlet,
    Distribution,
    Gamma,
    Independent,
    OneHotCategorical,
    constraints,
)

from gradest.errors import SampleHealthError

#: a collapsed continuous element spans fewer representable numbers than this
RESOLUTION = 64
#: continuous families are checked for a collapse from this many draws on (chance: nil)
MIN_DRAWS = 8
#: the draws a collapse is looked for in first (the rest only where these show none)
HEAD = 1024
#: discrete families from this many (a smaller call is a block of a larger sample, pooled by its
#: caller: gradest.batches, the discrete lab)
MIN_DISCRETE_DRAWS = 32
#: the fraction of draws on a continuous support's edge that the dtype's resolution explains
EDGE_RATE = 2.0**-16
#: what the ``health`` capability may say
KINDS = ("any", "continuous", "edge", "none")


def _family(dist: Distribution) -> Distribution:
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist


def is_discrete(dist: Distribution) -> bool:
    try:
        return bool(dist.support.is_discrete)
    except NotImplementedError:
        return False


def _fixed(v: object) -> float | None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    return float(v) if isinstance(v, int | float) else None


def edges(dist: Distribution) -> tuple[float | None, float | None]:
    """The fixed finite bounds (0 or 1) of a continuous support, where underflowed draws land."""
    if is_discrete(dist):
        return None, None
    try:
        c = dist.support
    except NotImplementedError:
        return None, None
    while hasattr(c, "base_constraint"):  # independent and similar wrappers
        c = c.base_constraint
    if isinstance(c, constraints._Simplex):
        return 0.0, 1.0
    lo = hi = None
    if isinstance(c, constraints._GreaterThan | constraints._GreaterThanEq | constraints._Interval
                  | constraints._HalfOpenInterval):
        lo = _fixed(c.lower_bound)
    if isinstance(c, constraints._Interval | constraints._HalfOpenInterval):
        hi = _fixed(c.upper_bound)
    # only the bounds where an underflow lands: 0 from below, 1 by rounding up (not a Uniform's low)
    return (lo if lo == 0.0 else None), (hi if hi == 1.0 and lo == 0.0 else None)


def _standard(dist: Distribution, x: torch.Tensor) -> torch.Tensor:
    """The draws on the scale torch clamps them at: a Gamma's (and Chi2's) x · rate (torch draws the
    unit-rate variable, clamps it at the smallest positive number, then divides by the rate)."""
    family = _family(dist)
    return x * family.rate.detach() if isinstance(family, Gamma) else x


def edge_mass(dist: Distribution, dtype: torch.dtype) -> float | None:
    """The probability that one draw lands on the clamp (None for a family without this formula).

    torch draws Gamma, Beta and Dirichlet through unit-rate Gamma variables clamped at the dtype's
    smallest positive number: P(g < tiny) ≈ tiny^α / Γ(α + 1); and a Beta(a, b) draw rounds into
    the last ε below 1 with P(1 − x < ε) ≈ ε^b / (b B(a, b)) (measured: 1.43 % of Beta(0.1, 0.1)'s
    float64 draws, the formula 1.39 %). A regime, not an observation: N draws too few to show an edge
    draw are still too few to see the mass beyond it.
    """
    family = _family(dist)
    finfo = torch.finfo(dtype)
    log_tiny, log_eps = math.log(finfo.tiny), math.log(finfo.eps)
    if isinstance(family, Gamma):
        alphas = [family.concentration.detach().double()]
        pairs = []
    elif isinstance(family, Beta):
        a, b = (t.detach().double() for t in torch.broadcast_tensors(family.concentration1,
                                                                         family.concentration0))
        alphas, pairs = [a, b], [(a, b)]
    elif isinstance(family, Dirichlet):
        c = family.concentration.detach().double()
        rest = c.sum(-1, keepdim=True) - c
        alphas, pairs = [c], [(c, rest)]  # x_i ~ Beta(α_i, α₀ − α_i): its last ε below 1
    else:
        return None
    logs = [alpha * log_tiny - torch.lgamma(alpha + 1) for alpha in alphas]
    # the upper edge of a Beta(a, b) marginal: ε^b / (b B(a, b))
    logs += [b * log_eps - torch.log(b) - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
             for a, b in pairs]
    return math.exp(min(max(float(t.max()) for t in logs), 0.0))


def on_edge(dist: Distribution, x: torch.Tensor) -> str | None:
    """Why the draws ``x`` sit on the support's edge (underflowed), or None."""
    lo, hi = edges(dist)
    if (lo is None and hi is None) or not x.is_floating_point():
        return None
    mass = edge_mass(dist, x.dtype)
    if mass is not None:
        if mass <= EDGE_RATE:
            return None
        family = type(_family(dist)).__name__
        return (
            f"a fraction {mass:.2g} of {family}'s draws ({x.dtype}) lands on the support's edge, where torch "
            "clamps what underflows: those are no longer samples of the distribution, log p at them is not "
            "the density's, and the mass beyond the edge, which decides the gradient, is never seen; "
            f"estimates are reliable while that fraction stays below {EDGE_RATE:.2g} (Gamma concentrations "
            "above about 0.02 in float64 and 0.2 in float32, Beta and Dirichlet ones above about 0.3): "
            "use float64, or keep the parameters out of that regime"
        )
    x = _standard(dist, x.detach())
    finfo = torch.finfo(x.dtype)
    at = x <= finfo.tiny if lo is not None else torch.zeros_like(x, dtype=torch.bool)
    if hi is not None:
        at = at | (x >= 1.0 - finfo.eps)
    count = int(at.sum())
    if count == 0 or count <= EDGE_RATE * x.numel():
        return None
    family = type(_family(dist)).__name__
    where = "0 (the dtype's smallest positive number)" if hi is None else "0 or 1"
    return (
        f"{count} of {x.numel()} draws of {family} ({x.dtype}) sit on the support's edge, {where}, where "
        "torch clamps what underflows: they are no longer samples of the distribution, and "
        "log p at them is not the density's, and the mass beyond the edge, which decides the gradient, "
        "is never seen; "
        "estimates are reliable while the family's mass stays off the edge (Beta and Dirichlet "
        "concentrations above about 0.3, Gamma's above about 0.02 in float64 and 0.2 in float32, rates and "
        "scales well inside the dtype's range): keep the parameters out of that regime"
    )


def _resolution(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The spacing of representable numbers at each element's largest magnitude (one ulp)."""
    top = torch.maximum(lo.abs(), hi.abs())
    return torch.nextafter(top, torch.full_like(top, math.inf)) - top


def collapsed(dist: Distribution, x: torch.Tensor, training: bool) -> str | None:
    """Why the N draws ``x [N, *B, *E]`` of some element collapsed onto a point, or None.

    training: a training step (surrogate, graph): only a continuous family's collapse, which is
    never chance, is reported; the diagnostic view (per_sample) reports a discrete one's too.
    """
    n = x.shape[0]
    if n < 2:
        return None
    discrete = is_discrete(dist)
    if n < (MIN_DISCRETE_DRAWS if discrete else MIN_DRAWS) or (discrete and training):
        return None
    x = x.detach()

    def narrow(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = draws.reshape(draws.shape[0], -1)
        lo, hi = flat.amin(0), flat.amax(0)  # (torch.aminmax along dim 0 is ~10× slower on the CPU)
        spread = hi - lo
        if discrete or not x.is_floating_point():
            return spread == 0, lo, hi
        return spread < RESOLUTION * _resolution(lo, hi), lo, hi

    # the first draws suffice to show a spread (a subset's spread bounds the whole's): the whole
    # sample is read only where they do not
    bad, lo, hi = narrow(x[:HEAD])
    if not bool(bad.any()):
        return None
    bad, lo, hi = narrow(x)
    if not bool(bad.any()):
        return None
    index = int(bad.nonzero()[0, 0])
    element = list(torch.unravel_index(torch.tensor(index), x.shape[1:])) if x.dim() > 1 else []
    where = f" of element {[int(i) for i in element]}" if element else ""
    family = type(_family(dist)).__name__
    if discrete:
        value = float(lo[index])
        return (
            f"all {n} draws{where} of {family} are {value:g}: the estimator sees no other outcome, so its "
            f"estimate reads f's change as 0 and its standard error as 0 whatever the truth; the other "
            f"outcomes are too rare for {n} draws — draw enough samples for several of them "
            "(N ≳ 5 / P(x ≠ the common value)), or use 'mvd' (f(x + 1) − f(x), exact differences) or the "
            "exact gradient (gradest.exact_grad, enumeration)"
        )
    return (
        f"the {n} draws{where} of {family} ({x.dtype}) span fewer than {RESOLUTION} representable "
        f"numbers (from {float(lo[index]):.17g} to {float(hi[index]):.17g}): its spread is below the "
        "dtype's resolution there (a scale below its location's resolution, or draws clamped together), "
        "so what the estimator reads as signal is rounding; "
        "the family is reliable while scale/|location| stays well above the dtype's eps × "
        f"{RESOLUTION} and its parameters off the clamp (use float64, centre the variable, or, for a "
        "location-scale family, 'pathwise', which is unaffected)"
    )


def given_probs(family: Distribution) -> torch.Tensor | None:
    """The probabilities a discrete family was built from (``probs=``), or None (built from logits:
    torch caches the probabilities it derives beside them, so only ``_param`` tells)."""
    holder = vars(family).get("_categorical", family)  # OneHotCategorical keeps them in its Categorical
    probs = vars(holder).get("probs")
    return probs if isinstance(probs, torch.Tensor) and getattr(holder, "_param", probs) is probs else None


def unseen_outcome(dist: Distribution, n: int, per_particle: bool = False,
                   x: torch.Tensor | None = None) -> str | None:
    """Why N draws of a discrete family cannot see one of its outcomes (expected count < 1), or did
    not see one (the draws ``x`` hold none of it, where its expected count is larger), or None. Given
    as ``probs``, the derivative with respect to that probability is of order 1 whatever p
    is (torch normalizes probs), and an estimate from draws that never show the outcome reads it from
    the other outcomes alone (Categorical([1e-12, 0.5, 0.5]): −2.5 where the truth is 3.5). Given as
    logits (Bernoulli, Categorical), the outcome's share of the gradient is p·(f − b), of order p times
    the cost: lost to rounding only where p is below 64 ε; above, the unseen outcome leaves a confident
    estimate of −p·f̄ (logits [3, −2, 3, −2] of 240 elements, a total cost ≈ 480: −1.63 where the truth
    is −0.0034). ``per_particle``: the family carries the particle axis (one draw from each row, a
    graph node built from upstream samples), so an outcome's expected count is Σ_n p_n, not N·p.

    An outcome that the draws happen to miss although N·p ≥ 1 (p = 0.018 at N = 400 is missed with
    probability 7e-4 per element, so often among hundreds of elements) leaves the same confident −p·f̄
    (−5.50 ± 0.012 where the truth is −0.009): its standard error cannot show what was never drawn."""
    family = _family(dist)
    if n < MIN_DISCRETE_DRAWS or not is_discrete(family):
        return None
    probs = given_probs(family)
    from_logits = probs is None
    if from_logits:
        if not isinstance(family, (Bernoulli, Categorical)):  # OneHotCategorical is a Categorical's view
            family = vars(family).get("_categorical", family)
            if not isinstance(family, Categorical):
                return None
        probs = family.probs
    probs = probs.detach()
    if isinstance(family, Bernoulli):
        probs = torch.stack([probs, 1 - probs], -1)
    if per_particle and probs.dim() >= 2 and probs.shape[0] == n:
        counts, largest = probs.sum(0), probs.amax(0)
    else:
        counts, largest = n * probs, probs
    unseen = counts < 1.0
    relevant = largest > (64 * torch.finfo(probs.dtype).eps if from_logits else 0.0)
    if from_logits:  # below 64 ε the outcome's share p·(f − b) is rounding itself
        unseen &= relevant
    if not bool(unseen.any()):
        return _undrawn(family, x, counts, relevant, isinstance(_family(dist), OneHotCategorical)) \
            if x is not None else None
    count = float(counts[unseen].min())
    rarest = float(largest[unseen].max()) if per_particle else count / n
    fix = "" if from_logits else "parameterize by logits (whose derivative there is of order p), or "
    return (
        f"an outcome of {type(family).__name__} has probability {rarest:.3g}, so {n} draws see it "
        f"{count:.2g} times on average: the derivative with respect to that "
        f"{'probability' if not from_logits else 'logit'} is read from the other outcomes alone; draw "
        f"N ≳ {min(5 * n / max(count, 1e-300), 1e300):.3g} samples, or {fix}use the exact gradient "
        "(gradest.exact_grad, enumeration)"
    )


def _undrawn(family: Distribution, x: torch.Tensor, expected: torch.Tensor, relevant: torch.Tensor,
             one_hot: bool) -> str | None:
    """The refusal where an outcome of ``family`` (``expected`` counts [*B, K]; ``relevant``, of the same
    shape, where its share of the gradient is beyond rounding) occurs in none of the draws ``x``
    (one-hot vectors where the distribution is a OneHotCategorical, else values)."""
    if not isinstance(family, (Bernoulli, Categorical, OneHotCategorical)) or expected.dim() == 0:
        return None  # outcomes of an unbounded support (Geometric, Poisson) are not counted here
    k = expected.shape[-1]
    x = x.detach()
    if isinstance(family, Bernoulli):
        ones = x.reshape(x.shape[0], -1).to(expected.dtype).sum(0)
        seen = torch.stack([ones, x.shape[0] - ones], -1)  # (the order of the probs stacked above)
    elif one_hot:  # one-hot draws [N, *B, K]
        seen = x.reshape(x.shape[0], -1, k).to(expected.dtype).sum(0)
    else:  # Categorical indices [N, *B]: one count per (element, outcome) by one scatter
        index = x.reshape(x.shape[0], -1).long()
        cells = index.shape[1]
        flat = (torch.arange(cells, device=index.device) * k + index).reshape(-1)
        seen = torch.zeros(cells * k, dtype=expected.dtype, device=index.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=expected.dtype)).reshape(cells, k)
    expected, relevant = expected.reshape(-1, k), relevant.reshape(-1, k)
    if seen.shape != expected.shape:
        return None  # a layout this check does not know (the regime check above still ran)
    missed = (seen == 0) & relevant
    if not bool(missed.any()):
        return None
    cell, outcome = (int(i) for i in missed.nonzero()[0])
    count = float(expected[cell, outcome])
    where = f" of element {cell}" if expected.shape[0] > 1 else ""
    return (
        f"outcome {outcome}{where} of {type(family).__name__} never occurs in the {x.shape[0]} draws "
        f"although it is expected {count:.3g} times: the estimate reads its share of the gradient from the "
        "other outcomes alone (a confident −p·f̄), and its standard error cannot show it; draw more "
        f"samples (N ≳ {min(math.log(100 * missed.numel()) * x.shape[0] / max(count, 1e-300), 1e300):.3g} "
        "makes a miss rare in every element), or use "
        "'mvd' or the exact gradient (gradest.exact_grad, enumeration)"
    )


#: fewer draws than this carrying a coordinate's estimate (and at least MIN_CARRIED_DRAWS in all): refused
CARRIERS = 2.0
MIN_CARRIED_DRAWS = 32
#: at most this many i.i.d. draws, set apart from the rest, holding more than LONE_SHARE of the
#: estimates' squared spread: refused (a rare outcome drawn that many times)
LONE_DRAWS = 3
LONE_SHARE = 0.75
#: "set apart": each of those draws this many times farther from the median than any other draw
LONE_GAP = 32.0
#: deviations within this many machine epsilons of the estimates' size are rounding, not a draw's
LONE_ULPS = 64.0


def carried(grads: torch.Tensor, name: str, independent: bool = True,
            resolution: torch.Tensor | None = None) -> str | None:
    """Why single-sample estimates ``grads [N, ...]`` of a parameter do not make a sample, or None.

    ``n_eff = (Σ_n abs(ĝ_n))² / Σ_n ĝ_n²`` counts the draws that carry a coordinate's estimate (N for
    equal magnitudes, 1 where a single draw holds it all). Below CARRIERS the mean and its standard error
    are one draw's value over N, so the standard error says nothing of what the other draws missed:
    f's variation lies where the draws rarely fall (exp(−x²/2) under N(0, 10⁶) at N = 240: ∂/∂σ
    −5.9e-12 ± 5.9e-12 where the truth is −1e-6).

    Where the N estimates are i.i.d. (``independent``; a sampler's groups are judged by their own
    spread), the same for their spread: where k ≤ LONE_DRAWS draws hold more than LONE_SHARE of the
    squared spread Σ_n (ĝ_n − ḡ)² and stand apart from the rest (each LONE_GAP times farther from the
    median than any other draw), the standard error is those draws' deviation over N, blind to how often
    such draws come: a rare outcome drawn k times where it is expected many more. Score function,
    Poisson rate 0.03 beside rates of 1000, f = Σ x², N = 240: an outcome expected 7.25 times was drawn
    once, −1.4e8 ± 2.2e7 where the truth is 1.06 — the count's own spread is √7.25, not the √1 that one
    draw shows. The gap is what tells such an atom from a tail: a continuous tail's largest draws hold
    most of the spread now and then (a third of the calls at N = 32 for the score function with f = x²
    under a Normal), but the next draws follow close behind them, and where they are drawn the standard
    error sees them. A deviation within rounding is not a draw's: within LONE_ULPS machine epsilons of
    mean_n abs(ĝ_n), or within the ``resolution [...]`` of a record whose estimates are differences of
    larger terms (:attr:`gradest.PerSampleGradients.resolution`: score-delta with an exact control has
    rows 2 ± 1e-12, rounding that one draw may hold most of)."""
    n = grads.shape[0]
    if n < MIN_CARRIED_DRAWS or not grads.is_floating_point():
        return None
    flat = grads.detach().reshape(n, -1)
    total, square = flat.abs().sum(0), flat.square().sum(0)
    few = (square > 0) & (total * total < CARRIERS * square)
    if not bool(few.any()):
        if not independent:
            return None
        if resolution is not None:
            resolution = resolution.detach().to(flat).broadcast_to(grads.shape[1:]).reshape(-1)
        return _lone(flat, name, resolution, square)
    j = int(few.nonzero()[0, 0])
    n_eff = float(total[j] ** 2 / square[j])
    where = f"[{j}]" if flat.shape[1] > 1 else ""
    return (
        f"the estimate of ∂/∂{name}{where} rests on {n_eff:.2g} of the {n} draws (the rest are 0 or "
        "negligible beside it), so its standard error is that draw's value over N and cannot show what "
        "the draws missed: f varies where they rarely fall (a narrow feature under a wide distribution, "
        "a rare event); draw many more samples, or use the exact gradient (gradest.exact_grad)"
    )


def _lone(flat: torch.Tensor, name: str, resolution: torch.Tensor | None,
          squares: torch.Tensor) -> str | None:
    """:func:`carried`'s check of the spread of i.i.d. estimates ``flat [N, D]`` (see there);
    ``resolution [D]`` or None, ``squares [D]`` = Σ_n ĝ_n²."""
    n, coordinates = flat.shape
    # a screen first, from reductions that allocate nothing: k ≤ LONE_DRAWS draws hold more than
    # LONE_SHARE of the spread only where the largest deviation holds more than LONE_SHARE / LONE_DRAWS
    # of it (halved here: Σ ĝ² − N ḡ² is the spread to (N + 2) ε of Σ ĝ² at worst; where that bound
    # is not below half the spread, the spread is taken again as Σ (ĝ − ḡ)², for those coordinates)
    mean = flat.mean(0)
    largest = torch.maximum(flat.amax(0) - mean, mean - flat.amin(0)).square()  # (aminmax is slower)
    spread = squares - n * mean.square()
    unsure = (spread <= 2 * (n + 2) * torch.finfo(flat.dtype).eps * squares).nonzero().reshape(-1)
    if unsure.numel():
        spread[unsure] = (flat[:, unsure] - mean[unsure]).square().sum(0)
    screened = (largest > (LONE_SHARE / LONE_DRAWS / 2) * spread).nonzero().reshape(-1)
    if screened.numel() == 0:
        return None
    flat = flat[:, screened]
    square = (flat - mean[screened]).square()
    spread = square.sum(0)
    # distances from the median, largest first: the few set apart, then the nearest of the rest
    far, rows = (flat - flat.median(0).values).abs().topk(LONE_DRAWS + 1, dim=0)
    floor = LONE_ULPS * torch.finfo(flat.dtype).eps * flat.abs().mean(0)
    if resolution is not None:  # ([D], the mean's bound: N times it bounds any one row's)
        floor = floor + n * resolution[screened]
    for k in range(1, LONE_DRAWS + 1):
        apart = (far[k - 1] > floor) & (far[k - 1] >= LONE_GAP * far[k])
        held = square.gather(0, rows[:k]).sum(0)
        lone = apart & (held > LONE_SHARE * spread)
        if bool(lone.any()):
            i = int(lone.nonzero()[0, 0])
            share, j = float(held[i] / spread[i]), int(screened[i])
            where = f"[{j}]" if coordinates > 1 else ""
            some = "one" if k == 1 else str(k)
            return (
                f"the standard error of ∂/∂{name}{where} rests on {some} of the {n} draws (set apart from "
                f"the rest, {'it holds' if k == 1 else 'they hold'} {share:.0%} of their squared spread), "
                "so it cannot show how often such draws come: a rare outcome drawn "
                f"{'once' if k == 1 else f'{k} times'} where it may be expected many more; draw "
                f"N ≳ {25 * n / k:.3g} samples (some 25 such draws), or use the exact gradient "
                "(gradest.exact_grad)"
            )
    return None


#: group means within this many machine epsilons of the estimates' size count as one value
FROZEN_ULPS = 64.0


def frozen(grads: torch.Tensor, groups: torch.Tensor) -> bool:
    """Whether, for some coordinate of ``grads [N, ...]``, every one of a sampler's groups
    (randomizations, antithetic pairs) gives the same mean — to FROZEN_ULPS of mean_n abs(ĝ_n) — while
    the estimates inside the groups vary.

    The standard error over the groups is then 0. Over a discrete family, whose draws count the
    uniforms below p, it cannot tell an exact estimate (each randomization of M points puts exactly
    M·p of them below p where M·p is whole; antithetic pairs at p = ½) from one count that every group
    happened to share (DisARM on Bernoulli(0.63), M·p = 15.1 in each of ten randomizations: 1.0159 ± 0
    where the truth is 1). :meth:`gradest.Estimator.per_sample` then gives the record no groups: the
    standard error is the spread of the N estimates themselves over √N, which sees what another count
    would change (0.038 there), and is conservative where the estimate is exact."""
    n = grads.shape[0]
    if n < 2 or not grads.is_floating_point():
        return False
    flat = grads.detach().reshape(n, -1)
    labels = groups.to(flat.device)
    size = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=size)
    present = counts > 0
    if int(present.sum()) < 2:
        return False
    sums = flat.new_zeros(size, flat.shape[1]).index_add_(0, labels, flat)[present]
    means = sums / counts[present, None].to(flat.dtype)
    tol = FROZEN_ULPS * torch.finfo(flat.dtype).eps * flat.abs().mean(0)
    still = (means.amax(0) - means.amin(0)) <= tol
    varies = (flat.amax(0) - flat.amin(0)) > tol
    return bool((still & varies).any())


def check(dist: Distribution, x: torch.Tensor, kind: str, training: bool, what: str = "") -> None:
    """Refuse draws ``x [N, *B, *E]`` of ``dist`` that stopped being samples of it (see module doc).

    kind: the estimator's ``Capabilities.health``; training: a training step, not a diagnostic.
    """
    if kind == "none":
        return
    reason = on_edge(dist, x)
    # a collapse blinds pathwise gradients too where the family has edges: its draws are then the
    # clamp's artefacts (Dirichlet(1e-6, 1e-6): every draw 0/0 → 0.5), not an explicit μ + σε
    bounded = kind == "edge" and edges(dist) != (None, None)
    if reason is None and (kind == "any" or bounded or (kind == "continuous" and not is_discrete(dist))):
        reason = collapsed(dist, x, training)
    if reason is None and kind == "any" and not training:
        # the family carries the particle axis when its batch already covers the draws' leading dims
        per_particle = x.dim() == len(dist.batch_shape) + len(dist.event_shape)
        reason = unseen_outcome(dist, x.shape[0], per_particle, x)
    if reason is not None:
        raise SampleHealthError(f"{what}{reason}")
