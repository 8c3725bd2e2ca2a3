r"""RELAX: REBAR with a learned control variate network (Bernoulli nodes).

With p = σ(ℓ), z = ℓ + log u − log(1 − u), b = H(z), z̃ ~ p(z | b) as in
:mod:`gradest.estimators.rebar`:

    ĝ_ℓ = [f(b) − c_ψ(z̃)] ∇ℓ log p(b) + ∇ℓ c_ψ(z) − ∇ℓ c_ψ(z̃),
    c_ψ(z) = η f(σ(z/λ)) + r_ψ(z),   r_ψ(z) = w₂ᵀ tanh(W₁ tanh(z/2) + b₁) + b₂

unbiased for every ψ = (η, λ, W₁, b₁, w₂, b₂) (the REBAR identity holds for any differentiable c),
and ψ is trained to minimise the estimator's variance: each ``surrogate`` call ends with one Adam
step down E‖ĝ_ℓ‖² on that call's samples, through ∂ĝ_ℓ/∂ψ (the mean does not depend on ψ, so
this is the variance up to a constant; Grathwohl et al. 2018, Algorithm 2). ``per_sample`` uses the
current ψ and never changes it. The variance step differentiates only with respect to ψ
(``torch.autograd.grad``), so the user's parameters and f's own tensors never receive a gradient
from it; the network, its Adam state and the step count live in the estimator object.

r_ψ acts on each cost element's D coordinates (all of them for a cost of shape [N]; each datum's
for a per-datum cost), so one network serves every element and batch size. It is created at the
first call on the parameters' device and dtype with deterministic weights (no random numbers: W₁ a
fixed quasi-random pattern, w₂ = 0, so that c_ψ starts as REBAR's control); a later call with
another D, dtype or device is refused once ψ has learned (use a fresh estimator).

Requires: a Bernoulli node (or ``Independent`` of one); f differentiable in x on [0, 1]^D. Three
evaluations of f per sample, plus the network.

References: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation through the void:
optimizing control variates for black-box gradient estimation", ICLR; Tucker et al. (2017).
"""

from __future__ import annotations

import math

import torch

from gradest.estimators.rebar import Control, Rebar

#: golden ratio: W₁[j, i] = cos(2π frac((i + 1)(j + 1) φ)) is a fixed, symmetry-breaking pattern
_PHI = (1.0 + math.sqrt(5.0)) / 2.0


class NetworkControl(Control):
    """c_ψ(z) = η f(σ(z/λ)) + r_ψ(z), r_ψ a one-hidden-layer tanh network per cost element."""

    def __init__(self, eta: float, temperature: float, like: torch.Tensor, width: int, hidden: int) -> None:
        super().__init__(eta, temperature, like, width)
        kw = {"dtype": like.dtype, "device": like.device}
        i = torch.arange(1, width + 1, dtype=torch.float64)
        j = torch.arange(1, hidden + 1, dtype=torch.float64)
        pattern = torch.cos(2.0 * math.pi * torch.frac(j[:, None] * i[None, :] * _PHI))
        self.w1 = torch.nn.Parameter((pattern * math.sqrt(2.0 / width)).to(**kw))
        self.b1 = torch.nn.Parameter(torch.zeros(hidden, **kw))
        self.w2 = torch.nn.Parameter(torch.zeros(hidden, **kw))
        self.b2 = torch.nn.Parameter(torch.zeros((), **kw))

    def residual(self, z: torch.Tensor, elements: torch.Size) -> torch.Tensor:
        n = z.shape[0]
        features = torch.tanh(0.5 * z).reshape(n, *elements, self.width)
        hidden = torch.tanh(features @ self.w1.T + self.b1)
        return hidden @ self.w2 + self.b2


class Relax(Rebar):
    """REBAR's estimator with the control c_ψ = η f(σ(z/λ)) + r_ψ(z) learned in surrogate calls."""

    def __init__(self, eta: float = 1.0, temperature: float = 0.5, hidden: int = 16, lr: float = 1e-2,
                 name: str = "relax") -> None:
        super().__init__(eta, temperature, learn=True, lr=lr, name=name)
        self.hidden = int(hidden)

    def make_control(self, like: torch.Tensor, width: int) -> Control:
        return NetworkControl(self.eta0, self.temperature0, like, width, self.hidden)
