"""The contract's typed records: what an estimator declares (Capabilities), what its hook sees
(Node) and returns (Terms), and what per_sample gives back (PerSampleGradients)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.distributions import Distribution

from gradest import health
from gradest.errors import GradestError, SampleHealthError
from gradest.stats import mean_stderr

Cost = Callable[..., torch.Tensor]


Builder = Callable[..., Distribution]


#: what ``Capabilities.node`` may say
NODE_ROLES = ("score", "reparameterized", "callable", "none")


class PerSampleGradients(NamedTuple):
    """Single-sample gradient estimates of one estimator call.

    grads: name -> ``[N, *param.shape]``; ``grads[k].mean(0)`` is the estimate of ∂L/∂θ_k.
    values: ``[N]`` total costs Σ_b f_b(x_n) (their mean estimates L).
    seconds: wall-clock time of the call.
    estimator: the estimator's name.
    groups: ``[N]`` integer labels, or None when the N estimates are i.i.d. Samples with different
        labels are independent (antithetic pairs, quasi-Monte Carlo randomizations); samples that
        share a label are not, so the standard error of the mean comes from the group means.
    resolution: name -> ``[*param.shape]``, what float rounding leaves unresolved of each mean where
        the estimates are differences of much larger terms (control variates: a bound), or None (name
        absent) where rounding is negligible beside the rows' spread.
        :meth:`stderr` adds it in quadrature.
    """

    grads: dict[str, torch.Tensor]
    values: torch.Tensor
    seconds: float
    estimator: str
    groups: torch.Tensor | None = None
    resolution: dict[str, torch.Tensor] | None = None

    @property
    def num_samples(self) -> int:
        """N, the number of single-sample estimates."""
        return int(self.values.shape[0])

    def mean(self) -> dict[str, torch.Tensor]:
        """The estimate of ∂L/∂θ: the mean of the single-sample gradients, per parameter."""
        return {k: g.mean(0) for k, g in self.grads.items()}

    def stderr(self) -> dict[str, torch.Tensor]:
        """Standard error of each mean, over independent groups when the samples are not i.i.d., with
        the :attr:`resolution` added in quadrature where the record has one.

        Raises SampleHealthError where fewer than two draws carry a coordinate's estimate, or (i.i.d.
        estimates) one to three draws set apart from the rest hold its spread
        (:func:`gradest.health.carried`): the standard error is then those draws' values over N and
        cannot show what the draws missed or how often such draws come."""
        resolution = self.resolution or {}
        unknown = [str(k) for k in resolution if k not in self.grads]
        if unknown:
            raise GradestError(f"resolution names {', '.join(map(repr, unknown))}, which the record has no "
                               f"gradients for; give it for {', '.join(map(repr, self.grads))} only")
        for k, r in resolution.items():
            shape = self.grads[k].shape[1:]
            if not _fits(r, shape):
                raise GradestError(f"resolution[{k!r}] must be a float tensor ≥ 0 of the parameter's shape "
                                   f"{list(shape)}, got {r!r}")
        for k, g in self.grads.items():
            reason = health.carried(g, k, independent=self.groups is None, resolution=resolution.get(k))
            if reason is not None:
                raise SampleHealthError(f"{self.estimator}: {reason}")
        out = {k: mean_stderr(g, self.groups) for k, g in self.grads.items()}
        for k, r in resolution.items():
            out[k] = torch.hypot(out[k], r.to(out[k]))
        return out


def _fits(r: object, shape: torch.Size) -> bool:
    """Whether ``r`` is a finite float tensor ≥ 0 that broadcasts to ``shape`` (a resolution)."""
    if not isinstance(r, torch.Tensor) or not r.is_floating_point() or r.is_meta:
        return False
    try:
        fits = torch.broadcast_shapes(r.shape, shape) == shape
    except RuntimeError:
        return False
    return fits and bool((torch.isfinite(r) & (r >= 0)).all())


@dataclass(frozen=True)
class Capabilities:
    """What an estimator needs, as data (read by ``applicable``, ``select`` and the docs).

    needs_rsample: the family must be reparameterizable (``has_rsample``).
    differentiates_f: uses ∂f/∂x (f must be differentiable in x).
    families: the families it has rules for (``Independent`` of them too); None: any family.
    discrete: works for families with a discrete support.
    fixed_support: the support must not move with θ (score-function identities).
    biased: biased by design (continuous relaxations of discrete variables): its mean is not
        ∇θ L, and reports say so beside the measured bias.
    replicates: needs per-sample gradients inside ``surrogate`` too (control variates fit their
        coefficients on them), so the builder must broadcast over the sample axis there as well.
    interior: needs the probabilities of a discrete family given as ``probs`` strictly inside
        (0, 1): at 0 or 1 one outcome is never drawn (and torch clamps log p), so a likelihood-ratio
        estimate of the derivative there is 0 whatever f is.
    separable: weights each element's log-density (or perturbation) by that element's own cost, so
        a per-element cost f_n,b must depend on x_n,b alone (probed on the first call, refused
        otherwise: :mod:`gradest.contract`). False for estimators that only differentiate f.
    health: which unhealthy draws make it silently wrong (:mod:`gradest.health`): ``"any"`` (its
        estimate reads the density at the draws and how f varies across them: draws clamped on the
        support's edge or collapsed onto a point), ``"continuous"`` (only a continuous family's, whose
        perturbed points collapse with the draws: measure-valued derivatives), ``"none"`` (f′(x)
        ∂x/∂θ along explicit paths, enumeration; implicit paths have regimes of their own).
    node: how it runs as a node of a stochastic computation graph (:mod:`gradest.graph`):
        ``"score"`` (a DiCE score term, every order), ``"reparameterized"`` (``node_sample`` returns a
        draw whose autograd path carries the gradient), ``"callable"`` (terminal, with ``then=``: its
        hook runs on the downstream cost, first order), ``"none"`` (no node form: ``node_refusal``
        says why). A registered estimator is a callable node unless it says otherwise.
    """

    needs_rsample: bool = False
    differentiates_f: bool = False
    families: tuple[type[Distribution], ...] | None = None
    discrete: bool = True
    fixed_support: bool = False
    biased: bool = False
    replicates: bool = False
    interior: bool = False
    separable: bool = True
    health: str = "any"
    node: str = "callable"

    def __post_init__(self) -> None:
        if self.health not in health.KINDS:
            raise GradestError(f"Capabilities.health must be one of {', '.join(health.KINDS)}, "
                               f"got {self.health!r}")
        if self.node not in NODE_ROLES:
            raise GradestError(f"Capabilities.node must be one of {', '.join(NODE_ROLES)}, got {self.node!r}")
        for flag in ("needs_rsample", "differentiates_f", "discrete", "fixed_support", "biased", "replicates",
                     "interior", "separable"):
            if not isinstance(getattr(self, flag), bool):
                raise GradestError(f"Capabilities.{flag} must be True or False, got {getattr(self, flag)!r}")
        families = self.families
        if families is not None and (not isinstance(families, tuple) or not all(
                isinstance(c, type) and issubclass(c, Distribution) for c in families)):
            raise GradestError("Capabilities.families must be None or a tuple of torch.distributions "
                               f"classes, got {families!r}")


class Terms(NamedTuple):
    """What an estimator's hook returns (see the module docstring).

    carrier: S = Σ_n s_n, or 0.0 when nothing in it depends on θ.
    explicit: (φ, ĝ_φ) pairs: φ a family tensor (``[N, *S]`` replicated, ``[*S]`` shared), ĝ_φ
        ``[N, *S]`` detached single-sample gradients with respect to it.
    values: ``[N]`` total costs Σ_b f_b(x_n), detached.
    resolution: None, or one entry per pair of ``explicit``: None, or a bound of the rounding in the
        mean of ĝ_φ over the rows, one number per coordinate of the parameter φ, where ĝ_φ is a
        difference of much larger terms (a control variate's ĝ_f − c ĝ_h: where h ≈ f to rounding,
        what is left is s·(f − h)'s rounding, amplified by the score, and no spread of the rows shows
        its correlated part). φ must then be one of the node's parameters
        (:attr:`PerSampleGradients.resolution` carries it to the standard error).
    """

    carrier: torch.Tensor | float
    explicit: list[tuple[torch.Tensor, torch.Tensor]]
    values: torch.Tensor
    resolution: list[torch.Tensor | None] | None = None

    def gradients(self, targets: list[torch.Tensor], retain_graph: bool = False) -> list[torch.Tensor]:
        """Per-sample gradients with respect to replicated ``targets``, in one backward pass."""
        outputs, grads = [], []
        if isinstance(self.carrier, torch.Tensor) and self.carrier.requires_grad:
            outputs.append(self.carrier)
            grads.append(torch.ones_like(self.carrier))
        for phi, g in self.explicit:
            if phi.requires_grad:
                outputs.append(phi)
                grads.append(g.detach().expand_as(phi))
        if not outputs:
            return [torch.zeros_like(t) for t in targets]
        return list(torch.autograd.grad(outputs, targets, grads, retain_graph=retain_graph,
                                        allow_unused=True, materialize_grads=True))

    def scalar(self) -> torch.Tensor | float:
        """S + Σ ⟨φ, Σ_n ĝ_φ,n⟩: its gradient is the sum of the single-sample estimates."""
        out = self.carrier
        for phi, g in self.explicit:
            g = g.detach()
            out = out + ((phi * g.sum(0)).sum() if phi.dim() < g.dim() else (phi * g).sum())
        return out


class Node(NamedTuple):
    """One stochastic node as an estimator's hook sees it.

    dist: batch shape ``[N, *B]`` (``replicated``, per_sample) or ``[*B]`` (surrogate).
    builder, params: to rebuild it (control variates need their own replicas).
    """

    dist: Distribution
    num_samples: int
    replicated: bool
    batch_shape: torch.Size
    event_shape: torch.Size
    builder: Builder
    params: dict[str, torch.Tensor]
    #: the diagnostic view (per_sample), where standard errors are read: sample health refuses a
    #: discrete family's collapsed draws there too (gradest.health)
    diagnostic: bool = False
    #: a training step of a graph built with learn=True: learned controls take their variance step,
    #: annealing schedules advance
    learn: bool = False

    @property
    def sample_shape(self) -> torch.Size:
        """The shape to draw: ``()`` for a replicated node, ``(N,)`` otherwise."""
        return torch.Size(()) if self.replicated else torch.Size((self.num_samples,))

    def like(self) -> torch.Tensor:
        """A parameter tensor: its device and dtype are those of everything the estimator makes."""
        return next(iter(self.params.values()))

    def per_sample(self, t: torch.Tensor) -> torch.Tensor:
        """A family tensor as ``[N, *shape]`` (a view: replicated already, or expanded)."""
        return t if self.replicated else t.expand(self.num_samples, *t.shape)
