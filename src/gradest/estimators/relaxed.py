r"""Relaxed and straight-through estimators for Bernoulli and one-hot Categorical nodes (biased).

With z = ℓ + noise, b = H(z) an exact draw and x̃ = σ(z/τ) or softmax(z/τ) its Concrete
relaxation (see :mod:`gradest.estimators.concrete`):

    gumbel-softmax=τ    ĝ = ∇θ f(x̃(θ))                       (Maddison et al. 2017; Jang et al. 2017)
    straight-through    ĝ = ∂f/∂x|_{x=b} · ∇θ p(θ)            (Bengio, Léonard & Courville 2013)
    gumbel-st=τ         ĝ = ∂f/∂x|_{x=b} · ∇θ x̃(θ)            (Jang et al. 2017, straight-through Gumbel)

The Gumbel-softmax estimator is the pathwise gradient of the relaxed objective E[f(x̃)], not of
L = E[f(b)]: biased for every τ > 0, with a bias that vanishes as τ → 0 for f smooth on the
hypercube or simplex (x̃ → b), while its variance grows like 1/τ. The straight-through estimators
evaluate f at the hard sample b (forward) and borrow the gradient of p or of x̃ (backward); their
bias does not vanish as τ → 0. All three are biased by design (``capabilities.biased``): per_sample
returns the estimates whose mean is measured against the exact gradient, and ``select`` never
recommends them without saying so. Each sample's value is f(b) at the exact draw, an unbiased
estimate of L (one more evaluation of f for gumbel-softmax).

Requires: a Bernoulli or OneHotCategorical node (or ``Independent`` of one); f differentiable in x
and defined on [0, 1] (Bernoulli) or the simplex (one-hot) — a Categorical's index samples
cannot be relaxed (write the node as OneHotCategorical). Per-element costs and costs that
declare θ work as for every estimator (the direct term is evaluated at the relaxed point).

Temperature: a number, or an :class:`Annealing` schedule τ_t = max(τ_min, τ₀ exp(−r t)) (Jang et
al.) advanced by one step per ``surrogate`` call (``per_sample`` never advances it).

References: Maddison, Mnih & Teh (2017), "The Concrete distribution: a continuous relaxation of
discrete random variables"; Jang, Gu & Poole (2017), "Categorical reparameterization with
Gumbel-softmax"; Bengio, Léonard & Courville (2013), "Estimating or propagating gradients through
stochastic neurons for conditional computation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Categorical

from gradest.errors import GradestError
from gradest.estimators import concrete
from gradest.estimators.base import (
    BoundCost,
    Capabilities,
    Estimator,
    Node,
    Terms,
    carrier,
    total,
    unwrap,
)

_ALTERNATIVES = "'arm', 'disarm' or 'score-loo' (unbiased, any f)"


@dataclass(frozen=True)
class Annealing:
    """τ_t = max(minimum, start · exp(−rate · t)) at step t (Jang et al. 2017 anneal to 0.5)."""

    start: float = 1.0
    minimum: float = 0.5
    rate: float = 1e-4

    def __post_init__(self) -> None:
        concrete.check_temperature(self.start, "the start temperature")
        concrete.check_temperature(self.minimum, "the minimum temperature")
        if not self.rate >= 0.0 or math.isinf(self.rate):
            raise GradestError(f"the annealing rate must be a finite number ≥ 0, got {self.rate!r}")

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.start * math.exp(-self.rate * step))


class _Relaxed(Estimator):
    """Shared by the three: families, refusals, the temperature and its schedule."""

    capabilities = Capabilities(families=concrete.RELAXABLE, differentiates_f=True, biased=True,
                                separable=False, health="none", node="reparameterized")
    draws_through_inverse_cdf = False  # (the sampler's uniforms become the Gumbel/logistic noise)

    def __init__(self, temperature: float | Annealing | None, name: str) -> None:
        self.name = name
        self.schedule = temperature if isinstance(temperature, Annealing) else None
        self._temperature = None if temperature is None or self.schedule is not None \
            else concrete.check_temperature(temperature)
        #: surrogate calls so far (the schedule's t)
        self.steps = 0

    @property
    def temperature(self) -> float | None:
        return self.schedule(self.steps) if self.schedule is not None else self._temperature

    @temperature.setter
    def temperature(self, value: float | Annealing) -> None:
        if self._temperature is None and self.schedule is None:
            raise GradestError(f"{self.name} has no temperature")
        self.schedule = value if isinstance(value, Annealing) else None
        self._temperature = None if self.schedule is not None else concrete.check_temperature(value)

    def family_refusal(self, family) -> str:
        indices = ""
        if isinstance(family, Categorical):
            indices = (" (its samples are indices, which f cannot take relaxed; build the node as "
                       "OneHotCategorical so that f receives one-hot vectors)")
        return (
            f"{self.name} relaxes Bernoulli and one-hot samples, not {type(family).__name__}{indices}; "
            "use 'unordered-set' (Categorical), 'score' or 'score-loo' (any family) instead"
        )

    def surrogate(self, *args, **kwargs) -> torch.Tensor:
        loss = super().surrogate(*args, **kwargs)
        self.steps += 1  # the schedule moves on once per training step, after the step used τ_t
        return loss

    def perturbed(self, node: Node, generator: torch.Generator):
        """(family, ℓ live, z = ℓ + noise ``[N, *S]``, b = H(z) detached)."""
        family = unwrap(node.dist)
        ell = family.logits
        (u,) = concrete.uniforms(self, node, concrete.noise_shape(node), generator)
        z = concrete.perturb(family, ell, u)
        return family, ell, z, concrete.hard(family, z)

    def node_sample(self, node: Node, generator: torch.Generator) -> torch.Tensor:
        """A graph node's draw: the relaxed sample x̃ (gumbel-softmax), or the hard draw b whose backward
        pass is p's or x̃'s (straight-through); one training step of an annealing schedule."""
        family, _, z, b = self.perturbed(node, generator)
        temperature = self.temperature
        if node.learn:
            self.steps += 1  # a training step: the schedule moves on, after this step used τ_t
        if isinstance(self, GumbelSoftmax):
            return concrete.soft(family, z, temperature)
        relaxed = concrete.soft(family, z, temperature) if self.gumbel else family.probs
        return b + (relaxed - relaxed.detach())  # forward: the exact draw b; backward: p's or x̃'s

    def checked(self, cost: BoundCost, x: torch.Tensor, fx: torch.Tensor) -> None:
        if x.requires_grad and not fx.requires_grad and not concrete.constant_in_x(cost, x, fx):
            raise concrete.no_gradient_path(self.name, _ALTERNATIVES)


class GumbelSoftmax(_Relaxed):
    """ĝ_n = ∇θ f(x̃_n(θ)), x̃ = σ(z/τ) or softmax(z/τ); the value f(b_n) at the hard draw."""

    def __init__(self, temperature: float | Annealing = 0.5, name: str = "gumbel-softmax") -> None:
        super().__init__(temperature, name)

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family, _, z, b = self.perturbed(node, generator)
        x = concrete.soft(family, z, self.temperature)
        fx = cost(x)  # pathwise through x̃, and f's direct dependence on θ at x̃
        self.checked(cost, x, fx)
        with torch.no_grad():  # the value: f at the exact draw b, an unbiased estimate of L
            value = total(cost(b, direct=False))
        return Terms(carrier(fx), [], value)

    def __repr__(self) -> str:
        tau = self.schedule if self.schedule is not None else self._temperature
        return f"GumbelSoftmax(temperature={tau!r}, name={self.name!r})"


class StraightThrough(_Relaxed):
    """ĝ_n = ∂f/∂x|_{b_n} · ∇θ p (plain) or · ∇θ x̃_n (Gumbel): forward b, backward p or x̃."""

    def __init__(self, temperature: float | Annealing | None = None, name: str | None = None) -> None:
        super().__init__(temperature, name or ("straight-through" if temperature is None else "gumbel-st"))
        #: backward through the relaxed sample x̃ (Gumbel) rather than through p
        self.gumbel = temperature is not None

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family, _, z, b = self.perturbed(node, generator)
        surrogate = concrete.soft(family, z, self.temperature) if self.gumbel else family.probs
        # forward: b exactly (the difference below is 0 in value); backward: ∂x/∂θ = ∂p/∂θ or ∂x̃/∂θ
        x = b + (surrogate - surrogate.detach())
        fx = cost(x)
        self.checked(cost, x, fx)
        return Terms(carrier(fx), [], total(fx.detach()))

    def __repr__(self) -> str:
        tau = self.schedule if self.schedule is not None else self._temperature
        return f"StraightThrough(temperature={tau!r}, name={self.name!r})"
