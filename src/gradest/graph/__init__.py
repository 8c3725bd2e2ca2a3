r"""Stochastic computation graphs: several stochastic nodes, each with its own estimator, one surrogate.

    L(θ) = E[Σ_c c],   S = (1/N) Σ_n [ Σ_c c_n 𝔐(Σ_{i ∈ W_c} log p_i(z_i,n))
                                       + Σ_{w, c} b_w,c,n (𝔐(A_w) − 𝔐(A_w ∪ {w})) ],
    𝔐(τ) = exp(τ − τ.detach())  (DiCE's magic box: value 1, ∇𝔐(τ) = 𝔐(τ) ∇τ)

W_c is the set of score-function nodes upstream of cost c (its declared parents and their ancestors;
by default every node sampled before the cost), A_w the score-function ancestors of node w. The
value of S is the Monte Carlo estimate of L; its gradient of every order is an unbiased estimate of
L's: a node's score term ∇ log p_i is weighted only by the costs downstream of it, pathwise nodes
(``rsample``) pass gradients through, costs that depend on θ directly keep their direct term. The
second line is the baseline term of Mao et al. (2019): its first derivative is −b_w ∇ log p_w, its
derivatives of every order have expectation 0 since b_w does not depend on particle n. With the
``score-loo`` estimator b_w,c,n is the mean of c over the other N − 1 particles (per cost element);
with ``score-const=B`` it is B (for the node's whole downstream cost).

Each of the N particles is one independent run of the whole graph, along a leading axis: a root
node's distribution (batch ``[*B]``) is drawn ``[N, *B, *E]``; a node whose distribution was built
from upstream samples already has batch ``[N, *B]`` and is drawn once per particle. A cost is
``[N]`` (one per particle) or ``[N, *C]`` (per element: element b may depend only on element b of
the nodes whose batch shape starts with C, as for the single-node estimators). Particle n's costs,
and the parameters of a node built from upstream samples, may depend only on particle n's draws.
Both are verified through autograd (:mod:`gradest.graph.elements`): mixing is refused, and so is a
per-element cost downstream of a node whose draws are integers. All noise comes from the caller's
generator (:func:`gradest.rng.sample`).

Every registered estimator name (or an Estimator value) is accepted as a node's estimator where its
method can be a node; its ``capabilities.node`` says how it runs (data on the estimator, so an
estimator a user registers joins graphs, the monitor and the Pyro bridge as the built-in ones do):

* ``score``, ``score-loo``, ``score-const=B`` — **score** nodes, in the DiCE surrogate above (every
  order).
* ``pathwise`` and the relaxations ``gumbel-softmax=TEMP``, ``straight-through``, ``gumbel-st=TEMP``
  — **reparameterized** nodes: ``g.sample`` returns a tensor whose autograd path carries the
  gradient (the relaxed sample σ((ℓ + noise)/τ), or the hard draw b with the backward pass of p or
  of the relaxation), and costs downstream differentiate through it, to every order. The relaxed
  ones are biased by design (as single-node estimators): downstream costs see x̃, not b, for
  gumbel-softmax, so the surrogate's value is the relaxed objective's estimate.
* ``arm``, ``disarm``, ``rebar``, ``relax``, ``unordered-set=K`` and ``enumerate`` — **callable**
  nodes: these evaluate the downstream computation at points other than the draw (the antithetic
  b̃, relaxed points, k values without replacement, the whole support), which a graph cannot re-run
  unless the user hands it over. So they need ``then=``: ``g.sample(name, dist, "disarm",
  then=fn)``, where ``fn(z) -> [N] or [N, *C]`` is the cost of everything downstream of z (it may
  close over upstream samples and parameters, and must not sample). The node is then terminal:
  ``g.sample`` returns its per-particle cost estimate ``[N]`` (detached), which is also the
  learning signal of the score nodes upstream, and ``fn``'s output is a cost of the graph. The
  estimator's own hook (:meth:`gradest.Estimator.terms`) draws and weights the points, exactly as
  for one node; ``enumerate`` is Σ_z p(z) fn(z) per particle, exact in that node and
  differentiable to every order. The hook-based ones give FIRST derivatives only
  (:attr:`Graph.first_order_only` names them): their explicit ĝ is detached, as in their
  single-node surrogates. A RELAX control learns, and an annealed temperature moves on, only in a
  graph made with ``learn=True`` (a training step) and an estimator value kept across steps
  (``est = get_estimator("relax")`` once, then ``g.sample(..., est, then=fn)`` each step). Any
  estimator that declares nothing about graphs is a callable node: its hook runs on a copy of the
  node with one row of the family's tensors per particle, so ∂S/∂(row n) is particle n's estimate
  whatever the hook puts in its carrier S.
* ``score-ema``, ``score-optb``, the control variates (``*-delta``), ``mvd``, ``mvd-uncoupled`` and
  any ``+sampler`` suffix are refused, naming the alternative: a moving average of a node's
  downstream cost, a coefficient fitted on per-sample gradients, f at perturbed points of a
  continuous family, or dependent particles have no node form here. ``then=`` works with every
  accepted estimator (the same model runs with any of them, and :func:`enumerate_graph` reads it).

Per-node variance attribution: the first derivative of S for particle n splits exactly into one
term per node. A score node's term is (Σ_{c ↓ i} (c_n − b_i,c,n)) ∇ log p_i(z_i,n); a callable
node's term is its estimator's explicit ĝ (the part of its estimate that f's value weights). The
costs' own gradient ∇ Σ_c c_n, along the reparameterized samples and through θ's direct use, is
split by where θ enters a path: the term of reparameterized node i gathers the paths that start at
θ's use in z_i's distribution (and pass through z_i); ``"direct"`` the paths through no
reparameterized node. Computed by blocking: with D_k the costs' gradient when no gradient may flow
into the first k reparameterized nodes' samples (tensor hooks), node i's term is D_i − D_{i+1} and
``"direct"`` is D_K. :meth:`Graph.per_node` returns these single-particle gradients
``[N, *param.shape]`` per group; :func:`attribute` their single-sample variances (trace of the
covariance) with standard errors; :func:`report` a plot and an HTML section. They answer "which node
makes my gradient noisy". The rows of a node whose estimator couples the particles (``score-loo``:
each particle's baseline is the others' mean) are not independent: their spread is still the
single-particle variance, but the standard error of their mean needs independent graphs, as
:mod:`gradest.batches` runs independent calls (where the coupling's share dominates — Categorical(½, ½)
with f = x² — every row is equal and their spread is 0). :meth:`NodeGradients.stderr` says so: it
refuses the rows of one graph with such a node and takes the spread of the graphs' means of
:func:`combine` (the same model built K times on one generator); like
:meth:`gradest.PerSampleGradients.stderr` it refuses an estimate that one particle carries.

:func:`enumerate_graph` is the oracle: the exact L(θ) of a graph of Bernoulli, Categorical and
OneHotCategorical nodes as a differentiable sum over every joint value (gradients of every order).

References: Schulman, Heess, Weber & Abbeel (2015), "Gradient estimation using stochastic
computation graphs", NeurIPS; Foerster et al. (2018), "DiCE: the infinitely differentiable Monte
Carlo estimator", ICML; Mao et al. (2019), "A baseline for any order gradient estimation in
stochastic computation graphs", ICML.
"""

from gradest.graph.attribution import attribute, group_statistics
from gradest.graph.dice import align, leave_one_out, magic_box
from gradest.graph.enumeration import MAX_SUPPORT, enumerate_graph
from gradest.graph.jacobian import jacobian_rows
from gradest.graph.model import Graph, graph
from gradest.graph.records import Attribution, CostNode, NodeGradients, StochasticNode, combine
from gradest.graph.report import attribution_section, report
from gradest.graph.roles import node_estimator

__all__ = [
    "MAX_SUPPORT",
    "Attribution",
    "CostNode",
    "Graph",
    "NodeGradients",
    "StochasticNode",
    "align",
    "attribute",
    "attribution_section",
    "combine",
    "enumerate_graph",
    "graph",
    "group_statistics",
    "jacobian_rows",
    "leave_one_out",
    "magic_box",
    "node_estimator",
    "report",
]

# ``gradest.graph`` is this package's ``graph`` function once gradest has imported it, so the report is
# reachable under that spelling too: gradest.graph.report(g, "attribution.html", params), and so is
# gradest.graph.combine(records)
graph.report = report  # type: ignore[attr-defined]
graph.combine = combine  # type: ignore[attr-defined]
