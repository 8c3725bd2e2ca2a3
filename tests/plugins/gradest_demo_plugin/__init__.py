r"""A user's estimator, shipped as an installable package and found by ``gradest`` through the
entry-point group ``gradest.estimators`` (the tests install it with a temporary dist-info)::

    [project.entry-points."gradest.estimators"]
    demo-score = "gradest_demo_plugin"

It implements the public hook ``terms``: ĝ_n = f(x_n) ∇θ log Π_b p(x_n,b; θ), by autograd of
``log_prob`` (the plain score function, written as a user would).
"""

import gradest


class DemoScore(gradest.Estimator):
    """ĝ_n = f(x_n) ∇θ log p(x_n; θ). Requires: a support that does not move with θ."""

    name = "demo-score"
    capabilities = gradest.Capabilities(fixed_support=True, interior=True)

    def terms(self, cost, node, generator):
        x = self.draw(node, generator, reparameterized=False)  # detached: no path from θ through x
        fx = cost(x)
        signal = fx.detach().reshape(fx.shape[0], -1).sum(1)  # [N], a constant of the math
        logp = node.dist.log_prob(x)
        logp = logp.reshape(logp.shape[0], -1).sum(1)
        direct = fx.sum() if fx.requires_grad else 0.0  # a cost that declares θ: its own term
        return gradest.Terms(direct + (signal * logp).sum(), [], signal)


@gradest.register("demo-score", "score function written as a plugin (tests/plugins)")
def _demo_score(_):
    return DemoScore()
