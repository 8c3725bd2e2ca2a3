r"""The variance sweep of Mohamed et al. (2020, Fig. 2): x ~ N(μ, σ²), costs c(x; k) over a grid of k.

For every cell (cost, k, estimator) one call draws N single-sample estimates ĝ_n of ∇_{μ,σ} E c(x; k)
(independent batches of calls for an estimator with leave-one-out statistics, :mod:`gradest.batches`)
and records, per parameter, the measured mean and single-sample variance s², the standard error of
the mean s/√N (over the batches or a sampler's groups where samples are dependent), the standard
error of s² itself, √((m₄ − s⁴)/N) with m₄ the fourth central moment, and the exact variance by
numerical integration (:mod:`gradest.lab.variance_exact`).
Both standard errors include float64's resolution, 64ε × the size of the estimate's terms, which
matters only where an estimate is exact up to rounding (a control variate with h = f).

Every cell uses a generator seeded with the sweep's seed (common random numbers across cells, and
the same numbers whatever the order), so a resumed sweep gives exactly the rows a single run gives.
The CSV is rewritten atomically after each cell: an interrupted sweep resumes from its rows.
Cells can run as Dask tasks (:mod:`gradest.parallel`); their rows are still written in grid
order, so a distributed sweep writes the file a serial one writes.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.distributions import Normal

from gradest import batches
from gradest.compare import WARM_UP_SAMPLES
from gradest.costs import named_cost
from gradest.device import resolve_device
from gradest.diagnostics import ROUNDING, effective_variance, param_stats, variance_stderr, z_score
from gradest.errors import GradestError
from gradest.estimators import get_estimator
from gradest.exact import exact_grad
from gradest.io import write_atomic
from gradest.lab import variance_exact as vx
from gradest.lab.threads import check_threads, intra_op_threads
from gradest.parallel import CellMap, serial_map
from gradest.rng import make_generator
from gradest.runs import OUTPUTS

PARAMS = ("loc", "scale")
CSV_NAME = "sweep.csv"
#: every file a sweep writes into its folder
FILES = OUTPUTS["sweep"]
#: the survey's comparison: pathwise, score function with and without a control variate, MVD
#: coupled and uncoupled
DEFAULT_ESTIMATORS = ("pathwise", "score", "score-delta", "mvd", "mvd-uncoupled")
DEFAULT_KS = (0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
DEFAULT_COSTS = ("square", "exp", "cos")


@dataclass(frozen=True)
class SweepConfig:
    costs: tuple[str, ...] = DEFAULT_COSTS
    ks: tuple[float, ...] = DEFAULT_KS
    loc: float = 1.0
    scale: float = 1.0
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    samples: int = 100_000
    seed: int = 0
    #: torch intra-op threads while measuring (see :mod:`gradest.lab.threads`); None: the CPUs this
    #: process may use
    threads: int | None = 1
    #: where the parameters and the generators live: cpu, cuda or cuda:N (not part of a row's key:
    #: a sweep resumed on another device keeps the rows it has, measured on the first)
    device: str = "cpu"

    def __post_init__(self) -> None:
        # a repeated cost, k or estimator is one cell, measured and reported once
        for name in ("costs", "ks", "estimators"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        if not self.costs or not self.ks or not self.estimators:
            raise GradestError("a sweep needs at least one cost, one k and one estimator")
        for cost in self.costs:
            if cost not in vx.COSTS:
                raise GradestError(f"the sweep's costs are {', '.join(vx.COSTS)}; got {cost!r}")
        if not self.scale > 0:
            raise GradestError(f"--param scale must be > 0, got {self.scale}")
        bad_k = [k for k in self.ks if not math.isfinite(k)]
        if bad_k:
            raise GradestError(f"--k takes finite numbers, got {bad_k[0]}")
        if "exp" in self.costs and min(self.ks) < 0:
            # exp(−k x²) then grows like a Gaussian turned upside down: the gradient variances are
            # infinite from k ≤ −1/(4σ²) and the Normal-weighted integrals have no fixed tail
            raise GradestError(
                f"the exp cost exp(−k x²) needs k ≥ 0 (got k = {min(self.ks):g}); give the negative "
                "k values in a separate sweep without --cost exp"
            )
        if not (math.isfinite(self.loc) and math.isfinite(self.scale)):
            raise GradestError(f"--param loc and scale must be finite, got {self.loc}, {self.scale}")
        if self.samples < 2:
            raise GradestError(f"--samples must be ≥ 2 to measure a variance, got {self.samples}")
        for name in self.estimators:
            # unknown names, and sample counts a sampler cannot split (pairs, randomizations), fail
            # here, before any work
            estimator = get_estimator(name)
            try:
                estimator.check_samples(self.samples)
            except GradestError as err:
                raise GradestError(f"{name} with --samples {self.samples}: {err}") from None
        check_threads(self.threads)
        resolve_device(self.device)

    def cells(self) -> list[tuple[str, float, str]]:
        return [(c, float(k), e) for c in self.costs for k in self.ks for e in self.estimators]


@dataclass(frozen=True)
class SweepRow:
    """One (cost, k, param, estimator) measurement; variances are of ONE single-sample estimate."""

    cost: str
    k: float
    param: str
    estimator: str
    loc: float
    scale: float
    samples: int
    seed: int
    mean: float
    exact_grad: float
    z: float
    stderr: float
    variance: float
    variance_stderr: float
    variance_exact: float
    variance_exact_error: float
    seconds_per_sample: float

    def key(self) -> tuple:
        return (self.cost, self.k, self.param, self.estimator, self.loc, self.scale, self.samples,
                self.seed)

    @property
    def variance_ratio(self) -> float | None:
        """Measured ÷ exact single-sample variance; None where the exact one is unknown or 0."""
        if math.isnan(self.variance_exact) or self.variance_exact <= 0:
            return None
        return self.variance / self.variance_exact

    @property
    def variance_z(self) -> float | None:
        """(measured − exact variance) / its standard error; None for an exact control variate (the
        measured value is rounding) or where either is unknown."""
        if self.variance_exact == 0.0:
            return None
        if not (math.isfinite(self.variance_exact) and math.isfinite(self.variance_stderr)) \
                or self.variance_stderr <= 0:
            return None
        # float64, not torch's default dtype: a row's figures must not depend on global state
        variance, stderr, exact = (torch.tensor(v, dtype=torch.float64)
                                   for v in (self.variance, self.variance_stderr, self.variance_exact))
        return float(z_score(variance, stderr, exact))


COLUMNS = tuple(f.name for f in fields(SweepRow))
#: written after COLUMNS for the reader of the CSV (the report shows them); recomputed, never read back
DERIVED = ("variance_ratio", "variance_z")
_TYPES = {f.name: f.type for f in fields(SweepRow)}


def _parse_row(raw: dict[str, str], where: str = CSV_NAME) -> SweepRow:
    cast = {"str": str, "int": int, "float": float}
    try:
        return SweepRow(**{c: cast[_TYPES[c]](raw[c]) for c in COLUMNS})
    except (KeyError, ValueError, TypeError) as err:
        raise GradestError(
            f"{where} is not a complete sweep row ({err}); remove the file or choose another --out"
        ) from None


def read_rows(path: Path) -> list[SweepRow]:
    """Rows of an existing sweep CSV ([] if there is none); a file that is not one is refused."""
    path = Path(path)
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise GradestError(f"--out {path.parent}: {blocked} is a file, not a folder; choose a folder for "
                           "the sweep")
    if not path.exists():
        return []
    fix = "remove it or choose another --out"
    if not path.is_file():
        raise GradestError(f"{path} is not a file; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GradestError(f"{path} is not a sweep CSV (not UTF-8 text); {fix}") from None
    if not text.strip():
        return []  # an empty file holds no rows to resume
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise GradestError(f"{path} is not a gradest sweep CSV (no column {', '.join(missing)}); {fix}")
    # line numbers count the header as line 1
    return [_parse_row(r, f"{path}, line {i}") for i, r in enumerate(reader, start=2)]


def rows_to_csv(rows: Sequence[SweepRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS + DERIVED)
    for r in rows:
        values = [*asdict(r).values(), *(getattr(r, name) for name in DERIVED)]
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def _exact_variance(estimator: str, cost: str, k: float, param: str, loc: float, scale: float):
    if not vx.supports(estimator):
        return math.nan, math.nan
    ev = vx.single_sample_variance(estimator, vx.NormalProblem(cost, k, loc, scale), param)
    return ev.variance, ev.error


def measure_cell(config: SweepConfig, cost: str, k: float, estimator: str) -> list[SweepRow]:
    """Both parameters' rows of one cell (one estimator call of ``config.samples`` samples)."""
    f = named_cost(cost, k)
    device = resolve_device(config.device)
    params = {"loc": torch.tensor(config.loc, dtype=torch.float64, device=device),
              "scale": torch.tensor(config.scale, dtype=torch.float64, device=device)}
    exact = exact_grad(f, Normal, params)
    est = get_estimator(estimator)
    with intra_op_threads(config.threads):
        # an untimed warm-up first, as compare and advise do: a throwaway copy pays the first-call
        # costs (the cost's contract probe, autograd's and the thread pool's start) out of the timing
        copy.deepcopy(est).per_sample(f, Normal, params, min(config.samples, WARM_UP_SAMPLES),
                                      make_generator(config.seed, device))
        # independent batches where the estimator couples its samples (leave-one-out statistics)
        per = batches.per_sample(est, f, Normal, params, config.samples, make_generator(config.seed, device))
    groups = per.groups
    rows = []
    for param in PARAMS:
        g = per.grads[param].double().reshape(-1)
        n = g.numel()
        # float64 resolves the estimates only to ~ε × the size of the terms that make them: where the
        # estimate is exact up to rounding (a control variate with h = f) that resolution, not the
        # tiny sample spread, bounds what the mean and the variance can tell, so both standard
        # errors include it (elsewhere it is ~1e-13 of them)
        size = float(g.abs().max())
        base = estimator.partition("+")[0]  # a sampler changes the draws, not the terms' size
        if vx.supports(base):
            size = max(size, vx.term_size(base, vx.NormalProblem(cost, k, config.loc, config.scale), param))
        resolution = ROUNDING * size
        truth = exact.grads[param].double()
        stats = param_stats(g, truth, groups, None, resolution)
        var, var_se = float(stats.variance), float(variance_stderr(g))
        if est.sampler is not None:
            # Dependent samples (antithetic, QMC): the i.i.d.-equivalent variance N·stderr², with
            # the stderr over independent groups; its own standard error is not estimated. (Batches
            # of a coupling estimator alone keep the single-sample variance: its marginal spread.)
            var, var_se = float(effective_variance(g, groups)), math.nan
        var_se = math.hypot(var_se, resolution**2) if math.isfinite(var_se) else var_se
        v_exact, v_err = _exact_variance(estimator, cost, k, param, config.loc, config.scale)
        rows.append(SweepRow(
            cost=cost, k=k, param=param, estimator=estimator, loc=config.loc, scale=config.scale,
            samples=n, seed=config.seed, mean=float(stats.mean), exact_grad=float(truth),
            z=float(stats.z), stderr=float(stats.stderr), variance=var,
            variance_stderr=var_se, variance_exact=v_exact,
            variance_exact_error=v_err, seconds_per_sample=per.seconds / n,
        ))
    return rows


