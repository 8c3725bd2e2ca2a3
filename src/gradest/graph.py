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
the nodes whose batch shape starts with C, as for the single-node estimators). All noise comes
from the caller's generator (:func:`gradest.rng.sample`).

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
makes my gradient noisy".

:func:`enumerate_graph` is the oracle: the exact L(θ) of a graph of Bernoulli, Categorical and
OneHotCategorical nodes as a differentiable sum over every joint value (gradients of every order).

References: Schulman, Heess, Weber & Abbeel (2015), "Gradient estimation using stochastic
computation graphs", NeurIPS; Foerster et al. (2018), "DiCE: the infinitely differentiable Monte
Carlo estimator", ICML; Mao et al. (2019), "A baseline for any order gradient estimation in
stochastic computation graphs", ICML.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.base import (
    BoundCost,
    Estimator,
    Node,
    _graph_reaches,
    unwrap,
)
from gradest.estimators.baselines import Constant, LeaveOneOut, NoBaseline
from gradest.estimators.enumeration import Enumerate
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.registry import get_estimator
from gradest.provenance import Provenance

#: bound on the number of joint values :func:`enumerate_graph` sums over
MAX_SUPPORT = 2**16
#: rows of the identity handed to one batched backward pass in :meth:`Graph.per_node`
CHUNK = 512
_REFUSED = ("as a graph node; use 'score-loo' (any family, every order), 'disarm' with then= "
            "(Bernoulli) or 'pathwise' (reparameterizable families)")


def node_tensors(dist: Distribution) -> dict[str, torch.Tensor]:
    """The tensors a family (under ``Independent``) was built from, by constructor argument; of a
    probs/logits pair the logits (live either way: derived logits carry the chain to the probs)."""
    family = unwrap(dist)
    try:
        names = list(family.arg_constraints)
    except NotImplementedError:
        names = []
    present = {k: vars(family)[k] for k in names if isinstance(vars(family).get(k), torch.Tensor)}
    if "logits" in present and "probs" in present:
        del present["probs"]
    return present


def rebuild(name: str, dist: Distribution, tensors: Mapping[str, torch.Tensor]) -> Distribution:
    """``dist``'s family built anew from ``tensors`` (same constructor arguments), re-wrapped."""
    ndims = []
    family = dist
    while isinstance(family, Independent):
        ndims.append(family.reinterpreted_batch_ndims)
        family = family.base_dist
    try:
        if not tensors:
            raise TypeError("no parameter tensors")
        out = type(family)(**tensors, validate_args=False)
    except (TypeError, ValueError, RuntimeError) as err:
        raise GradestError(
            f"node {name!r}: a callable node runs its estimator on one copy of the family per particle, and "
            f"{type(family).__name__} could not be rebuilt from its parameters {sorted(tensors)} ({err}); "
            "build the node from a torch family (Normal, Bernoulli, Categorical, …, under Independent) and "
            "put transforms inside then=") from None
    for k in reversed(ndims):
        out = Independent(out, k)
    return out


def magic_box(tau: torch.Tensor) -> torch.Tensor:
    """𝔐(τ) = exp(τ − τ.detach()): value 1, gradient 𝔐(τ)∇τ, to every order."""
    return torch.exp(tau - tau.detach())  # detach: the value is fixed at 1, the derivatives are not


def node_estimator(name: str, spec: str | Estimator) -> tuple[str, Estimator]:
    """(role, estimator) for node ``name``: the role its ``capabilities.node`` declares; refuses,
    naming the alternative, what cannot be a node."""
    est = get_estimator(spec)
    label = getattr(est, "name", type(est).__name__)
    if est.sampler is not None:
        raise GradestError(f"node {name!r}: {label!r} draws dependent samples (a sampler suffix), which a "
                           "graph's independent particles cannot hold; drop the '+…' suffix")
    kind = est.capabilities.node
    baseline = getattr(est, "baseline", None)
    if kind == "score" and not isinstance(baseline, NoBaseline | LeaveOneOut | Constant):
        raise GradestError(
            f"node {name!r}: {label!r} keeps a moving average across calls, and a graph is built anew each "
            "step; use 'score-loo' (the other particles' costs) or 'score-const=B' for this node")
    if kind == "none":
        raise GradestError(f"node {name!r}: {label!r} {est.node_refusal}, so it is refused {_REFUSED}")
    return kind, est


@dataclass
class StochasticNode:
    """One sampled node: its draw ``value [N, *B, *E]`` (None for a callable node, whose hook draws
    privately), log p ``[N, *B]`` (score nodes) and ancestors.

    kind: ``"score"``, ``"reparameterized"`` or ``"callable"``; baseline: score-const's B.
    """

    name: str
    estimator: str
    value: torch.Tensor | None
    log_prob: torch.Tensor | None
    ancestors: frozenset[str]
    kind: str = "score"
    baseline: float | None = None
    loo: bool = False
    first_order: bool = False


@dataclass
class CostNode:
    """A cost ``[N]`` or ``[N, *C]`` (live) and its ancestors.

    A callable node's cost also carries ``own`` (``[N]`` rows whose first derivatives are the
    node's explicit estimate) and ``direct`` (rows for the costs' own gradient; default: the value).
    """

    name: str
    value: torch.Tensor
    ancestors: frozenset[str]
    own: torch.Tensor | None = None
    direct: torch.Tensor | None = None


class NodeGradients(NamedTuple):
    """Single-particle first-order gradients, split by node.

    grads: group -> param name -> ``[N, *param.shape]``; a group is a node (score, callable or
        reparameterized), or ``"direct"`` (θ's direct use in the costs).
    total: param name -> ``[N, *param.shape]``, the sum of the groups; its mean is ∇ surrogate.
    values: ``[N]`` total cost per particle.
    """

    grads: dict[str, dict[str, torch.Tensor]]
    total: dict[str, torch.Tensor]
    values: torch.Tensor


