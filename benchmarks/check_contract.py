"""The batched, θ-aware contract, case by case, with the figures it gives (issue "Stochastic nodes").

1. θ inside f: f(x, loc) = loc·x under N(loc, 1) at loc = 0.6 (true d/dloc E = 2·loc = 1.2), every
   estimator that applies, both views; a cost closing over loc without declaring it is refused.
2. Variance vs batch size: score-loo's single-sample variance of ∂/∂loc[0, 0] with per-element
   costs [N, B] against one total cost [N], for B = 1, 10, 100 (5 seeds each).
3. Shapes and builders: loc [4, 3] with a shared scale [3]; MultivariateNormal(loc, diag(scale²))
   (refused by per_sample, fine in surrogate); Categorical(softmax(logits, 0)) (mixes the sample
   axis: refused) against softmax(logits, -1) (enumeration).

Run: .venv/bin/python benchmarks/check_contract.py
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

import gradest

N = 100_000


def theta_in_f() -> None:
    print("1. θ in f: f(x, loc) = loc·x under N(loc, 1), loc = 0.6, exact 1.2")
    loc = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)

    def f(x, loc):
        return loc * x

    def unit(loc):
        return Normal(loc, torch.ones_like(loc))

    exact = gradest.exact_grad(f, unit, {"loc": loc}).grads["loc"]
    for name in ("pathwise", "score", "score-loo", "mvd", "score-optb", "score-delta", "mvd-delta"):
        est = gradest.get_estimator(name)
        per = est.per_sample(f, unit, {"loc": loc}, N, gradest.make_generator(0))
        loss = est.surrogate(f, unit, {"loc": loc}, N, gradest.make_generator(0))
        (grad,) = torch.autograd.grad(loss, loc)
        mean, se = float(per.mean()["loc"]), float(per.stderr()["loc"])
        print(f"   {name:14s} per_sample {mean:.4f} ± {se:.4f} (z = {(mean - float(exact)) / se:+.2f}), "
              f"surrogate {float(grad):.4f}")
    try:
        gradest.get_estimator("pathwise").per_sample(lambda x: loc * x, unit, {"loc": loc}, 10,
                                                     gradest.make_generator(0))
    except gradest.GradestError as err:
        print(f"   closure over loc: refused: {err}")


def variance_vs_batch() -> None:
    print("2. score-loo, single-sample variance of ∂/∂loc[0,0] (20,000 samples, 5 seeds: mean ± sd)")

    def joint(loc, scale):
        return Independent(Normal(loc, scale), 1)

    for b in (1, 10, 100):
        rows = {"per-element": [], "total": []}
        for seed in range(5):
            params = {"loc": torch.zeros(b, 3, dtype=torch.float64),
                      "scale": torch.ones(3, dtype=torch.float64)}
            for label, f in (("per-element", lambda x: ((x - 1) ** 2).sum(-1)),
                             ("total", lambda x: ((x - 1) ** 2).sum((-1, -2)))):
                per = gradest.get_estimator("score-loo").per_sample(f, joint, params, 20_000,
                                                                    gradest.make_generator(seed))
                rows[label].append(float(per.grads["loc"][:, 0, 0].var()))
        out = ", ".join(f"{k} {torch.tensor(v).mean():.1f} ± {torch.tensor(v).std():.1f}"
                        for k, v in rows.items())
        print(f"   B = {b:3d}: {out}")


def shapes_and_builders() -> None:
    print("3. shapes and builders")
    loc = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    scale = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    f = gradest.named_cost("cos", 2.0)
    exact = gradest.exact_grad(f, Normal, {"loc": loc, "scale": scale})
    for name in ("pathwise", "score-loo", "mvd"):
        per = gradest.get_estimator(name).per_sample(f, Normal, {"loc": loc, "scale": scale}, N,
                                                      gradest.make_generator(0))
        z = max(float(((per.mean()[k] - exact.grads[k]) / per.stderr()[k]).abs().max()) for k in per.grads)
        print(f"   loc [4, 3], scale [3], {name:9s}: shapes {[list(g.shape) for g in per.grads.values()]}, "
              f"max |z| {z:.2f}")
    m = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    s = torch.ones(3, dtype=torch.float64, requires_grad=True)

    def mvn(loc, scale):
        return MultivariateNormal(loc, torch.diag(scale**2))

    def square(x):
        return ((x - 1) ** 2).sum(-1)

    try:
        gradest.get_estimator("pathwise").per_sample(square, mvn, {"loc": m, "scale": s}, 10,
                                                     gradest.make_generator(0))
    except gradest.GradestError as err:
        print(f"   MultivariateNormal(loc, diag(scale²)), per_sample: refused: {err}")
    loss = gradest.get_estimator("pathwise").surrogate(square, mvn, {"loc": m, "scale": s}, N,
                                                       gradest.make_generator(0))
    g_loc, g_scale = torch.autograd.grad(loss, [m, s])
    print(f"   … surrogate: d/dloc {[round(v, 3) for v in g_loc.tolist()]} (exact −2), "
          f"d/dscale {[round(v, 3) for v in g_scale.tolist()]} (exact 2)")
    logits = torch.tensor([0.1, -0.3, 0.5], dtype=torch.float64)

    def fc(x):
        return (x == 1).double() * 2.0 + x.double()

    try:
        gradest.get_estimator("score").per_sample(
            fc, lambda logits: Categorical(probs=torch.softmax(logits, 0)), {"logits": logits}, 10,
            gradest.make_generator(0))
    except gradest.GradestError as err:
        print(f"   Categorical(softmax(logits, 0)): refused: {err}")

    def right(logits):
        return Categorical(probs=torch.softmax(logits, -1))

    exact = gradest.exact_grad(fc, right, {"logits": logits}).grads["logits"]
    per = gradest.get_estimator("score-loo").per_sample(fc, right, {"logits": logits}, 200_000,
                                                        gradest.make_generator(0))
    print(f"   softmax(logits, -1): score-loo {[round(v, 4) for v in per.mean()['logits'].tolist()]} ± "
          f"{float(per.stderr()['logits'].max()):.4f}, enumeration {[round(v, 4) for v in exact.tolist()]}")


if __name__ == "__main__":
    theta_in_f()
    variance_vs_batch()
    shapes_and_builders()
