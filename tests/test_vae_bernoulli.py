"""The binary-latent VAE (sigmoid belief network): unbiased gradients against enumeration, training,
exact resume, the gradient monitor, evaluation and the command line's errors.

Tiny model for the gradient checks: 3 binary latents (8 states), 4 binary pixels, linear encoder and
decoder, learned prior, float64. The exact ELBO (and IWAE_2: 64 pairs of states) is a finite sum
over the states, differentiable in every parameter, so its autograd gradient is the target. The
estimates: R batches, each of M copies of the 3 images (independent noise per copy); every
coordinate's mean must lie within 5 standard errors of the target (false alarm ≈ 6e-7 per
coordinate). Negative controls show the test can fail: the biased straight-through Gumbel estimator
and VIMCO (unbiased for IWAE_K, not for the ELBO) are rejected.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from gradest.cli import main
from gradest.errors import GradestError
from gradest.rng import make_generator
from gradest.vae.bernoulli import EVALUATIONS, NAMES, LatentEstimator
from gradest.vae.catalog import get_objective
from gradest.vae.config import TrainConfig
from gradest.vae.evaluate import iwae_nll, neg_elbo
from gradest.vae.files import load_checkpoint
from gradest.vae.model import SigmoidBeliefVAE, bernoulli_latent_log_prob
from gradest.vae.objectives import make_baseline
from gradest.vae.prepare import setup
from gradest.vae.train import train

X = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
L = 3
R, M = 200, 100
Z_MAX = 5.0
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=L)), dtype=torch.float64)  # [8, L]


def tiny_model() -> SigmoidBeliefVAE:
    model = SigmoidBeliefVAE.build(4, (), L, make_generator(3)).double()
    with torch.no_grad():  # a posterior away from ½ and a prior away from ½: no gradient trivially zero
        model.encoder[0].weight.mul_(3.0)
        model.decoder[0].weight.mul_(3.0)
        model.prior_logits.copy_(torch.tensor([0.5, -1.0, 0.3]))
    return model


def exact_bound(model: SigmoidBeliefVAE, kind: str, k: int = 1) -> torch.Tensor:
    """Mean over X of ELBO or IWAE_K, summed over every state (K-tuple of states), differentiable."""
    logits = model.encode(X)  # [B, L]
    log_q = bernoulli_latent_log_prob(STATES[:, None, :], logits)  # [8, B]
    log_w = model.log_weights(X, STATES[:, None, :].expand(-1, X.shape[0], -1), logits)  # [8, B]
    if kind == "elbo":
        return (log_q.exp() * log_w).sum(0).mean()
    tuples = torch.cartesian_prod(*[torch.arange(8)] * k).reshape(-1, k)  # [8^K, K]
    lq, lw = log_q[tuples], log_w[tuples]  # [8^K, K, B]
    inner = torch.logsumexp(lw, 1) - math.log(k)
    return (lq.sum(1).exp() * inner).sum(0).mean()


def flat_grad(model, scalar: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, list(model.parameters()))])


def mc_gradients(model, spec: str, k: int) -> torch.Tensor:
    """R batch estimates of ∇ bound, [R, P] (the loss is −bound), one estimator state across them."""
    gen = make_generator(11)
    objective = get_objective(spec, k, "bernoulli")
    state = make_baseline(objective, 0.9)
    x = X.repeat(M, 1)
    return torch.stack([-flat_grad(model, objective.fn(model, x, k, gen, state).loss) for _ in range(R)])


def z_scores(estimates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    stderr = estimates.std(0, correction=1) / math.sqrt(estimates.shape[0])
    return (estimates.mean(0) - target) / stderr


UNBIASED = [("score-loo", 3), ("arm", 1), ("disarm", 1), ("rebar", 1), ("relax", 1), ("vimco", 2)]


def test_exact_bounds_by_enumeration_agree_with_the_closed_form_kl() -> None:
    model = tiny_model()
    with torch.no_grad():
        logits = model.encode(X)
        q = bernoulli_latent_log_prob(STATES[:, None, :], logits).exp()  # [8, B]
        kl = (q * (bernoulli_latent_log_prob(STATES[:, None, :], logits)
                   - model.log_prior(STATES)[:, None])).sum(0)
        assert torch.allclose(kl, model.kl(logits), rtol=1e-12, atol=1e-12)
        assert float(exact_bound(model, "iwae", 2)) > float(exact_bound(model, "elbo"))


@pytest.mark.parametrize(("spec", "k"), UNBIASED)
def test_estimator_is_unbiased_for_its_bound(spec: str, k: int) -> None:
    model = tiny_model()
    kind = get_objective(spec, k, "bernoulli").bound
    target = flat_grad(model, exact_bound(model, kind, k))
    z = z_scores(mc_gradients(model, spec, k), target)
    assert z.abs().max() < Z_MAX, f"{spec}: z-scores {z.tolist()} (target {target.tolist()})"


def test_covers_every_estimator() -> None:
    assert {s for s, _ in UNBIASED} | {"gumbel-st"} == set(NAMES) == set(EVALUATIONS)


def test_negative_controls_biased_gumbel_st_and_vimco_for_the_elbo() -> None:
    """The test has power: straight-through Gumbel is biased; VIMCO's IWAE_2 gradient is not the ELBO's."""
    model = tiny_model()
    target = flat_grad(model, exact_bound(model, "elbo"))
    assert z_scores(mc_gradients(model, "gumbel-st=0.5", 1), target).abs().max() > Z_MAX
    assert z_scores(mc_gradients(model, "vimco", 2), target).abs().max() > Z_MAX


def test_variance_ordering_on_the_tiny_model() -> None:
    """DisARM's encoder gradient varies less than ARM's at the same pairs (Rao–Blackwellization)."""
    model = tiny_model()
    enc = sum(p.numel() for p in model.encoder.parameters())
    var = {s: mc_gradients(model, s, 1)[:, :enc].var(0).sum() for s in ("arm", "disarm")}
    assert var["disarm"] < var["arm"]


def test_evaluation_matches_enumeration() -> None:
    model = tiny_model()
    with torch.no_grad():
        exact = -float(exact_bound(model, "elbo"))
        x = X.repeat(2000, 1)
        estimate, _ = neg_elbo(model, x, make_generator(5), samples=1)
        # −ELBO per image = KL − E log p(x|b): its spread over single draws bounds the error
        logits = model.encode(x)
        b = (torch.rand(1, *logits.shape, generator=make_generator(6), dtype=torch.float64)
             < torch.sigmoid(logits)).double()
        spread = float((model.kl(logits) - model.log_weights(x, b, logits)[0]
                        - bernoulli_latent_log_prob(b[0], logits) + model.log_prior(b[0])).std())
        assert abs(estimate - exact) < Z_MAX * spread / math.sqrt(x.shape[0])
        assert iwae_nll(model, X, 64, make_generator(7)) < exact


# ── training, resume, the monitor ───────────────────────────────────────────────────────────

TINY = TrainConfig(dataset="digits", binarize="fixed", hidden=(), latent=16, epochs=2, batch_size=256,
                   var_repeats=0, iwae_k=8, latent_dist="bernoulli", arch="linear", lr=3e-3)
K = {"score-loo": 2, "vimco": 2}


def _numbers(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("seconds", "monitor_seconds")} for m in metrics]


@pytest.mark.parametrize("spec", ["score-loo", "vimco", "gumbel-st=0.5", "arm", "disarm", "rebar", "relax"])
def test_training_lowers_the_test_neg_elbo(tmp_path: Path, spec: str) -> None:
    config = dataclasses.replace(TINY, estimator=spec, k=K.get(spec, 1))
    untrained = setup(config).model
    before, _ = neg_elbo(untrained.eval(), setup(config).test, make_generator(0), samples=10)
    result = train(config, tmp_path)
    after = result.metrics[-1]["test_neg_elbo"]
    assert after < before - 1.0, f"{spec}: test −ELBO {before:.2f} -> {after:.2f}"
    evaluation = result.evaluation
    assert math.isfinite(evaluation.nll_iwae) and evaluation.nll_iwae <= evaluation.neg_elbo


@pytest.mark.parametrize("spec", ["relax", "gumbel-st=0.5"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, spec: str) -> None:
    config = dataclasses.replace(TINY, estimator=spec, epochs=3, var_repeats=3)
    whole = train(config, tmp_path / "whole")
    train(dataclasses.replace(config, epochs=1), tmp_path / "split")
    resumed = train(config, tmp_path / "split", resume=True)
    assert _numbers(resumed.metrics) == _numbers(whole.metrics)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluation == whole.evaluation
    saved = load_checkpoint(tmp_path / "split")["baseline"]
    batches = -(-setup(config).train.shape[0] // config.batch_size)
    assert saved["spec"] == spec and saved["steps"] == 3 * batches  # one surrogate call per Adam step
    if spec == "relax":  # the learned control was saved and moved
        assert float(saved["control"]["w2"].abs().sum()) > 0


def test_the_monitor_changes_nothing_and_measures_every_group(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, estimator="relax", epochs=2)
    plain = train(config, tmp_path / "plain")
    monitored = train(dataclasses.replace(config, var_repeats=4, monitor_every=3), tmp_path / "monitored")
    for a, b in zip(plain.model.state_dict().values(), monitored.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    lines = (tmp_path / "monitored" / "monitor.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["group"] for r in records} == {"encoder", "decoder", "prior_logits", "all"}
    assert all(r["variance"] > 0 and r["repeats"] == 4 for r in records)
    assert monitored.metrics[-1]["grad_var"] > 0


def test_state_of_another_estimator_is_refused() -> None:
    model = tiny_model()
    with pytest.raises(GradestError, match="for 'arm', not 'disarm'"):
        get_objective("disarm", 1, "bernoulli").fn(model, X, 1, make_generator(0), LatentEstimator("arm"))


# ── the command line ────────────────────────────────────────────────────────────────────────

BAD = [
    (["--latent-dist", "bernoulli", "--estimator", "pathwise"], "choose one of: score-loo, vimco"),
    (["--latent-dist", "bernoulli", "--estimator", "iwae-dreg"], "estimator of the Gaussian VAE"),
    (["--estimator", "disarm"], "add --latent-dist bernoulli"),
    (["--arch", "linear"], "applies to --latent-dist bernoulli"),
    (["--latent-dist", "bernoulli", "--estimator", "arm", "--arch", "linear", "--hidden", "8"],
     "drop --hidden"),
    (["--latent-dist", "bernoulli", "--estimator", "arm", "--arch", "deep"], "--arch must be one of linear"),
    (["--latent-dist", "bernoulli", "--estimator", "vimco", "--k", "1"], "needs --k ≥ 2"),
    (["--latent-dist", "bernoulli", "--estimator", "gumbel-st=0"], "temperature must be positive"),
    (["--latent-dist", "bernoulli", "--estimator", "arm=2"], "takes no =VALUE"),
    (["--latent-dist", "categorical"], "--latent-dist must be one of gaussian, bernoulli"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_invalid_combinations_are_one_line_errors(tmp_path: Path, capsys, args: list[str], message: str
                                                  ) -> None:
    out = tmp_path / "run"
    assert main(["vae", "train", "--dataset", "digits", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_train_and_eval_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["vae", "train", "--dataset", "digits", "--binarize", "fixed", "--latent-dist", "bernoulli",
            "--arch", "nonlinear", "--hidden", "8", "--latent", "6", "--estimator", "disarm", "--epochs", "1",
            "--batch-size", "512", "--monitor-repeats", "0", "--iwae-k", "4", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latent_dist"] == "bernoulli" and summary["arch"] == "nonlinear"
    assert main(["vae", "eval", str(out), "--iwae-k", "4", "--json", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    for key in ("test_neg_elbo", "test_nll_iwae", "kl", "active_units"):
        assert again[key] == summary[key]


def test_resume_from_the_command_line_keeps_the_runs_shape(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["vae", "train", "--dataset", "digits", "--binarize", "fixed", "--latent-dist", "bernoulli",
            "--arch", "nonlinear", "--hidden", "8", "--latent", "2", "--estimator", "arm",
            "--batch-size", "512", "--monitor-repeats", "0", "--iwae-k", "4", "--out", str(out)]
    assert main([*args, "--epochs", "1"]) == 0  # latent 2: the report leaves the latent-space plot out
    resume = ["vae", "train", "--resume", "--latent-dist", "bernoulli", "--epochs", "2", "--out", str(out)]
    assert main(resume) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
