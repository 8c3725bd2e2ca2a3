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
``score-loo`` estimator b_w,c,n is the mean of c over the other N − 1 particles (per cost element).

Each of the N particles is one independent run of the whole graph, along a leading axis: a root
node's distribution (batch ``[*B]``) is drawn ``[N, *B, *E]``; a node whose distribution was built
from upstream samples already has batch ``[N, *B]`` and is drawn once per particle. A cost is
``[N]`` (one per particle) or ``[N, *C]`` (per element: element b may depend only on element b of
the nodes whose batch shape starts with C, as for the single-node estimators). All noise comes
from the caller's generator (:func:`gradest.rng.sample`).

Per-node variance attribution: the first derivative of S for particle n splits exactly into one
term per score-function node, (Σ_{c ↓ i} (c_n − b_i,c,n)) ∇ log p_i(z_i,n), plus the costs' own
gradient ∇ Σ_c c_n along the reparameterized samples and their direct dependence on θ (one group,
named after the pathwise nodes, e.g. ``"z2"`` or ``"z2+z4"``, or ``"direct"``: a path may cross
several pathwise nodes, so they are not separated). :meth:`Graph.per_node` returns these
single-particle gradients ``[N, *param.shape]`` per group; :func:`attribute` their single-sample
variances (trace of the covariance), which answers "which node makes my gradient noisy".

Supported per node: ``"score"`` (REINFORCE), ``"score-loo"`` (leave-one-out baseline, N ≥ 2), any
family with ``log_prob`` and a support that does not move with θ; ``"pathwise"``, families with
``rsample``. The registry's other estimators (ARM/DisARM, relaxations, REBAR/RELAX, measure-valued,
control variates) are single-node estimators and are not accepted as graph nodes.

:func:`enumerate_graph` is the oracle: the exact L(θ) of a graph of Bernoulli, Categorical and
OneHotCategorical nodes as a differentiable sum over every joint value (gradients of every order).

References: Schulman, Heess, Weber & Abbeel (2015), "Gradient estimation using stochastic
computation graphs", NeurIPS; Foerster et al. (2018), "DiCE: the infinitely differentiable Monte
Carlo estimator", ICML; Mao et al. (2019), "A baseline for any order gradient estimation in
stochastic computation graphs", ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.base import support_moves_with_parameters, unwrap

ESTIMATORS = ("score", "score-loo", "pathwise")
#: bound on the number of joint values :func:`enumerate_graph` sums over
MAX_SUPPORT = 2**16
#: rows of the identity handed to one batched backward pass in :meth:`Graph.per_node`
CHUNK = 512


def magic_box(tau: torch.Tensor) -> torch.Tensor:
    """𝔐(τ) = exp(τ − τ.detach()): value 1, gradient 𝔐(τ)∇τ, to every order."""
    return torch.exp(tau - tau.detach())  # detach: the value is fixed at 1, the derivatives are not


@dataclass
class StochasticNode:
    """One sampled node: its draw ``value [N, *B, *E]``, log p ``[N, *B]`` (score nodes) and parents."""

    name: str
    estimator: str
    value: torch.Tensor
    log_prob: torch.Tensor | None
    ancestors: frozenset[str]


@dataclass
class CostNode:
    name: str
    value: torch.Tensor
    ancestors: frozenset[str]


class NodeGradients(NamedTuple):
    """Single-particle first-order gradients, split by node.

    grads: group -> param name -> ``[N, *param.shape]``; a group is a score-function node, or the
        costs' own gradient (named after the pathwise nodes, or ``"direct"``).
    total: param name -> ``[N, *param.shape]``, the sum of the groups; its mean is ∇ surrogate.
    values: ``[N]`` total cost per particle.
    """

    grads: dict[str, dict[str, torch.Tensor]]
    total: dict[str, torch.Tensor]
    values: torch.Tensor


class Attribution(NamedTuple):
    """Single-sample gradient variances (trace of the covariance, summed over the parameters).

    nodes: group -> variance of its term alone; total: variance of the whole single-sample gradient;
    covariance: total − Σ nodes (twice the summed covariances between the groups' terms).
    """

    nodes: dict[str, float]
    total: float
    covariance: float

    def shares(self) -> dict[str, float]:
        """Each group's variance as a fraction of the sum of the groups' variances."""
        whole = sum(self.nodes.values())
        return {k: (v / whole if whole > 0 else 0.0) for k, v in self.nodes.items()}


