r"""The shared interface of every gradient estimator of L(θ) = E_{x~p(x;θ)}[f(x)].

An estimator is a value with two views that agree exactly on the same random numbers:

* ``per_sample(f, dist_builder, params, num_samples, generator)`` returns, for each parameter,
  the ``num_samples`` single-sample estimates ĝ_n of ∇θ L as a tensor ``[num_samples, *param.shape]``
  (their mean is the estimate; their spread is the estimator's variance);
* ``surrogate(...)`` returns a scalar whose value is the Monte Carlo estimate of L and whose
  autograd gradient is the mean of the ĝ_n; use it with any torch optimizer.

Both views come from one hook, ``_terms``, which returns a vector s(θ) of ``num_samples`` terms
where sample n's term depends on θ only through a private copy θ_n of the parameters, and
∂s_n/∂θ_n = ĝ_n. Replicating θ along a leading sample axis (``expand``, no copy) turns one
backward pass of Σ_n s_n into all N single-sample gradients at once — no loop over samples —
and the surrogate is the mean of the same terms with the live parameters.

Arguments shared by every estimator:
    f: batched cost. Takes samples ``[N, *sample_shape]`` and returns ``[N]``.
    dist_builder: callable ``dist_builder(**params) -> torch.distributions.Distribution``. It must
        broadcast over a leading sample axis of the parameters, as every torch family does.
    params: mapping name -> tensor of any shape.
    num_samples: N ≥ 1 (estimators that need more say so).
    generator: the ``torch.Generator`` all randomness comes from.

An estimator that computes its ĝ_n explicitly (measure-valued derivatives, control variates)
returns s_n = f(x_n) + Σ_k ⟨φ_k,n − φ_k,n.detach(), ĝ_k,n⟩, with φ the family's own parameters
(``loc``, ``scale``, …) or the replicas themselves: autograd's chain rule then carries ĝ to the
builder's parameterization (log-scale, logits, …).

Every estimator has a ``sampler`` attribute (see :mod:`gradest.estimators.sampling`): ``None``
draws with the family's own ``rsample``/``sample``; antithetic or quasi-Monte Carlo samplers draw
through the inverse CDF and label samples with independent ``groups`` (in the per-sample record)
so that the standard error of the mean stays correct.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch.distributions import Distribution, Independent, TransformedDistribution, constraints

from gradest.errors import GradestError
from gradest.estimators.sampling import (
    Sampler,
    iid_uniforms,
    inverse_cdf,
    open_unit,
    sample_shape_numel,
)
from gradest.rng import draw

Cost = Callable[[torch.Tensor], torch.Tensor]
Builder = Callable[..., Distribution]


class PerSampleGradients(NamedTuple):
    """Single-sample gradient estimates of one estimator call.

    grads: name -> ``[N, *param.shape]``; ``grads[k].mean(0)`` is the estimate of ∂L/∂θ_k.
    values: ``[N]`` costs f(x_n) (their mean estimates L).
    seconds: wall-clock time of the call.
    estimator: the estimator's name.
    groups: ``[N]`` integer labels, or None when the N estimates are i.i.d. Samples with different
        labels are independent (antithetic pairs, quasi-Monte Carlo randomizations); samples that
        share a label are not, so the standard error of the mean comes from the group means.
    """

    grads: dict[str, torch.Tensor]
    values: torch.Tensor
    seconds: float
    estimator: str
    groups: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        return int(self.values.shape[0])

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: g.mean(0) for k, g in self.grads.items()}

    def stderr(self) -> dict[str, torch.Tensor]:
        """Standard error of each mean, over independent groups when the samples are not i.i.d."""
        from gradest.diagnostics import mean_stderr  # diagnostics imports this module

        return {k: mean_stderr(g, self.groups) for k, g in self.grads.items()}


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
        if not value.is_floating_point():
            raise GradestError(
                f"parameter {name!r} must be a floating-point tensor to be differentiated, "
                f"got dtype {value.dtype}; use torch.tensor(..., dtype=torch.float64)"
            )
        if not torch.isfinite(value).all():
            raise GradestError(f"parameter {name!r} contains NaN or inf: {value.tolist()}")
        out[name] = value
    return out


def build(dist_builder: Builder, params: Mapping[str, torch.Tensor]) -> Distribution:
    """Call the builder, turning torch's constraint errors into a message naming the parameter."""
    try:
        dist = dist_builder(**params)
    except (ValueError, TypeError) as err:
        first = str(err).splitlines()[0]
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


