r"""REBAR: the score function with the Concrete relaxation as its control variate (Bernoulli nodes).

With p = σ(ℓ), z = ℓ + log u − log(1 − u), b = H(z) = 1[z > 0] (an exact draw of Bernoulli(p)), and
z̃ ~ p(z | b) drawn from the same b with fresh noise v (u' = 1 − p + v p if b = 1, u' = v (1 − p) if
b = 0; z̃ = ℓ + log u' − log(1 − u')):

    ĝ_ℓ = [f(b) − c(z̃)] ∇ℓ log p(b) + ∇ℓ c(z) − ∇ℓ c(z̃),   c(z) = η f(σ(z/λ))

where ∇ℓ c(z) differentiates through z = z(ℓ, u), and ∇ℓ c(z̃) through z̃ = z̃(ℓ, b, v) with b held
fixed (the conditional reparameterization). Unbiased for any η, λ and any differentiable c:
E[c(z̃) ∇ log p(b)] + E[∇c(z̃)] = ∇E[c(z)] = E[∇c(z)], so the control only removes variance
(Tucker et al. 2017, eq. 5). ∇ℓ log p(b) = b − p. Each sample costs three evaluations of f:
at b (the value, and the direct term of a cost that declares θ) and at the relaxed points σ(z/λ),
σ(z̃/λ), where f must be differentiable in x. The control is evaluated with θ frozen and its
gradients taken with respect to a private copy of ℓ, so they reach the user's parameters only
through the explicit (ℓ, ĝ_ℓ) pair: f's own tensors (a decoder) get ∇ E f from f(b) alone.

η = 1 and λ = 0.5 by default. With ``learn=True`` each ``surrogate`` call ends with one Adam step
on (η, log λ) that lowers the estimator's single-sample second moment E‖ĝ_ℓ‖² (= variance + a
constant, since the mean does not depend on them), computed on that call's samples by
differentiating ĝ_ℓ itself (Tucker et al. §3.3). ``per_sample`` never changes them. The state
(tensors, optimizer) lives in the estimator object.

Requires: a Bernoulli node (or ``Independent`` of one); f differentiable in x on [0, 1]^D.
Per-element costs work: c is evaluated per element, and each coordinate uses its own element's
cost and control.

References: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR: low-variance, unbiased
gradient estimates for discrete latent variable models", NeurIPS; Maddison et al. (2017).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators import concrete
from gradest.estimators.base import (
    BoundCost,
    Capabilities,
    Estimator,
    Node,
    Terms,
    broadcast_signal,
    carrier,
    total,
    unwrap,
)

_ALTERNATIVES = "'arm', 'disarm' or 'score-loo' (any f)"


def conditional_logit(b: torch.Tensor, v: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """log u' − log(1 − u') for u' ~ Uniform(0, 1) given H(ℓ + logit u') = b, from v ~ U(0, 1).

    Each side in log space from products (no 1 − (1 − ε) cancellation near p = 0 or 1).
    """
    log_p, log_q = F.logsigmoid(ell), F.logsigmoid(-ell)
    # b = 1: u' = 1 − p (1 − v);  b = 0: u' = v (1 − p)
    one = (-(log_p.exp() * (1.0 - v))).log1p() - (log_p + (-v).log1p())
    zero = (v.log() + log_q) - (-(log_q.exp() * v)).log1p()
    return torch.where(b > 0.5, one, zero)


class Control(torch.nn.Module):
    """c(z) = η f(σ(z/λ)) (+ r_ψ(z), see :mod:`gradest.estimators.relax`), one value per cost element."""

    def __init__(self, eta: float, temperature: float, like: torch.Tensor, width: int) -> None:
        super().__init__()
        kw = {"dtype": like.dtype, "device": like.device}
        self.eta = torch.nn.Parameter(torch.tensor(float(eta), **kw))
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature), **kw))
        #: coordinates per cost element (the network's input width)
        self.width = width

    def residual(self, z: torch.Tensor, elements: torch.Size) -> torch.Tensor | None:
        """r_ψ(z) ``[N, *C]``; None for REBAR's control."""
        return None

    def matches(self, like: torch.Tensor, width: int) -> bool:
        return self.eta.dtype == like.dtype and self.eta.device == like.device and self.width == width