def trace_variance(grads: Mapping[str, torch.Tensor]) -> float:
    """Σ over parameters and coordinates of the unbiased variance over the leading axis."""
    return float(sum(g.reshape(g.shape[0], -1).var(0, unbiased=True).sum() for g in grads.values()))


def attribute(node_grads: NodeGradients) -> Attribution:
    """Which node makes the gradient noisy: the single-sample variance of each node's term."""
    nodes = {k: trace_variance(g) for k, g in node_grads.grads.items()}
    whole = trace_variance(node_grads.total)
    return Attribution(nodes, whole, whole - sum(nodes.values()))


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
            g.cost("c", (z2 - 1.0) ** 2)
        g.surrogate().backward()
        attribute(g.per_node({"a": a, "loc": loc})).nodes   # {"z1": …, "z2": …}; from gradest.graph

    By default a node's parents, and a cost's, are every node sampled before it; ``parents=``
    narrows them (``parents=()``: a root), which lowers the variance where the code allows it.
    """

    def __init__(self, generator: torch.Generator, num_samples: int = 1) -> None:
        rng.check_generator(generator)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise GradestError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
        self.generator = generator
        self.num_samples = num_samples
        self.nodes: dict[str, StochasticNode] = {}
        self.costs: dict[str, CostNode] = {}
        self.sealed = False

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sealed = True

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
            out |= {p} | self.nodes[p].ancestors
        return frozenset(out)

    def sample(self, name: str, dist: Distribution, estimator: str = "score",
               parents: Sequence[str] | None = None, batched: bool | None = None) -> torch.Tensor:
        """Draw node ``name`` from ``dist``: ``[N, *B, *E]``.

        estimator: ``"score"``, ``"score-loo"`` or ``"pathwise"``.
        parents: the nodes ``dist`` depends on (their ancestors are added); default every earlier node.
        batched: whether ``dist`` already carries the particle axis (built from upstream samples);
            default: its batch shape starts with N and an earlier node exists.
        """
        name = self._name(name)
        if not isinstance(dist, Distribution):
            raise GradestError(
                f"node {name!r} needs a torch.distributions.Distribution, got {type(dist).__name__}")
        if estimator not in ESTIMATORS:
            raise GradestError(
                f"node {name!r}: unknown graph estimator {estimator!r}; "
                f"choose one of {', '.join(ESTIMATORS)} "
                "(single-node estimators such as 'disarm' run through gradest.get_estimator instead)"
            )
        family = type(unwrap(dist)).__name__
        if estimator == "pathwise" and not dist.has_rsample:
            raise GradestError(
                f"node {name!r}: pathwise needs a reparameterizable family, and {family} has no rsample; "
                "use 'score' or 'score-loo' for this node"
            )
        if estimator != "pathwise" and support_moves_with_parameters(dist):
            raise GradestError(
                f"node {name!r}: the support of {family} moves with its parameters, so the score function "
                "would miss the boundary terms; use 'pathwise' for this node"
            )
        if estimator == "score-loo" and self.num_samples < 2:
            raise GradestError(f"node {name!r}: score-loo needs num_samples ≥ 2, got {self.num_samples}")
        ancestors = self._ancestors(parents)
        if batched is None:
            batched = bool(self.nodes) and dist.batch_shape[:1] == (self.num_samples,)
        if batched and dist.batch_shape[:1] != (self.num_samples,):
            raise GradestError(
                f"node {name!r}: batched=True needs a batch shape starting with N = {self.num_samples}, "
                f"got {list(dist.batch_shape)}"
            )
        value = self._draw(name, dist, batched, estimator == "pathwise")
        log_prob = None
        if estimator != "pathwise":
            log_prob = dist.log_prob(value)  # [N, *B]
        self.nodes[name] = StochasticNode(name, estimator, value, log_prob, ancestors)
        return value

    def _draw(self, name: str, dist: Distribution, batched: bool, reparameterized: bool) -> torch.Tensor:
        shape = () if batched else (self.num_samples,)
        return rng.sample(dist, shape, self.generator, reparameterized)

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
        self.costs[name] = CostNode(name, value, self._ancestors(parents))
        return value

    # the estimator -------------------------------------------------------------------------

    def _score_nodes(self, names: frozenset[str]) -> list[StochasticNode]:
        return [self.nodes[k] for k in self.nodes if k in names and self.nodes[k].log_prob is not None]

    def _tau(self, names: frozenset[str], shape: torch.Size) -> torch.Tensor | float:
        out: torch.Tensor | float = 0.0
        for node in self._score_nodes(names):
            out = out + align(node.log_prob, shape)
        return out

    def _baselines(self) -> list[tuple[StochasticNode, CostNode, torch.Tensor]]:
        """(w, c, b_w,c) for every score-loo node w and cost c downstream of it (b detached)."""
        out = []
        for node in self.nodes.values():
            if node.estimator != "score-loo":
                continue
            for c in self.costs.values():
                if node.name in c.ancestors:
                    with torch.no_grad():  # a constant of the math: the other particles' costs
                        out.append((node, c, leave_one_out(c.value.detach())))
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
        for w, c, b in self._baselines():
            before = self._tau(self.nodes[w.name].ancestors, c.value.shape)
            before = before if isinstance(before, torch.Tensor) else torch.zeros_like(c.value)
            after = before + align(w.log_prob, c.value.shape)
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
        """group -> ``[N]`` rows whose first derivatives split the surrogate's per particle."""
        if not self.costs:
            raise GradestError("the graph has no cost; add one with g.cost(name, tensor)")
        baselines = {(w.name, c.name): b for w, c, b in self._baselines()}
        out: dict[str, torch.Tensor] = {}
        for node in self._score_nodes(frozenset(self.nodes)):
            row: torch.Tensor | float = 0.0
            for c in self.costs.values():
                if node.name in c.ancestors:
                    signal = c.value.detach() - baselines.get((node.name, c.name), 0.0)
                    row = row + self._per_particle(signal * align(node.log_prob, c.value.shape))
            if isinstance(row, torch.Tensor):
                out[node.name] = row
        pathwise = [k for k, v in self.nodes.items() if v.log_prob is None]
        out["+".join(pathwise) or "direct"] = sum(self._per_particle(c.value) for c in self.costs.values())
        return out

    def per_node(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                 mode: str | None = None) -> NodeGradients:
        """Single-particle gradients of each group with respect to ``params``, batched.

        ``mode``: how :func:`jacobian_rows` differentiates (default: forward for fewer parameter
        coordinates than rows, else reverse). The graph is retained, so ``surrogate().backward()``
        still works afterwards.
        """
        if not isinstance(params, Mapping):
            params = {f"param{i}": p for i, p in enumerate(params)}
        if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params.values()):
            raise GradestError("per_node needs parameters: a mapping name -> tensor with requires_grad=True")
        groups = self.groups()
        names, targets = list(params), list(params.values())
        n = self.num_samples
        rows = torch.cat([r.reshape(n) for r in groups.values()])
        jac = jacobian_rows(rows, targets, mode)
        out = {}
        for i, group in enumerate(groups):
            out[group] = {k: j[i * n:(i + 1) * n].detach() for k, j in zip(names, jac, strict=True)}
        total = {k: sum(out[g][k] for g in out) for k in names}
        return NodeGradients(out, total, self.values())

    def __repr__(self) -> str:
        return f"Graph(num_samples={self.num_samples}, nodes={list(self.nodes)}, costs={list(self.costs)})"


