r"""Objectives of the binary-latent VAE (:class:`~gradest.vae.model.SigmoidBeliefVAE`): the core
discrete estimators on q_φ(b|x) = Π_l Bernoulli(b_l; σ(ℓ_φ(x)_l)).

With b_1..b_K ~ q_φ(b|x) and the per-image cost (the single-sample ELBO, a log importance weight)

    f(b) = log p_a(b) + log p_θ(x|b) − log q(b; ℓ̄),     ℓ̄ = ℓ_φ(x) detached,

every single-sample estimator is the core estimator's ``surrogate`` on the node
q = Independent(Bernoulli(logits=ℓ), 1) (batch: the images, event: the L latents) with f ``[K, B]``:
the logits receive the estimator's gradient of E_q f (the chain rule carries it into the encoder),
and f's own tensors — the decoder θ and the prior's logits a — receive ∇ E_q f from the same
backward pass. log q is evaluated at ℓ̄ because ∇_φ E_q[log w] = ∇_φ E_{q_φ}[f(b)] − E_q[∇_φ log q_φ(b)]
and the last term is 0: leaving it out keeps every estimator unbiased and drops a term that is pure
noise per sample. The estimators, and the evaluations of f each sample costs:

    score-loo     REINFORCE, leave-one-out baseline over the K samples of an image (K ≥ 2)     1
    gumbel-st=τ   straight-through Gumbel: forward b, backward through σ((ℓ + logistic)/τ);
                  biased (τ = 0.5 unless given)                                               1
    arm, disarm   antithetic pairs (Yin & Zhou 2019; Dong et al. 2020)                          2
    rebar         Concrete control c(z) = η f(σ(z/λ)), η and λ learned to minimise the variance
                  (Tucker et al. 2017, §3.3: the core ``Rebar(learn=True)``)                      3
    relax         REBAR's control plus a learned network r_ψ (Grathwohl et al. 2018)              3
    vimco         the K-sample bound IWAE_K with per-sample leave-one-out signals (K ≥ 2),
                  written out as for the Gaussian VAE (Mnih & Rezende 2016)                     1

All but gumbel-st are unbiased for ∇ ELBO (vimco: ∇ IWAE_K) in every parameter. The estimator is
the run's state (:class:`LatentEstimator`: REBAR's η, λ, RELAX's network and their Adam states, a
relaxation's step count), created by :func:`gradest.vae.objectives.make_baseline`, passed to every
step, saved in the checkpoint, and restored by the gradient monitor after each of its repeats.

Each objective's ``fn(model, x, k, generator, state)`` encodes x and calls
``from_encoding(model, x, logits, k, generator, state)``; the loss is the mean over the images of
the negative surrogate (nats per image) and its value is −ELBO (vimco: −IWAE_K), with the
detached per-image ELBO (the mean of f over the exact draws b, antithetic partners included) and
bound.

References: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR"; Grathwohl et al.
(2018), "Backpropagation through the void"; Yin & Zhou (2019), "ARM"; Dong, Mnih & Tucker (2020),
"DisARM"; Mnih & Rezende (2016), "Variational inference for Monte Carlo objectives".
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.distributions import Bernoulli, Independent

from gradest import rng
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.base import Estimator
from gradest.estimators.rebar import Rebar
from gradest.estimators.registry import get_estimator
from gradest.vae.model import SigmoidBeliefVAE, bernoulli_latent_log_prob
from gradest.vae.objectives import OBJECTIVES, Estimate, Objective, vimco_estimate

#: evaluations of f per sample of each estimator (the table's budget is K × this, per image)
EVALUATIONS = {"score-loo": 1, "gumbel-st": 1, "vimco": 1, "arm": 2, "disarm": 2, "rebar": 3, "relax": 3}


def posterior(logits: torch.Tensor) -> Independent:
    """q_φ(b|x) = Π Bernoulli(σ(ℓ)): batch shape ``logits.shape[:-1]``, event shape [L]."""
    # No argument validation (logits are any real numbers); probs are never computed here.
    return Independent(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)


def make_estimator(spec: str) -> Estimator:
    """A fresh core estimator for ``spec`` (REBAR with its η, λ learned, as in Tucker et al.)."""
    name = spec.partition("=")[0]
    if name == "rebar":
        return Rebar(learn=True)
    if name == "vimco":
        raise GradestError("vimco is written out here, not a core estimator")
    return get_estimator(spec)


class LatentEstimator:
    """The run's estimator of ∇ E_q f: one object across steps, its learned state checkpointed."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.estimator = None if spec == "vimco" else make_estimator(spec)

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and dicts only (the checkpoint is loaded with ``weights_only=True``)."""
        est = self.estimator
        out: dict[str, Any] = {"spec": self.spec, "steps": int(getattr(est, "steps", 0))}
        if isinstance(est, Rebar):
            out.update(est.control_state())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("spec") != self.spec:
            raise GradestError(
                f"the checkpoint's estimator state is for {state.get('spec')!r}, not {self.spec!r}"
            )
        est = self.estimator
        if hasattr(est, "steps"):
            est.steps = int(state["steps"])
        if isinstance(est, Rebar):
            est.load_control_state(state)


def _is_binary(b: torch.Tensor) -> bool:
    return bool(((b == 0) | (b == 1)).all())


def elbo_estimate(model: SigmoidBeliefVAE, x: torch.Tensor, logits: torch.Tensor, k: int,
                  generator: torch.Generator, state: LatentEstimator) -> Estimate:
    """−ELBO through the core estimator of ``state`` on q(b|x) (module docstring)."""
    fixed = logits.detach()  # ℓ̄: the zero-mean direct term −∇ log q is left out
    exact: list[torch.Tensor] = []

    def log_weight(b):
        out = model.log_joint(x, b) - bernoulli_latent_log_prob(b, fixed)  # [K, *batch]
        if _is_binary(b):  # an exact draw (not a relaxed point): an ELBO sample
            exact.append(out.detach())
        return out

    expected = state.estimator.surrogate(log_weight, posterior, {"logits": logits}, k, generator,
                                         reduction="mean")
    elbo = torch.cat(exact).mean(0) if exact else logits.new_full(logits.shape[:-1], float("nan"))
    return Estimate(-expected, elbo, elbo)


def vimco(model: SigmoidBeliefVAE, x: torch.Tensor, logits: torch.Tensor, k: int,
          generator: torch.Generator, state: LatentEstimator | None = None) -> Estimate:
    """−IWAE_K with VIMCO's per-sample leave-one-out learning signals (b not reparameterized)."""
    b = rng.sample(posterior(logits), (k,), generator, False)
    log_q = bernoulli_latent_log_prob(b, logits)
    return vimco_estimate(model.log_joint(x, b) - log_q, log_q)


