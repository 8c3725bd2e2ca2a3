"""The graph as ordinary PyTorch code: ``with gradest.graph(generator, N) as g``, then
``g.sample`` per node and ``g.cost`` per cost (see :mod:`gradest.graph`)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Distribution, OneHotCategorical

from gradest import contract, health, rng
from gradest.batches import couples_samples
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.base import BoundCost, Estimator, Node, _graph_reaches, unwrap
from gradest.estimators.baselines import Constant, LeaveOneOut
from gradest.estimators.enumeration import Enumerate
from gradest.estimators.pathwise import Pathwise
from gradest.graph import attribution, dice, elements
from gradest.graph.jacobian import _FirstOrderOnly
from gradest.graph.records import CostNode, NodeGradients, StochasticNode
from gradest.graph.roles import _support, node_estimator, node_tensors, rebuild
from gradest.provenance import Provenance


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

    #: whether per-element costs become per-element learning signals (not in the exact enumeration,
    #: which sums every cost to its total)
    element_signals = True

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
        #: the zero leaves δ added to score-type draws with batch elements (gradest.graph.elements)
        self._element_leaves: dict[str, torch.Tensor] = {}
        #: score-type nodes with batch elements whose integer draws no derivative can watch
        self._unwatched: set[str] = set()
        #: the zero leaf δ added to every floating draw of a score-type node (the particle check)
        self._leaves: dict[str, torch.Tensor] = {}
        #: contract checks run so far (each draws its probed half from a seed of its own)
        self._checks = 0
        #: score-type nodes of continuous families: their draws' zero leaf, read by the resolution check
        self._resolution_leaves: dict[str, tuple[torch.Tensor, torch.Tensor, str]] = {}

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
            log_prob = dist.log_prob(value)
            if torch.is_grad_enabled():
                if batched:  # built from upstream samples: particle n's density from particle n's alone
                    self._check_particles(f"node {name!r}'s log-density", log_prob, ancestors)
                value = self._watch(name, dist, value, batched, est)
            baseline = est.baseline
            node = StochasticNode(name, label, value, log_prob, ancestors, "score",
                                  float(baseline.value) if isinstance(baseline, Constant) else None,
                                  isinstance(baseline, LeaveOneOut), dist=dist,
                                  health=est.capabilities.health, couples=couples_samples(est))
        else:
            value = self._reparameterized(name, dist, est, batched)
            if batched and torch.is_grad_enabled() and value.is_floating_point():
                self._check_particles(f"node {name!r}'s draw", value, ancestors)
            node = StochasticNode(name, label, value, None, ancestors, "reparameterized",
                                  couples=couples_samples(est))
            if value.requires_grad:  # the per-node split blocks the gradient into this sample
                value.register_hook(self._gate(name))
        self.nodes[name] = node
        self._mark(name, value)
        if then is None:
            return value
        out = self._probed_then(name, then, value, est)
        self.costs[name] = CostNode(name, out, then_upstream | {name})
        return self._terminal_value(name, dice.per_particle(self, out.detach()))

    def _watch(self, name: str, dist: Distribution, value: torch.Tensor, batched: bool,
               est: Estimator) -> torch.Tensor:
        """A score-type node's draws plus one zero leaf δ (same numbers) through which the graph reads
        how the costs depend on them (gradest.graph.elements): each particle's costs on its own draws
        alone (every floating draw), each element's on its own element (a per-element cost weights each
        element by its own log-density), and whether the costs resolve the draws (continuous families:
        contract.resolution_given)."""
        extra = len(dist.batch_shape) - int(batched)
        per_element = est.capabilities.separable and self.element_signals and extra > 0
        if not value.is_floating_point():
            if per_element:  # integer draws carry no derivative
                self._unwatched.add(name)
            return value
        leaf = torch.zeros_like(value, requires_grad=True)
        self._leaves[name] = leaf
        if per_element:
            self._element_leaves[name] = leaf
        if not health.is_discrete(dist):
            self._resolution_leaves[name] = (value.detach(), leaf, est.name)
        return value + leaf

    def _check_particles(self, what: str, value: torch.Tensor, ancestors: frozenset[str],
                         checked: frozenset[str] = frozenset()) -> None:
        """Each particle is one independent run of the model: refuse ``value [N, …]`` (a cost, a node's
        parameters) whose particle n moves with another particle's draws of a score-type node upstream
        (gradest.graph.elements.check_particles); ``checked``: nodes whose element check covered it."""
        if self.num_samples < 2:
            return
        nodes = [(k, self._leaves[k]) for k in (n.name for n in dice.score_nodes(self, ancestors))
                 if k in self._leaves and k not in checked]
        if nodes and value.requires_grad:
            elements.check_particles(what, value, nodes, self._check_seed())

    def _check_seed(self) -> int:
        """A fresh seed for each contract check (gradest.graph.elements): from the state of the graph's
        generator (read, not consumed) and a count of the checks, so the probed halves change from check
        to check and step to step while the same seed gives the same verdicts."""
        self._checks += 1
        return zlib.crc32(self.generator.get_state().cpu().numpy().tobytes(), self._checks)

    def _check_paths(self) -> None:
        """Refuse a cost, or a score node's log-density, whose particle n moves with another particle's
        draws of a reparameterized node upstream (gradest.graph.elements.check_particles, read through
        the draw itself). Its gradient is that of what the code computes, but its rows are not
        single-particle gradients, so :meth:`per_node` (which runs this) would split and report
        coupled rows as independent ones. Score-type draws are checked as each cost is added."""
        if self.num_samples < 2:
            return
        why = ("per_node's rows would not be single-particle gradients (their spread, and any standard "
               "error from it, would be wrong)")
        paths = {k: v.value for k, v in self.nodes.items()
                 if v.kind == "reparameterized" and v.value is not None and v.value.requires_grad}
        if not paths:
            return
        for c in self.costs.values():
            nodes = [(k, paths[k]) for k in paths if k in c.ancestors]
            if nodes:
                elements.check_particles(f"cost {c.name!r}", c.value, nodes, self._check_seed(), why)
        for k, node in self.nodes.items():
            if node.log_prob is not None:
                nodes = [(a, paths[a]) for a in paths if a in node.ancestors]
                if nodes:
                    elements.check_particles(f"node {k!r}'s log-density", node.log_prob, nodes,
                                             self._check_seed(), why)

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

    def _probed_then(self, name: str, then: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                     est: Estimator) -> torch.Tensor:
        """``then(z)``, its first evaluation probed for mixing as a single node's cost
        (:mod:`gradest.contract`); a cost whose elements are not the node's leading ones is probed
        for mixing the samples only."""
        batch = z.shape[1:]
        caps = est.capabilities

        def cells(out: torch.Tensor) -> int:
            tail = out.shape[1:]
            return math.prod(tail) if tuple(batch[:len(tail)]) == tuple(tail) else 1

        key = contract.key_of(then, z, {}, caps.separable, False)
        return contract.probe(lambda x: self._then(name, then, x), z, key, {}, est.name, caps.separable,
                              False, cells)

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
            self._check_particles(f"node {name!r}'s then= cost", value, upstream)
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
        self._check_particles(f"node {name!r}'s then= cost", live, upstream)
        self.nodes[name] = StochasticNode(name, est.name, None, None, ancestors, "callable", first_order=True,
                                          couples=couples_samples(est))
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
            fx = dice.per_particle(self, self._then(name, then, x))
            value = value + p * fx
            own = own + p * fx.detach()
            direct = direct + p.detach() * fx
        return value, own, direct

    def _per_particle_any(self, t: torch.Tensor, batched: bool) -> torch.Tensor:
        """Σ over batch dims: ``[N, *B] -> [N]`` (batched) or ``[*B] -> [N]`` (shared by the particles)."""
        if batched:
            return dice.per_particle(self, t)
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
        checked = self._check_elements(name, value, ancestors)
        self._check_particles(f"cost {name!r}", value, ancestors, checked)
        self._check_resolution(name, value, ancestors)
        self.costs[name] = CostNode(name, value, ancestors)
        return value

    def _check_resolution(self, name: str, value: torch.Tensor, ancestors: frozenset[str]) -> None:
        """Refuse a cost whose values do not resolve the draws of a score-type node upstream
        (:func:`gradest.contract.resolution`): that node's estimate would be the gradient of rounding."""
        for node in dice.score_nodes(self, ancestors):
            held = self._resolution_leaves.get(node.name)
            if held is None:
                continue
            draws, leaf, est = held

            def slope_of(points: torch.Tensor, leaf: torch.Tensor = leaf) -> torch.Tensor | None:
                if not value.requires_grad:
                    return None
                return torch.autograd.grad(value.sum(), leaf, retain_graph=True, allow_unused=True)[0]

            reason = contract.resolution_given(draws, value, f"node {node.name!r}'s {est}", slope_of)
            if reason is not None:
                raise GradestError(f"cost {name!r}: {reason}")

    def _check_elements(self, name: str, value: torch.Tensor, ancestors: frozenset[str]) -> frozenset[str]:
        """A per-element cost must take element c from element c's draws alone (gradest.graph.elements);
        returns the nodes so checked (their particles too)."""
        if value.dim() < 2 or not (self._element_leaves or self._unwatched):
            return frozenset()
        cells = value.shape[1:]
        nodes = []
        for node in dice.score_nodes(self, ancestors):
            leaf = self._element_leaves.get(node.name)
            if leaf is None and node.name not in self._unwatched:
                continue
            batch = node.log_prob.shape[1:]
            m = min(len(batch), len(cells))
            if m == 0 or batch[:m] != cells[:m]:  # (the surrogate refuses unaligned shapes: dice.align)
                continue
            if leaf is None:
                raise GradestError(elements.unverifiable_integers(name, node.name, list(value.shape)))
            nodes.append((node.name, leaf, m))
        if nodes:  # (a seed only for a check that runs)
            elements.check(name, value, nodes, self._check_seed())
        return frozenset(k for k, _, _ in nodes)


    def _per_particle(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.num_samples, -1).sum(1)


    # the estimator and its attribution (gradest.graph.dice, gradest.graph.attribution) ----------

    def rows(self) -> torch.Tensor:
        """s_n ``[N]``: the surrogate is their mean (the DiCE form, per particle)."""
        return dice.rows(self)

    def surrogate(self) -> torch.Tensor:
        """Scalar: value = MC estimate of E[Σ costs]; gradient of every order = the DiCE estimate."""
        return dice.rows(self).mean()

    def values(self) -> torch.Tensor:
        """``[N]`` total cost per particle (detached)."""
        return dice.values(self)

    def groups(self) -> dict[str, torch.Tensor]:
        """Node -> ``[N]`` rows whose first derivatives are the node's own term (see
        :func:`gradest.graph.attribution.node_rows`)."""
        return attribution.node_rows(self)

    def per_node(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                 mode: str | None = None) -> NodeGradients:
        """Single-particle gradients of each group with respect to ``params``, batched
        (:func:`gradest.graph.attribution.per_node`)."""
        return attribution.per_node(self, params, mode)

    def node_means(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
                   ) -> dict[str, dict[str, torch.Tensor]]:
        """group -> param name -> the group's share of ∇ surrogate (one backward pass per group)."""
        return attribution.node_means(self, params)

    def __repr__(self) -> str:
        return f"Graph(num_samples={self.num_samples}, nodes={list(self.nodes)}, costs={list(self.costs)})"


def graph(generator: torch.Generator, num_samples: int = 1, learn: bool = False) -> Graph:
    """A :class:`Graph` of ``num_samples`` particles drawing its noise from ``generator``."""
    return Graph(generator, num_samples, learn)