def jacobian_rows(rows: torch.Tensor, targets: list[torch.Tensor], mode: str | None = None
                  ) -> list[torch.Tensor]:
    """∂rows_r/∂target for every row r: ``[R, *target.shape]`` each.

    ``"reverse"``: one backward pass per row, batched (``is_grads_batched``), O(R) passes;
    ``"forward"``: one Jacobian-vector product per parameter coordinate, J e_j = ∂⟨J^T u, e_j⟩/∂u
    (a backward pass through the backward pass, linear in u), O(Σ numel) passes. Default: the one
    with fewer passes. Either way the passes run in chunks of ``CHUNK``.
    """
    sizes = [t.numel() for t in targets]
    r, d = rows.shape[0], sum(sizes)
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


def graph(generator: torch.Generator, num_samples: int = 1) -> Graph:
    """A :class:`Graph` of ``num_samples`` particles drawing its noise from ``generator``."""
    return Graph(generator, num_samples)


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

    def sample(self, name, dist, estimator="score", parents=None, batched=None):
        return super().sample(name, dist, "score", parents, batched)

    def _draw(self, name, dist, batched, reparameterized):
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

    def sample(self, name, dist, estimator="score", parents=None, batched=None):
        return super().sample(name, dist, "score", parents, batched)

    def _draw(self, name, dist, batched, reparameterized):
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