class Attribution(NamedTuple):
    """Single-sample gradient variances (trace of the covariance, summed over the parameters).

    nodes: group -> variance of its term alone; total: variance of the whole single-sample gradient;
    covariance: total − Σ nodes (twice the summed covariances between the groups' terms);
    stderr: group (and ``"total"``) -> the standard error of that variance estimate;
    num_samples: the N single-particle gradients the variances come from.
    """

    nodes: dict[str, float]
    total: float
    covariance: float
    stderr: dict[str, float] | None = None
    num_samples: int | None = None

    def shares(self) -> dict[str, float]:
        """Each group's variance as a fraction of the sum of the groups' variances."""
        whole = sum(self.nodes.values())
        return {k: (v / whole if whole > 0 else 0.0) for k, v in self.nodes.items()}


def trace_variance(grads: Mapping[str, torch.Tensor]) -> float:
    """Σ over parameters and coordinates of the unbiased variance over the leading axis."""
    return float(sum(g.reshape(g.shape[0], -1).var(0, unbiased=True).sum() for g in grads.values()))


#: the smaller side of the Gram matrix that the standard error's tr Σ² term is computed up to
_GRAM_LIMIT = 4096


def variance_stderr(grads: Mapping[str, torch.Tensor]) -> float:
    """Standard error of :func:`trace_variance` from N i.i.d. rows.

    v̂ is a U-statistic with kernel ½‖ĝ_r − ĝ_s‖²: Var v̂ = Var q/N + 2 tr Σ²/(N(N − 1)) with
    q = ‖ĝ − E ĝ‖²; Var q from the rows' centred squared norms, tr Σ² from the smaller of the two
    Gram matrices (left out, an O(1/N²) term, when both sides exceed 4096).
    """
    flat = torch.cat([g.reshape(g.shape[0], -1).to(torch.float64) for g in grads.values()], 1)
    n = flat.shape[0]
    if n < 3:
        return math.nan
    dev = flat - flat.mean(0)
    q = dev.square().sum(1) * (n / (n - 1))
    spread = float(q.var(correction=1)) / n
    if min(dev.shape) <= _GRAM_LIMIT:
        gram = dev.T @ dev if dev.shape[1] <= dev.shape[0] else dev @ dev.T
        spread += 2.0 * float((gram * gram).sum()) / (n - 1) ** 2 / (n * (n - 1))
    return math.sqrt(spread)


def attribute(node_grads: NodeGradients) -> Attribution:
    """Which node makes the gradient noisy: the single-sample variance of each node's term."""
    if not isinstance(node_grads, NodeGradients):
        raise GradestError(f"attribute takes the NodeGradients of Graph.per_node(params), got "
                           f"{type(node_grads).__name__}")
    nodes = {k: trace_variance(g) for k, g in node_grads.grads.items()}
    whole = trace_variance(node_grads.total)
    stderr = {k: variance_stderr(g) for k, g in node_grads.grads.items()}
    stderr["total"] = variance_stderr(node_grads.total)
    n = int(node_grads.values.shape[0])
    return Attribution(nodes, whole, whole - sum(nodes.values()), stderr, n)