def _from_encoding(spec: str, model, x, logits, k, generator, state=None) -> Estimate:
    if state is None:  # a one-off call: a fresh estimator (a learned control starts anew)
        state = LatentEstimator(spec)
    elif state.spec != spec:
        raise GradestError(f"the estimator state is for {state.spec!r}, not {spec!r}")
    if spec == "vimco":
        return vimco(model, x, logits, k, generator, state)
    return elbo_estimate(model, x, logits, k, generator, state)


def _encode_then(spec: str, model, x, k, generator, state=None) -> Estimate:
    return _from_encoding(spec, model, x, model.encode(x), k, generator, state)


_SUMMARIES = {
    "score-loo": "REINFORCE, leave-one-out over K ≥ 2 (binary latents)",
    "vimco": "VIMCO for the K-sample bound, K ≥ 2 (binary latents)",
    "gumbel-st": "straight-through Gumbel, =TEMP (default 0.5), biased (binary latents)",
    "rebar": "REBAR, η and λ learned (binary latents; 3 evaluations of f per sample)",
    "relax": "RELAX, learned control network (binary latents; 3 evaluations per sample)",
    "arm": "ARM, antithetic pair (binary latents; 2 evaluations per sample)",
    "disarm": "DisARM, antithetic pair (binary latents; 2 evaluations per sample)",
}
_MIN_K = {"score-loo": 2, "vimco": 2}
NAMES = tuple(_SUMMARIES)
CHOICES = "score-loo, vimco, gumbel-st=TEMP, rebar, relax, arm, disarm"


def binary_objective(spec: str, k: int) -> Objective:
    """The binary-latent objective ``spec`` (``NAME`` or ``gumbel-st=TEMP``), checked for ``k``."""
    name, eq, _ = spec.partition("=")
    if name not in _SUMMARIES:
        why = (f"{name} is an estimator of the Gaussian VAE (it needs reparameterizable latents)"
               if name in OBJECTIVES else f"unknown --estimator {spec!r}")
        raise GradestError(f"{why}; with --latent-dist bernoulli choose one of: {CHOICES}")
    if eq and name != "gumbel-st":
        raise GradestError(f"--estimator {name} takes no =VALUE, got {spec!r}")
    if eq:
        make_estimator(spec)  # the temperature, checked now (one line naming the problem)
    minimum = _MIN_K.get(name, 1)
    if k < minimum:
        raise GradestError(f"--estimator {name} needs --k ≥ {minimum} samples per image, got {k}")
    return Objective(
        functools.partial(_encode_then, spec), functools.partial(_from_encoding, spec),
        "iwae" if name == "vimco" else "elbo", minimum, False, _SUMMARIES[name],
        make_state=functools.partial(LatentEstimator, spec),
    )


def monitor_loss(model: SigmoidBeliefVAE, objective: Objective, k: int, state: LatentEstimator):
    """``loss_fn(batch, generator)`` for :class:`gradest.monitor.GradientMonitor`: the training loss.

    The monitor draws its R estimates by R calls (its loop path) and restores ``state`` after each.
    A non-finite loss gives NaN gradients, recorded as null; training decides whether to stop.
    """

    def loss_fn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        try:
            return objective.fn(model, x, k, generator, state).loss
        except NonFiniteError:
            return sum(p.sum() for p in model.parameters()) * float("nan")

    return loss_fn