def measure(
    config: SweepConfig,
    out_dir: Path,
    on_cell: Callable[[int, int, str], None] | None = None,
    cell_map: CellMap = serial_map,
) -> list[SweepRow]:
    """Measure every cell not already in ``out_dir/sweep.csv``; rewrite the CSV after each cell.

    Rows of other configurations already in the file are kept (a sweep can be extended).
    ``on_cell(done, total, label)`` reports progress, counting resumed cells as done.
    ``cell_map`` runs the cells (:mod:`gradest.parallel`: here, or as Dask tasks); whichever
    runs them, the rows are written in grid order with the same numbers, since each cell's
    generator is seeded by the sweep's seed alone.
    """
    path = Path(out_dir) / CSV_NAME
    rows = read_rows(path)
    have = {r.key() for r in rows}
    cells = config.cells()

    def done(cost, k, est):
        return all((cost, k, p, est, config.loc, config.scale, config.samples, config.seed) in have
                   for p in PARAMS)

    todo = [c for c in cells if not done(*c)]
    finished = len(cells) - len(todo)
    if on_cell is not None:
        on_cell(finished, len(cells), "resumed" if finished else "start")
    text = rows_to_csv(rows)
    # ``measure_cell`` looked up here, at call time: a test may replace it
    results = cell_map(measure_cell, [(config, cost, k, est) for cost, k, est in todo])
    for (cost, k, est), new in zip(todo, results, strict=True):
        if any(n.key() in have for n in new):  # half a cell was in the file: its rows replaced
            rows = [r for r in rows if r.key() not in {n.key() for n in new}] + new
            text = rows_to_csv(rows)
        else:  # the usual case: the text grows by this cell's rows, not formatted again
            rows += new
            text += rows_to_csv(new).partition("\n")[2]
        have.update(n.key() for n in new)
        write_atomic(path, text)
        finished += 1
        if on_cell is not None:
            on_cell(finished, len(cells), f"{cost} k={k:g} {est}")
    if not path.is_file():
        write_atomic(path, rows_to_csv(rows))
    return select_rows(rows, config)