class Rebar(Estimator):
    """ĝ_ℓ = [f(b) − c(z̃)](b − p) + ∇ℓ c(z) − ∇ℓ c(z̃), c(z) = η f(σ(z/λ))."""

    capabilities = Capabilities(families=(Bernoulli,), differentiates_f=True, interior=True)
    draws_through_inverse_cdf = False  # (the sampler's uniforms are u and v themselves)

    def __init__(self, eta: float = 1.0, temperature: float = 0.5, learn: bool = False, lr: float = 1e-2,
                 name: str = "rebar") -> None:
        self.name = name
        self.eta0 = float(eta)
        self.temperature0 = concrete.check_temperature(temperature)
        self.learn = learn
        if not lr > 0.0:
            raise GradestError(f"the control's learning rate must be positive, got {lr!r}")
        self.lr = lr
        #: the control's parameters and, when learning, their optimizer: created at the first call
        #: on the parameters' device and dtype
        self.control: Control | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        #: variance-minimisation steps taken (surrogate calls with learn=True)
        self.steps = 0
        self._in_surrogate = False

    # state -----------------------------------------------------------------------------------

    def make_control(self, like: torch.Tensor, width: int) -> Control:
        return Control(self.eta0, self.temperature0, like, width)

    def control_state(self) -> dict[str, Any]:
        """The learned control and its optimizer as tensors, numbers and dicts ({} before the first
        call): what a checkpoint keeps (loadable with ``weights_only=True``)."""
        if self.control is None:
            return {}
        return {"width": self.control.width, "control": self.control.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_control_state(self, state: Mapping[str, Any]) -> None:
        """Put back :meth:`control_state`: the control made as the first call makes it, then the saved
        values (nothing where the state holds no control)."""
        if "control" not in state:
            return
        self.control = self.make_control(state["control"]["eta"], int(state["width"]))
        self.control.load_state_dict(state["control"])
        self.optimizer = torch.optim.Adam(self.control.parameters(), lr=self.lr) if self.learn else None
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def _control(self, like: torch.Tensor, width: int) -> Control:
        if self.control is None or not self.control.matches(like, width):
            if self.control is not None and self.steps:
                raise GradestError(
                    f"{self.name}'s control was learned for {self.control.width} coordinates per cost "
                    f"element in {self.control.eta.dtype} on {self.control.eta.device}, and this call has "
                    f"{width} in {like.dtype} on {like.device}; use a fresh estimator for another problem "
                    f"(get_estimator({self.name!r}))"
                )
            self.control = self.make_control(like, width)
            self.optimizer = torch.optim.Adam(self.control.parameters(), lr=self.lr) if self.learn else None
        return self.control

    @property
    def eta(self) -> float:
        return self.eta0 if self.control is None else float(self.control.eta.detach())

    @property
    def temperature(self) -> float:
        if self.control is None:
            return self.temperature0
        return float(self.control.log_temperature.detach().exp())

    # the two views -----------------------------------------------------------------------------

    def family_refusal(self, family) -> str:
        return (
            f"{self.name} has rules for Bernoulli, not {type(family).__name__}; use 'unordered-set' "
            "(Categorical), 'score' or 'score-loo' (any family) instead"
        )

    def surrogate(self, *args, **kwargs) -> torch.Tensor:
        # the control learns inside surrogate calls only (training), never in per_sample (diagnostics)
        with self.training():
            return super().surrogate(*args, **kwargs)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Calls of ``terms`` inside this block are training steps: a learning control takes its
        variance step (as in ``surrogate``; a stochastic computation graph's node uses it)."""
        self._in_surrogate = True
        try:
            yield
        finally:
            self._in_surrogate = False

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family = unwrap(node.dist)
        ell_live = family.logits
        u, v = concrete.uniforms(self, node, concrete.noise_shape(node), generator, count=2)
        ell = node.per_sample(ell_live.detach())
        b = concrete.hard(family, ell + rng.logistic(u))
        self.healthy(node, b)
        fb = cost(b)  # the value; the direct term of a cost that declares θ; f's own tensors
        elements = fb.shape[1:]
        learn = self.learn and (self._in_surrogate or node.learn)
        with torch.enable_grad():
            control = self._control(node.like(), math.prod(b.shape[1:]) // max(math.prod(elements), 1))
            # a private copy of ℓ: the control's gradients reach θ only through the pair (ℓ, ĝ) below
            ell0 = ell.clone().requires_grad_(True)
            z = ell0 + rng.logistic(u)
            zt = ell0 + conditional_logit(b, v, ell0)
            g = self._estimate(cost, control, fb.detach(), b, ell0, z, zt, elements, learn)
            if learn:
                self._minimise_variance(control, g)
        return Terms(carrier(fb), [(ell_live, g.detach())], total(fb.detach()))

    def _estimate(self, cost, control, fb, b, ell0, z, zt, elements, learn):
        """ĝ_ℓ ``[N, *S]``, a function of the control's parameters when learning."""
        # without learning, (η, λ) are constants here: no graph through them
        eta = control.eta if learn else control.eta.detach()
        temperature = (control.log_temperature if learn else control.log_temperature.detach()).exp()
        x, xt = torch.sigmoid(z / temperature), torch.sigmoid(zt / temperature)
        f_z, f_zt = cost(x, direct=False), cost(xt, direct=False)
        difference = (f_z - f_zt).sum()
        df = torch.autograd.grad(difference, ell0, allow_unused=True, create_graph=learn,
                                 retain_graph=True)[0] if difference.requires_grad else None
        if df is None:  # no path from x to f: a constant f (zero gradient) or a non-differentiable one
            if not concrete.constant_in_x(cost, x, f_z):
                raise concrete.no_gradient_path(self.name, _ALTERNATIVES)
            df = torch.zeros_like(ell0)
        dc = eta * df
        c_zt = eta * f_zt
        r_z, r_zt = control.residual(z, elements), control.residual(zt, elements)
        if r_z is not None:
            (dr,) = torch.autograd.grad((r_z - r_zt).sum(), ell0, create_graph=learn, retain_graph=True)
            dc = dc + dr
            c_zt = c_zt + r_zt
        w = fb.to(c_zt.dtype) - c_zt  # the score's learning signal, per cost element
        g = broadcast_signal(w, ell0) * (b - torch.sigmoid(ell0.detach())) + dc
        return g.to(ell0.dtype)

    def _minimise_variance(self, control: Control, g: torch.Tensor) -> None:
        """One optimizer step on the control's parameters down E‖ĝ‖² (this call's samples)."""
        loss = g.pow(2).sum() / g.shape[0]
        params = [p for p in control.parameters() if p.requires_grad]
        # autograd.grad, not backward(): nothing outside the control accumulates a gradient
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, d in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if d is None else d
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eta={self.eta:.4g}, temperature={self.temperature:.4g}, "
                f"learn={self.learn}, name={self.name!r})")