def align(log_prob: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """log p ``[N, *B]`` as seen by a cost ``[N, *C]``: summed over B past C, or broadcast over C."""
    batch, cost = log_prob.shape[1:], shape[1:]
    if batch[: len(cost)] == cost:
        return log_prob.reshape(*shape, -1).sum(-1)
    if len(batch) < len(cost) and cost[: len(batch)] == batch:
        return log_prob.reshape(*log_prob.shape, *([1] * (len(cost) - len(batch))))
    raise GradestError(
        f"a cost of shape {list(shape)} does not line up with a node of batch shape {list(log_prob.shape)}: "
        "a per-element cost's dimensions must be the leading batch dimensions of the nodes it depends "
        "on (or extend them); sum the cost to one value per particle, shape [N], otherwise"
    )


def leave_one_out(values: torch.Tensor) -> torch.Tensor:
    """b_n = mean of the other particles' values, per element."""
    n = values.shape[0]
    return (values.sum(0) - values) / (n - 1)


class Graph:
    """A stochastic computation graph of N particles, written as ordinary PyTorch code.

    ``with gradest.graph(generator, num_samples=N) as g:``, then ``z = g.sample(name, dist,
    estimator)`` for each node and ``g.cost(name, tensor)`` for each cost, in the order the code
    computes them; afterwards ``g.surrogate()`` (train with its ``backward()``; higher orders with
    ``create_graph=True``) and ``g.per_node(params)`` / :func:`attribute` (diagnostics)::

        with gradest.graph(gen, num_samples=64) as g:
            z1 = g.sample("z1", Bernoulli(logits=a), "score-loo")              # [64]
            z2 = g.sample("z2", Normal(loc + w * z1, scale), "pathwise")       # [64]
            g.sample("z3", Bernoulli(logits=k * z2), "disarm",
                     then=lambda z3: (z3 - 0.5 * z2) ** 2)                     # terminal: its cost
            g.cost("c", (z2 - 1.0) ** 2)
        g.surrogate().backward()
        attribute(g.per_node({"a": a, "loc": loc})).nodes   # {"z1": …, "z3": …, "z2": …, "direct": …}

    By default a node's parents, and a cost's, are every node sampled before it; ``parents=``
    narrows them (``parents=()``: a root), which lowers the variance where the code allows it.
    ``learn=True`` makes building the graph a training step: learned controls (RELAX) take their
    variance step, and annealing schedules of relaxed nodes (:class:`gradest.estimators.Annealing`,
    given as an estimator value kept across steps) advance by one step.
    """

    def __init__(self, generator: torch.Generator, num_samples: int = 1, learn: bool = False) -> None:
        rng.check_generator(generator)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise GradestError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
        self.generator = generator
        self.num_samples = num_samples
        self.learn = bool(learn)
        self.nodes: dict[str, StochasticNode] = {}
        self.costs: dict[str, CostNode] = {}
        self.sealed = False
        #: reparameterized nodes whose samples pass no gradient during a per_node split
        self._blocked: frozenset[str] = frozenset()
        #: (node, marker): the values returned by terminal (then=) nodes carry a marker leaf, so that
        #: counting such a value again — as a cost, or in a later node — is caught, not silently doubled
        self._terminal: list[tuple[str, torch.Tensor]] = []
        #: which samples each tensor was computed from, while the with-block runs (gradest.provenance)
        self._provenance: Provenance | None = None

    def __enter__(self) -> Graph:
        self._provenance = Provenance()
        self._provenance.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sealed = True
        if self._provenance is not None:
            self._provenance.__exit__(*exc)
            self._provenance = None

    @property
    def first_order_only(self) -> list[str]:
        """Nodes whose estimator gives first derivatives only (hook-based callable nodes)."""
        return [k for k, v in self.nodes.items() if v.first_order]

    # building ------------------------------------------------------------------------------

    def _name(self, name: str) -> str:
        if self.sealed:
            raise GradestError("the graph is closed (its with-block ended); add nodes and costs inside it")
        if not isinstance(name, str) or not name or "+" in name or name == "direct":
            raise GradestError(
                f"a node or cost needs a non-empty name without '+' (not 'direct'), got {name!r}")
        if name in self.nodes or name in self.costs:
            raise GradestError(
                f"the name {name!r} is used twice in the graph; give each node and cost its own")
        return name

    def _ancestors(self, parents: Sequence[str] | None) -> frozenset[str]:
        """The declared parents and their ancestors (default: every node so far)."""
        if parents is None:
            return frozenset(self.nodes)
        if isinstance(parents, str):
            parents = (parents,)
        out: set[str] = set()
        for p in parents:
            if p not in self.nodes:
                raise GradestError(
                    f"unknown parent {p!r}; parents must be nodes sampled earlier: "
                    f"{', '.join(self.nodes) or 'none'}"
                )
            if self.nodes[p].kind == "callable":
                raise GradestError(
                    f"node {p!r} is terminal (its downstream cost is its then= callable), so nothing can "
                    "depend on it; move what depends on it into its then=")
            out |= {p} | self.nodes[p].ancestors
        return frozenset(out)

    def sample(self, name: str, dist: Distribution, estimator: str | Estimator = "score",
               parents: Sequence[str] | None = None, batched: bool | None = None,
               then: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Draw node ``name`` from ``dist``: ``[N, *B, *E]`` (with ``then``: its cost ``[N]``).

        estimator: a registered name (``"score"``, ``"score-loo"``, ``"pathwise"``, ``"disarm"``, …)
            or an Estimator value; see the module docstring for what each becomes.
        parents: the nodes ``dist`` depends on (their ancestors are added); default every earlier node.
        batched: whether ``dist`` already carries the particle axis (built from upstream samples);
            default: its batch shape starts with N, an earlier node exists and ``parents`` is not ``()``.
        then: ``fn(z) -> [N] or [N, *C]``, the cost of everything downstream of this node (needed
            by callable nodes, accepted by all): the node becomes terminal, its cost a cost of the
            graph, and the call returns the per-particle cost estimate ``[N]`` — for reading only: it
            is a cost of the graph already, so passing it (or anything computed from it) to
            :meth:`cost` or into a later node's distribution is refused.
        """
        name = self._name(name)
        if not isinstance(dist, Distribution):
            raise GradestError(
                f"node {name!r} needs a torch.distributions.Distribution, got {type(dist).__name__}")
        kind, est = node_estimator(name, estimator)
        label = est.name
        if then is not None and not callable(then):
            raise GradestError(
                f"node {name!r}: then= must be a callable fn(z) -> cost, got {type(then).__name__}")
        if kind == "callable" and then is None:
            raise GradestError(
                f"node {name!r}: {label!r} evaluates the downstream cost at points other than the draw, "
                "which the graph cannot re-run; give it as then=fn (fn(z) -> [N] cost of everything "
                f"downstream of {name!r}), or use 'score-loo' for this node")
        # the same capability checks as a single node's (families, boundaries, moving supports)
        reason = est.applicable(dist)
        if reason is not None:
            raise GradestError(f"node {name!r}: {reason}")
        if est.min_samples > self.num_samples:
            raise GradestError(f"node {name!r}: {label} needs num_samples ≥ {est.min_samples}, got "
                               f"{self.num_samples}")
        self._refuse_terminal(f"node {name!r}", [t for t in vars(unwrap(dist)).values()
                                                if isinstance(t, torch.Tensor)])
        ancestors = self._ancestors(parents)
        # a then= cost may close over any earlier sample (parents= names what dist depends on, not
        # what fn uses): every earlier node is upstream of it
        then_upstream = ancestors | frozenset(self.nodes)
        batched = self._batched(f"node {name!r}", dist, parents, ancestors, batched)
        if kind == "callable":
            return self._callable(name, dist, est, batched, ancestors, then, then_upstream)
        if kind == "score":
            value = self._draw(name, dist, batched, False, est)
            baseline = est.baseline
            node = StochasticNode(name, label, value, dist.log_prob(value), ancestors, "score",
                                  float(baseline.value) if isinstance(baseline, Constant) else None,
                                  isinstance(baseline, LeaveOneOut))
        else:
            value = self._reparameterized(name, dist, est, batched)
            node = StochasticNode(name, label, value, None, ancestors, "reparameterized")
            if value.requires_grad:  # the per-node split blocks the gradient into this sample
                value.register_hook(self._gate(name))
        self.nodes[name] = node
        self._mark(name, value)
        if then is None:
            return value
        out = self._then(name, then, value)
        self.costs[name] = CostNode(name, out, then_upstream | {name})
        return self._terminal_value(name, self._per_particle(out.detach()))

    def _origin(self, what: str, value: object, parents: Sequence[str] | None,
                ancestors: frozenset[str]) -> frozenset[str] | None:
        """The nodes ``value`` was computed from (None outside a with-block, where nothing is
        followed); refuses a dependence that ``parents=`` leaves out (its score term would be lost)."""
        if self._provenance is None:
            return None
        origin = self._provenance.of(value)
        missing = origin - ancestors
        if parents is not None and missing:
            raise GradestError(
                f"{what} is computed from the samples of {', '.join(sorted(missing))}, which parents= "
                f"({', '.join(parents) if not isinstance(parents, str) else parents} and their ancestors) "
                "leaves out, so their learning signal would miss it; add them to parents=, or leave "
                "parents= out (every earlier node)")
        return origin

    def _batched(self, what: str, dist: Distribution, parents: Sequence[str] | None,
                 ancestors: frozenset[str], batched: bool | None) -> bool:
        """Whether ``dist`` carries the particle axis: by provenance (its parameters computed from
        earlier samples), never by its shape; an explicit ``batched`` is checked against it."""
        n = self.num_samples
        origin = self._origin(what, dist, parents, ancestors)
        if batched is None:
            if origin is None:  # nothing followed: refuse to guess where the shape is ambiguous
                if self.nodes and parents != () and dist.batch_shape[:1] == (n,):
                    raise GradestError(
                        f"{what}: its batch shape starts with N = {n}, and outside a with-block the graph "
                        "cannot tell a per-particle distribution from a batch of size N; say which with "
                        "batched=True (built from upstream samples) or batched=False, or build the graph "
                        "in `with gradest.graph(...) as g:`")
                batched = False
            else:
                batched = bool(origin)
        elif origin and not batched:
            raise GradestError(
                f"{what}: batched=False, but its parameters are computed from the samples of "
                f"{', '.join(sorted(origin))}, so it is one distribution per particle; drop batched=")
        if batched and dist.batch_shape[:1] != (n,):
            if not origin:
                raise GradestError(f"{what}: batched=True needs a batch shape starting with N = {n}, got "
                                   f"{list(dist.batch_shape)}")
            raise GradestError(
                f"{what}: its parameters are computed from the samples of {', '.join(sorted(origin))}, so "
                f"its batch shape must start with the particle axis N = {n}, got {list(dist.batch_shape)} "
                "(a sum or mean over dim 0 mixes the particles; reduce over negative dims)")
        return batched

    def _mark(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if self._provenance is not None:
            self._provenance.mark(value, name)
        return value

    def _terminal_value(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` (detached, [N]) plus a zero marker leaf of node ``name``: same numbers, traceable."""
        marker = torch.zeros((), dtype=value.dtype, device=value.device, requires_grad=True)
        self._terminal.append((name, marker))
        return self._mark(name, value + marker)

    def _refuse_terminal(self, what: str, tensors: Sequence[torch.Tensor]) -> None:
        """Refuse tensors computed from a terminal node's returned cost (it is a cost already)."""
        if not self._terminal:
            return
        markers = [m for _, m in self._terminal]
        for t in tensors:
            if t.requires_grad:
                hits = _graph_reaches(t, markers) if t.grad_fn is not None else \
                    [i for i, m in enumerate(markers) if m is t]
                if hits:
                    node = self._terminal[hits[0]][0]
                    raise GradestError(
                        f"{what} uses the value returned by node {node!r}, which is already a cost of the "
                        f"graph (its then= cost); counting it again would double its learning signal. "
                        f"Drop that use, or put what depends on {node!r} inside its then=")

    def _gate(self, name: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            return torch.zeros_like(grad) if name in self._blocked else None

        return hook

    def _then(self, name: str, then: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        out = then(z)
        n = self.num_samples
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0 \
                or out.shape[0] != n:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise GradestError(f"node {name!r}: then= must return a floating-point cost [{n}] or [{n}, …] "
                               f"(one per particle), got {got}")
        if not torch.isfinite(out).all():
            raise NonFiniteError(f"node {name!r}: then= returned NaN or inf; check its domain")
        return out

    def _draw(self, name: str, dist: Distribution, batched: bool, reparameterized: bool,
              est: Estimator) -> torch.Tensor:
        shape = () if batched else (self.num_samples,)
        x = rng.sample(dist, shape, self.generator, reparameterized)
        # the estimator's sample-health checks, as for one node (a training step: gradest.health)
        est.healthy(Node(dist, self.num_samples, batched, dist.batch_shape, dist.event_shape, type(dist),
                         {}), x)
        return x

    def _node(self, dist: Distribution, batched: bool) -> Node:
        """The node as an estimator's hook sees it (batch ``[N, *B]`` when ``batched``)."""
        batch = dist.batch_shape[1:] if batched else dist.batch_shape
        return Node(dist, self.num_samples, batched, batch, dist.event_shape, type(dist),
                    node_tensors(dist), learn=self.learn)

    def _reparameterized(self, name: str, dist: Distribution, est: Estimator, batched: bool) -> torch.Tensor:
        if isinstance(est, Pathwise):
            return self._draw(name, dist, batched, True, est)
        return est.node_sample(self._node(dist, batched), self.generator)

    def _callable(self, name: str, dist: Distribution, est: Estimator, batched: bool,
                  ancestors: frozenset[str], then: Callable[[torch.Tensor], torch.Tensor],
                  upstream: frozenset[str]) -> torch.Tensor:
        """A terminal node: its estimator's hook on ``then``; the cost's upstream nodes ``upstream``."""
        n = self.num_samples
        if isinstance(est, Enumerate):
            value, own, direct = self._enumerated(name, dist, est, batched, then)
            self.nodes[name] = StochasticNode(name, est.name, None, None, ancestors, "callable")
            self.costs[name] = CostNode(name, value, upstream, own, direct)
            return self._terminal_value(name, value.detach())
        # the hook runs on a copy of the node with one row of the family's tensors per particle (detached
        # leaves): ∂S/∂(row n) is particle n's estimate whatever the hook puts in its carrier S
        family = node_tensors(dist)
        rows = {k: (v if batched else v.expand(n, *v.shape)).detach().clone() for k, v in family.items()}
        rows = {k: v.requires_grad_(True) if v.is_floating_point() else v for k, v in rows.items()}
        copy = rebuild(name, dist, rows)
        like = next(iter(rows.values()))
        node = Node(copy, n, True, copy.batch_shape[1:], copy.event_shape, type(dist), rows, learn=self.learn)
        # tag_n = 1: S is linear in each particle's cost, so ∂S/∂tag_n is particle n's share of S
        tag = torch.ones(n, dtype=like.dtype, device=like.device, requires_grad=True)

        def tagged(x: torch.Tensor) -> torch.Tensor:
            out = self._then(name, then, x)
            return out * tag.reshape(n, *([1] * (out.dim() - 1))).to(out.dtype)

        # the then= cost's contract probed as a single node's (gradest.contract): mixing refused
        cost = BoundCost(tagged, (), {}, n, node.batch_shape, estimator=est.name,
                         separable=est.capabilities.separable)
        with torch.enable_grad():
            terms = est.terms(cost, node, self.generator)
            carrier = terms.carrier
            live_carrier = isinstance(carrier, torch.Tensor) and carrier.requires_grad
            # ∂S/∂tag keeps its graph (f's direct use of θ and of upstream samples); the rows' gradients
            # are the node's explicit estimate ĝ_n, detached as for one node
            direct = torch.autograd.grad(carrier, tag, create_graph=True, retain_graph=True,
                                         allow_unused=True, materialize_grads=True)[0] if live_carrier \
                else like.new_zeros(n)
            grads = terms.gradients([v for v in rows.values() if v.requires_grad])
        own = like.new_zeros(n)
        for k, g in zip([k for k, v in rows.items() if v.requires_grad], grads, strict=True):
            phi = family[k]
            if phi.requires_grad:
                own = own + (phi * g.detach()).reshape(n, -1).sum(1)  # ∂/∂φ_n: ĝ_n, the node's estimate
        values = terms.values.detach().to(like.dtype)
        # the hook's ĝ is detached: its derivative is not ∂ĝ/∂θ, so differentiating twice through
        # this node is refused (the per-node Jacobian's double backward is a first-order quantity)
        own, direct = _FirstOrderOnly.apply(own, name), _FirstOrderOnly.apply(direct, name)
        live = values + (own - own.detach()) + (direct - direct.detach())  # value: the estimate
        self.nodes[name] = StochasticNode(name, est.name, None, None, ancestors, "callable", first_order=True)
        self.costs[name] = CostNode(name, live, upstream, own, direct)
        return self._terminal_value(name, values)

    def _enumerated(self, name: str, dist: Distribution, est: Enumerate, batched: bool,
                    then: Callable[[torch.Tensor], torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Σ_z p(z) fn(z) per particle (live, every order), and its split: through p, through fn."""
        family = unwrap(dist)
        size, kind = _support(name, dist)
        batch = family.batch_shape[1:] if batched else family.batch_shape  # (under Independent too)
        variables = batch.numel()
        count = size**variables
        if count > est.max_support:
            raise GradestError(
                f"node {name!r}: enumerate sums over the {size}^{variables} = {count} values of the node, "
                f"more than max_support = {est.max_support}; use 'disarm' (Bernoulli), 'unordered-set' "
                "(Categorical) or 'score-loo' for this node")
        n = self.num_samples
        like = family.logits
        value = own = direct = 0.0
        for m in range(count):  # the support's points, not the samples
            digits = torch.tensor([m // size**v % size for v in range(variables)], device=like.device)
            x = digits.reshape(batch).expand(n, *batch)
            if kind is Bernoulli:
                x = x.to(like.dtype)
            elif kind is OneHotCategorical:
                x = F.one_hot(x, size).to(like.dtype)
            p = self._per_particle_any(dist.log_prob(x if batched else x[0]), batched).exp()  # [N]
            fx = self._per_particle(self._then(name, then, x))
            value = value + p * fx
            own = own + p * fx.detach()
            direct = direct + p.detach() * fx
        return value, own, direct

    def _per_particle_any(self, t: torch.Tensor, batched: bool) -> torch.Tensor:
        """Σ over batch dims: ``[N, *B] -> [N]`` (batched) or ``[*B] -> [N]`` (shared by the particles)."""
        if batched:
            return self._per_particle(t)
        return t.sum().expand(self.num_samples)

    def cost(self, name: str, value: torch.Tensor, parents: Sequence[str] | None = None) -> torch.Tensor:
        """Add a cost ``[N]`` or ``[N, *C]``; parents: the nodes it depends on (default: all so far)."""
        name = self._name(name)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise GradestError(f"cost {name!r} must be a floating-point tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != self.num_samples:
            raise GradestError(
                f"cost {name!r} must have one value per particle along its leading axis, "
                f"[{self.num_samples}] or [{self.num_samples}, …], got {list(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"cost {name!r} has NaN or inf values; check its domain")
        self._refuse_terminal(f"cost {name!r}", [value])
        ancestors = self._ancestors(parents)
        if self._origin(f"cost {name!r}", value, parents, ancestors) == frozenset():
            raise GradestError(
                f"cost {name!r} is computed from no sampled node (shape {list(value.shape)}), so it has no "
                "particle axis, whatever its shape: a term of the parameters alone is not a cost of the "
                "graph; add it to the loss outside it (g.surrogate() + term), or compute the cost from "
                "the samples g.sample returned")
        self.costs[name] = CostNode(name, value, ancestors)
        return value

    # the estimator -------------------------------------------------------------------------

    def _score_nodes(self, names: frozenset[str]) -> list[StochasticNode]:
        return [self.nodes[k] for k in self.nodes if k in names and self.nodes[k].log_prob is not None]

    def _tau(self, names: frozenset[str], shape: torch.Size) -> torch.Tensor | float:
        out: torch.Tensor | float = 0.0
        for node in self._score_nodes(names):
            out = out + align(node.log_prob, shape)
        return out

    def _baselines(self) -> list[tuple[StochasticNode, torch.Size, torch.Tensor]]:
        """(w, shape, b_w) for every score node w with a baseline (b detached, aligned to ``shape``):
        score-loo, one per cost c downstream of w (the other particles' c); score-const, one of [N]."""
        out = []
        for node in self.nodes.values():
            if node.baseline is not None:
                like = node.log_prob
                b = torch.full((self.num_samples,), node.baseline, dtype=like.dtype, device=like.device)
                out.append((node, torch.Size((self.num_samples,)), b))
            if not node.loo:
                continue
            for c in self.costs.values():
                if node.name in c.ancestors:
                    with torch.no_grad():  # a constant of the math: the other particles' costs
                        out.append((node, c.value.shape, leave_one_out(c.value.detach())))
        return out

    def _per_particle(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.num_samples, -1).sum(1)

    def rows(self) -> torch.Tensor:
        """s_n ``[N]``: the surrogate is their mean (the DiCE form above, per particle)."""
        if not self.costs:
            raise GradestError("the graph has no cost; add one with g.cost(name, tensor)")
        total: torch.Tensor | float = 0.0
        for c in self.costs.values():
            tau = self._tau(c.ancestors, c.value.shape)
            term = c.value * magic_box(tau) if isinstance(tau, torch.Tensor) else c.value
            total = total + self._per_particle(term)
        for w, shape, b in self._baselines():
            before = self._tau(self.nodes[w.name].ancestors, shape)
            before = before if isinstance(before, torch.Tensor) else torch.zeros(shape, dtype=b.dtype,
                                                                                  device=b.device)
            after = before + align(w.log_prob, shape)
            total = total + self._per_particle(b * (magic_box(before) - magic_box(after)))
        return total

    def surrogate(self) -> torch.Tensor:
        """Scalar: value = MC estimate of E[Σ costs]; gradient of every order = the DiCE estimate."""
        return self.rows().mean()

    def values(self) -> torch.Tensor:
        """``[N]`` total cost per particle (detached)."""
        return sum(self._per_particle(c.value.detach()) for c in self.costs.values())

    # attribution ---------------------------------------------------------------------------

    def groups(self) -> dict[str, torch.Tensor]:
        """Node -> ``[N]`` rows whose first derivatives are the node's own term, per particle
        (score and callable nodes), and ``"costs"``: the rows of the costs' own gradient, which
        :meth:`per_node` splits among the reparameterized nodes and ``"direct"``."""
        if not self.costs:
            raise GradestError("the graph has no cost; add one with g.cost(name, tensor)")
        baselines: dict[str, list[tuple[torch.Size, torch.Tensor]]] = {}
        for w, shape, b in self._baselines():
            baselines.setdefault(w.name, []).append((shape, b))
        out: dict[str, torch.Tensor] = {}
        for name, node in self.nodes.items():
            if node.log_prob is not None:
                row: torch.Tensor | float = 0.0
                for c in self.costs.values():
                    if name in c.ancestors:
                        row = row + self._per_particle(c.value.detach() * align(node.log_prob, c.value.shape))
                for shape, b in baselines.get(name, []):
                    row = row - self._per_particle(b * align(node.log_prob, shape))
                if isinstance(row, torch.Tensor):
                    out[name] = row
            elif node.kind == "callable":
                out[name] = self.costs[name].own
        out["costs"] = sum(self._per_particle(c.value if c.direct is None else c.direct)
                           for c in self.costs.values())
        return out

    def _split(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], mode: str | None,
               reduce: bool) -> dict[str, dict[str, torch.Tensor]]:
        """group -> param name -> ``[N, *shape]`` single-particle gradients (``[1, *shape]``, their
        mean, with ``reduce``)."""
        if not isinstance(params, Mapping):
            params = {f"param{i}": p for i, p in enumerate(params)}
        if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params.values()):
            raise GradestError("per_node needs parameters: a mapping name -> tensor with requires_grad=True")
        groups = self.groups()
        costs = groups.pop("costs")
        names, targets = list(params), list(params.values())
        width = 1 if reduce else self.num_samples

        def shaped(rows: torch.Tensor) -> torch.Tensor:
            return rows.mean(0, keepdim=True) if reduce else rows.reshape(width)

        out: dict[str, dict[str, torch.Tensor]] = {}
        if groups:
            jac = jacobian_rows(torch.cat([shaped(r) for r in groups.values()]), targets, mode)
            for i, group in enumerate(groups):
                out[group] = {k: j[i * width:(i + 1) * width].detach()
                              for k, j in zip(names, jac, strict=True)}
        # the costs' gradient with the first k reparameterized nodes blocked, k = 0 … K: D_k
        gated = [k for k, v in self.nodes.items() if v.kind == "reparameterized"]
        blocked = []
        for k in range(len(gated) + 1):
            self._blocked = frozenset(gated[:k])
            try:
                jac = jacobian_rows(shaped(costs), targets, mode)
            finally:
                self._blocked = frozenset()
            blocked.append({name: j.detach() for name, j in zip(names, jac, strict=True)})
        for i, node in enumerate(gated):  # paths that start at θ's use in node i: D_i − D_{i+1}
            out[node] = {k: blocked[i][k] - blocked[i + 1][k] for k in names}
        out["direct"] = blocked[-1]
        return {k: out[k] for k in [*self.nodes, "direct"] if k in out}  # in the order of sampling

    def per_node(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                 mode: str | None = None) -> NodeGradients:
        """Single-particle gradients of each group with respect to ``params``, batched.

        ``mode``: how :func:`jacobian_rows` differentiates (default: forward for fewer parameter
        coordinates than rows, else reverse). The graph is retained, so ``surrogate().backward()``
        still works afterwards.
        """
        out = self._split(params, mode, reduce=False)
        names = list(next(iter(out.values())))
        total = {k: sum(out[g][k] for g in out) for k in names}
        return NodeGradients(out, total, self.values())

    def node_means(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
                   ) -> dict[str, dict[str, torch.Tensor]]:
        """group -> param name -> the group's share of ∇ surrogate (the mean over the particles):
        one backward pass per group rather than N (what :class:`gradest.GradientMonitor` records)."""
        return {g: {k: v[0] for k, v in d.items()} for g, d in self._split(params, "reverse", True).items()}

    def __repr__(self) -> str:
        return f"Graph(num_samples={self.num_samples}, nodes={list(self.nodes)}, costs={list(self.costs)})"


#: > 0 while jacobian_rows runs (a plain counter, not a context variable: autograd may run backward
#: functions on its device threads, which do not see the caller's context)
_JACOBIAN_DEPTH = [0]


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses to build a graph (``create_graph=True``, a second derivative),
    except inside :func:`jacobian_rows`, whose backward-through-backward yields first derivatives."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, name: str) -> torch.Tensor:
        ctx.node = name
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled() and not _JACOBIAN_DEPTH[0]:
            raise GradestError(
                f"node {ctx.node!r} gives first derivatives only (its estimator's hook returns a detached "
                "estimate), so a second derivative through it would be wrong; differentiate once "
                "(no create_graph=True), or use 'enumerate' or 'score-loo' for that node")
        return grad, None


def jacobian_rows(rows: torch.Tensor, targets: list[torch.Tensor], mode: str | None = None
                  ) -> list[torch.Tensor]:
    """∂rows_r/∂target for every row r: ``[R, *target.shape]`` each.

    ``"reverse"``: one backward pass per row, batched (``is_grads_batched``), O(R) passes;
    ``"forward"``: one Jacobian-vector product per parameter coordinate, J e_j = ∂⟨J^T u, e_j⟩/∂u
    (a backward pass through the backward pass, linear in u), O(Σ numel) passes. Default: the one
    with fewer passes. Either way the passes run in chunks of ``CHUNK``.
    """
    _JACOBIAN_DEPTH[0] += 1
    try:
        return _jacobian_rows(rows, targets, mode)
    finally:
        _JACOBIAN_DEPTH[0] -= 1


def _jacobian_rows(rows: torch.Tensor, targets: list[torch.Tensor], mode: str | None) -> list[torch.Tensor]:
    sizes = [t.numel() for t in targets]
    r, d = rows.shape[0], sum(sizes)
    if not rows.requires_grad:  # nothing in the rows depends on the targets
        return [torch.zeros(r, *t.shape, dtype=t.dtype, device=t.device) for t in targets]
    mode = mode or ("forward" if d < r else "reverse")
    if mode == "forward":
        u = torch.zeros_like(rows, requires_grad=True)
        vjp = torch.autograd.grad(rows, targets, u, retain_graph=True, create_graph=True, allow_unused=True)
        linear = [(g, t) for g, t in zip(vjp, targets, strict=True) if g is not None and g.requires_grad]
        columns = []
        for start in range(0, d, CHUNK):
            stop = min(start + CHUNK, d)
            eye = torch.zeros(stop - start, d, dtype=rows.dtype, device=rows.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            if not linear:
                columns.append(torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device))
                continue
            tangents = dict(zip((id(t) for t in targets), eye.split(sizes, dim=1), strict=True))
            (jv,) = torch.autograd.grad(
                [g for g, _ in linear], u,
                [tangents[id(t)].reshape(stop - start, *t.shape) for _, t in linear],
                retain_graph=True, allow_unused=True, is_grads_batched=True)
            columns.append(torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device)
                           if jv is None else jv)
        jac = torch.cat(columns).T  # [R, d]
        return [part.reshape(r, *t.shape) for part, t in zip(jac.split(sizes, dim=1), targets, strict=True)]
    if mode != "reverse":
        raise GradestError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    parts: list[list[torch.Tensor]] = [[] for _ in targets]
    for start in range(0, r, CHUNK):
        stop = min(start + CHUNK, r)
        eye = torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        grads = torch.autograd.grad(rows, targets, eye, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
        for k, (g, t) in enumerate(zip(grads, targets, strict=True)):
            parts[k].append(torch.zeros(stop - start, *t.shape, dtype=t.dtype, device=t.device)
                            if g is None else g)
    return [torch.cat(p) for p in parts]


def graph(generator: torch.Generator, num_samples: int = 1, learn: bool = False) -> Graph:
    """A :class:`Graph` of ``num_samples`` particles drawing its noise from ``generator``."""
    return Graph(generator, num_samples, learn)


# ── the attribution report ─────────────────────────────────────────────────────────────────


def attribution_section(att: Attribution, title: str = "Which node makes the gradient noisy") -> str:
    """An HTML section: the per-node variance bars (± 2 se), a table and the sentence they support."""
    from gradest import report as html
    from gradest.lab.plots import attribution_figure

    stderr = att.stderr or {}
    png = html.png_bytes(attribution_figure(att.nodes, stderr, att.total, stderr.get("total")))
    shares = att.shares()
    rows = [[k, v, stderr.get(k), shares[k]] for k, v in att.nodes.items()]
    rows.append(["covariance (total − Σ nodes)", att.covariance, None, None])
    rows.append(["total", att.total, stderr.get("total"), None])
    noisy = max(att.nodes, key=att.nodes.get) if att.nodes else None
    sentence = "" if noisy is None else (
        f"{noisy} contributes {shares[noisy]:.0%} of the summed per-node variance "
        f"({att.nodes[noisy]:.4g} ± {stderr.get(noisy, math.nan):.2g}), from "
        f"{att.num_samples or '?'} single-particle gradients.")
    return html.section(
        title,
        html.paragraph("Single-sample gradient variance (trace of the covariance, summed over the "
                       "parameters) of each node's term of the surrogate's gradient: a score node's "
                       "learning signal times its score, a callable node's estimate, a pathwise node's "
                       "share of the costs' gradient (the paths where θ enters through it), and θ's "
                       "direct use in the costs. ± is one standard error."),
        html.figure(png, "Per-node single-sample variance, ± 2 standard errors; the last bar is the whole "
                         "gradient's (the nodes' terms covary)."),
        html.table(["node", "variance", "± se", "share"], rows),
        html.paragraph(sentence) if sentence else "",
    )


def report(source: Graph | NodeGradients | Attribution, path: str | os.PathLike | None = None,
           params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
           title: str = "Per-node gradient variance") -> str:
    """The attribution as a self-contained HTML page (written atomically to ``path`` if given).

    source: a built :class:`Graph` (then ``params`` are differentiated), its :meth:`Graph.per_node`
    result, or an :func:`attribute` record.
    """
    from gradest import report as html

    if isinstance(source, Graph):
        if params is None:
            raise GradestError("report(graph) needs params: the tensors to attribute the gradient of")
        source = source.per_node(params)
    if isinstance(source, NodeGradients):
        source = attribute(source)
    if not isinstance(source, Attribution):
        raise GradestError(f"report takes a Graph, NodeGradients or Attribution, got {type(source).__name__}")
    page = html.page(title, attribution_section(source))
    if path is not None:
        from gradest.io import write_atomic

        write_atomic(path, page)
    return page


# ── the oracle: exact expectation by enumeration ────────────────────────────────────────────


@dataclass
class _Support:
    size: int  # values per variable
    shape: torch.Size  # the node's batch shape B, per particle
    kind: type[Distribution]
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.count = self.size ** self.shape.numel()


def _support(name: str, dist: Distribution) -> tuple[int, type[Distribution]]:
    family = unwrap(dist)
    if isinstance(family, Bernoulli):
        return 2, Bernoulli
    if isinstance(family, Categorical | OneHotCategorical):
        return family.probs.shape[-1], type(family)
    raise GradestError(
        f"enumerate_graph sums over Bernoulli, Categorical and OneHotCategorical nodes; node {name!r} "
        f"is {type(family).__name__}: check it by Monte Carlo against a closed form instead"
    )


class _Discovery(Graph):
    """One particle, to learn each node's family and batch shape."""

    def __init__(self) -> None:
        super().__init__(rng.make_generator(0), 1)
        self.supports: dict[str, _Support] = {}

    def sample(self, name, dist, estimator="score", parents=None, batched=None, then=None):
        return super().sample(name, dist, "score", parents, batched, then)

    def _draw(self, name, dist, batched, reparameterized, est):
        size, kind = _support(name, dist)
        x = rng.sample(dist, () if batched else (1,), self.generator, False)
        batch = x.shape[1: x.dim() - len(dist.event_shape)]
        self.supports[name] = _Support(size, batch, kind)
        return x


class _Enumeration(Graph):
    """Every joint value of the nodes, one per particle (mixed radix over the nodes' variables)."""

    def __init__(self, supports: dict[str, _Support]) -> None:
        total = math.prod(s.count for s in supports.values())
        super().__init__(rng.make_generator(0), total)
        self.supports = supports
        self.strides, stride = {}, 1
        for name, s in supports.items():
            self.strides[name] = stride
            stride *= s.count

    def sample(self, name, dist, estimator="score", parents=None, batched=None, then=None):
        return super().sample(name, dist, "score", parents, batched, then)

    def _draw(self, name, dist, batched, reparameterized, est):
        s = self.supports.get(name)
        if s is None or _support(name, dist)[0] != s.size:
            raise GradestError(f"the model's node {name!r} changed between two runs; enumeration needs a "
                               "fixed structure")
        index = torch.arange(self.num_samples) // self.strides[name] % s.count
        digits = index.unsqueeze(-1) // s.size ** torch.arange(s.shape.numel()) % s.size  # [M, V]
        x = digits.reshape(self.num_samples, *s.shape)
        like = unwrap(dist).probs
        if s.kind is Bernoulli:
            return x.to(like.dtype).to(like.device)
        x = x.to(like.device)
        return F.one_hot(x, s.size).to(like.dtype) if s.kind is OneHotCategorical else x


def enumerate_graph(model: Callable[[Graph], object], max_support: int = MAX_SUPPORT) -> torch.Tensor:
    """Exact L(θ) = Σ_z p(z; θ) Σ_c c(z; θ) of the graph ``model(g)`` builds, differentiable.

    ``model`` calls ``g.sample`` and ``g.cost`` as it would on a Monte Carlo graph; it runs twice
    (once to learn the nodes, once on every joint value). The result's autograd gradients of every
    order are the exact ones: the oracle for :meth:`Graph.surrogate`.
    """
    if not callable(model):
        raise GradestError(f"enumerate_graph takes a function model(g) that builds the graph, got "
                           f"{type(model).__name__}")
    with torch.no_grad():
        with _Discovery() as first:
            model(first)
    size = math.prod(s.count for s in first.supports.values())
    if size > max_support:
        raise GradestError(
            f"the graph's nodes take {size} joint values, more than max_support = {max_support}; "
            "enumerate a smaller graph, or check this one by Monte Carlo"
        )
    with _Enumeration(first.supports) as g:
        model(g)
    log_weight: torch.Tensor | float = 0.0
    for node in g.nodes.values():
        log_weight = log_weight + g._per_particle(node.log_prob)
    total = sum(g._per_particle(c.value) for c in g.costs.values())
    return (torch.exp(log_weight) * total).sum()


# ``gradest.graph`` is this module's ``graph`` function once the package has imported it, so the
# report is reachable under that spelling too: gradest.graph.report(g, "attribution.html", params)
graph.report = report  # type: ignore[attr-defined]