def evaluate(f: Cost, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """f(x) checked to be one finite value per sample."""
    fx = f(x)
    if not isinstance(fx, torch.Tensor):
        raise GradestError(f"f must return a torch.Tensor, got {type(fx).__name__}")
    if fx.shape != (num_samples,):
        raise GradestError(
            f"f must return one value per sample, shape [{num_samples}], got {list(fx.shape)}; "
            "reduce over the event dimensions inside f (e.g. .sum(-1))"
        )
    if not torch.isfinite(fx).all():
        raise GradestError("f returned NaN or inf on some samples; check f's domain")
    return fx


def support_moves_with_parameters(dist: Distribution) -> bool:
    """Whether the support of a continuous ``dist`` depends on its parameters (Uniform's [low, high]).

    Then ∇θ ∫_{a(θ)}^{b(θ)} f p dx has boundary terms that E[f ∇θ log p] lacks, and score-function
    or measure-valued estimates are biased. Independent and transformed distributions are judged
    by their base distribution; discrete supports (Categorical's 0..K−1) do not move with θ.
    """
    while isinstance(dist, Independent | TransformedDistribution):
        dist = dist.base_dist
    declared = getattr(type(dist), "support", None)
    return isinstance(declared, constraints.dependent_property) and not dist.support.is_discrete


def joint_log_prob(dist: Distribution, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log p(x_n; θ_n) summed over batch dimensions: ``[N]`` (independent coordinates multiply)."""
    return dist.log_prob(x).reshape(num_samples, -1).sum(1)


class Estimator:
    """Template for estimators: subclasses implement ``_terms`` (see the module docstring)."""

    name: str = "estimator"
    #: Smallest number of samples the estimator accepts.
    min_samples: int = 1
    #: Where the randomness of a sample comes from: None (the family's own sampler) or a Sampler.
    sampler: Sampler | None = None

    def _draw(
        self, dist: Distribution, num_samples: int, generator: torch.Generator, reparameterized: bool
    ) -> torch.Tensor:
        """x ~ p(x; θ) ``[N, ...]``: by rsample/sample, or through the inverse CDF of the sampler's u."""
        if self.sampler is None:
            return draw(generator, dist.rsample if reparameterized else dist.sample)
        u = self.sampler.uniforms(num_samples, sample_shape_numel(dist), generator)
        x = inverse_cdf(dist, u, self.sampler)
        # detach for sample(): the score function must see no path from θ through x
        return x if reparameterized else x.detach()

    def _uniforms(
        self, num_samples: int, dim: int, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        """``[N, dim]`` uniforms in (0, 1) of ``dtype`` from the sampler (i.i.d. without one)."""
        if self.sampler is None:
            u = iid_uniforms(num_samples, dim, generator)
        else:
            u = self.sampler.uniforms(num_samples, dim, generator)
        return open_unit(u, dtype)

    def _check_samples(self, num_samples: int) -> int:
        minimum = max(self.min_samples, getattr(self.sampler, "min_samples", 1))
        num_samples = check_num_samples(num_samples, minimum)
        if self.sampler is not None:
            self.sampler.check(num_samples)
        return num_samples

    def _groups(self, num_samples: int) -> torch.Tensor | None:
        return None if self.sampler is None else self.sampler.groups(num_samples)

    def _terms(
        self, f: Cost, dist: Distribution, num_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (terms s [N] with ∂s_n/∂θ_n = ĝ_n, costs f(x) [N] detached)."""
        raise NotImplementedError

    def _run(self, f, dist_builder, replicas, num_samples, generator):
        return self._terms(f, build(dist_builder, replicas), num_samples, generator)

    def per_sample(
        self,
        f: Cost,
        dist_builder: Builder,
        params: Mapping[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator,
    ) -> PerSampleGradients:
        """Single-sample estimates ``[num_samples, *param.shape]`` for each parameter (batched)."""
        start = time.perf_counter()
        params = check_params(params)
        num_samples = self._check_samples(num_samples)
        # Detach: the per-sample view is a diagnostic and must not touch the caller's graph.
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        replicas = {k: v.expand(num_samples, *v.shape) for k, v in leaves.items()}
        with torch.enable_grad():
            terms, values = self._run(f, dist_builder, replicas, num_samples, generator)
            grads = torch.autograd.grad(
                terms.sum(), list(replicas.values()), allow_unused=True, materialize_grads=True
            )
        return PerSampleGradients(
            grads=dict(zip(replicas, grads, strict=True)),
            values=values.detach(),
            seconds=time.perf_counter() - start,
            estimator=self.name,
            groups=self._groups(num_samples),
        )

    def surrogate(
        self,
        f: Cost,
        dist_builder: Builder,
        params: Mapping[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Scalar: value = MC estimate of L, gradient = mean of the single-sample estimates."""
        params = check_params(params)
        num_samples = self._check_samples(num_samples)
        replicas = {k: v.expand(num_samples, *v.shape) for k, v in params.items()}
        terms, _ = self._run(f, dist_builder, replicas, num_samples, generator)
        return terms.mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