def select_rows(rows: Sequence[SweepRow], config: SweepConfig) -> list[SweepRow]:
    """The rows of this configuration, in grid order."""
    index = {r.key(): r for r in rows}
    out = []
    for cost, k, est in config.cells():
        for p in PARAMS:
            key = (cost, k, p, est, config.loc, config.scale, config.samples, config.seed)
            if key in index:
                out.append(index[key])
    return out


def fine_grid(ks: Sequence[float], points: int = 60) -> np.ndarray:
    """A log-spaced k grid spanning ``ks`` (for the exact curves), including the ks themselves."""
    lo, hi = min(ks), max(ks)
    smallest = min((k for k in ks if k > 0), default=None)
    if lo > 0:
        grid = np.geomspace(lo, hi, points)
    elif smallest is not None and hi > smallest:
        # k = 0 (or below) with positive k: linear up to the smallest positive k, then log-spaced
        grid = np.concatenate([np.linspace(lo, smallest, max(points // 4, 2)),
                               np.geomspace(smallest, hi, points)])
    else:
        grid = np.linspace(lo, hi, points)
    return np.unique(np.concatenate([grid, np.asarray(ks, dtype=float)]))


def exact_curves(config: SweepConfig, points: int = 60) -> dict[tuple[str, str, str], tuple]:
    """(cost, param, estimator) -> (k grid, exact single-sample variance) for the plots."""
    ks = fine_grid(config.ks, points)
    curves = {}
    for cost in config.costs:
        for param in PARAMS:
            for est in config.estimators:
                if vx.supports(est):
                    curves[cost, param, est] = (
                        ks, vx.variance_curve(est, cost, ks, param, config.loc, config.scale))
    return curves


class SweepResult(NamedTuple):
    rows: list[SweepRow]
    findings: list
    csv: Path
    figure: Path
    report: Path


def run_sweep(
    config: SweepConfig,
    out_dir: Path,
    on_cell: Callable[[int, int, str], None] | None = None,
    curve_points: int = 60,
    cell_map: CellMap = serial_map,
) -> SweepResult:
    """Run (or resume) the sweep and write ``sweep.csv``, ``sweep.png`` and ``report.html``.

    ``cell_map``: where the cells run (see :func:`measure`); the figure and report are drawn here.
    """
    from gradest import report as rp
    from gradest.lab.findings import sweep_findings
    from gradest.lab.plots import sweep_figure
    from gradest.lab.report import sweep_page

    start = time.perf_counter()
    out_dir = Path(out_dir)
    rows = measure(config, out_dir, on_cell, cell_map)
    curves = exact_curves(config, curve_points)
    png = rp.png_bytes(sweep_figure(rows, curves, config.costs, config.estimators))
    figure = write_atomic(out_dir / "sweep.png", png)
    findings = sweep_findings(rows)
    html = sweep_page(config, rows, png, findings, time.perf_counter() - start)
    report = write_atomic(out_dir / "report.html", html)
    return SweepResult(rows, findings, out_dir / CSV_NAME, figure, report)
