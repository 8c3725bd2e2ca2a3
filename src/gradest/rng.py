r"""Explicit randomness: every random number in gradest comes from a caller's ``torch.Generator``.

``torch.distributions`` samples from the global generator and takes no ``generator=`` argument, so
gradest draws the base noise itself, straight from the caller's generator, on the parameters'
device and in their dtype:

* location–scale and transformed families through ε: Normal x = μ + σε, MultivariateNormal
  x = μ + Lε, LogNormal, HalfNormal, Gumbel, … (``TransformedDistribution`` applies its
  transforms to a base draw), Laplace and Cauchy through their own formulas;
* inverse-CDF families through uniforms: Uniform, Exponential, Geometric, Categorical (the
  smallest k with u ≤ Σ_{j≤k} p_j), Bernoulli (u < p), relaxed (Concrete) families through
  Gumbel noise;
* Poisson and Binomial through torch's generator-aware samplers.

Every formula is torch's own ``rsample``/``sample`` with ε taken from the generator, so the draws
have the family's distribution and the same reparameterization path. A family without such a
path (Gamma, Beta, Dirichlet, StudentT, Chi2 and user distributions, whose samplers have no
generator argument) falls back to the global RNG: forked, seeded from the caller's generator on
the parameters' device, sampled and restored, under a lock so that threads never interleave. The
global RNG is left exactly as it was either way.

Same generator state, same numbers — on a given device. A generator on another device than the
parameters (a CPU generator for CUDA parameters) still works: its numbers are drawn where it lives
and copied, which is reproducible but slower; ``make_generator(seed, device)`` avoids the copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.distributions as D
from torch.distributions.utils import clamp_probs

from gradest.errors import GradestError

_SEED_HIGH = 2**62
#: the largest seed torch takes as it is (a larger one overflows, a negative one wraps around)
SEED_MAX = 2**64 - 1
#: held while the global RNG is forked for a draw, and while a contract probe replays it
#: (gradest.contract): re-entrant, so a probe's cost may draw through the fallback itself
GLOBAL_RNG_LOCK = _FALLBACK_LOCK = threading.RLock()

Shape = torch.Size | tuple[int, ...]
#: family sampler: (distribution, sample_shape, generator) -> x ``[*sample_shape, *batch, *event]``
FamilySampler = Callable[[D.Distribution, torch.Size, torch.Generator], torch.Tensor]
SAMPLERS: dict[type[D.Distribution], FamilySampler] = {}


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int in [0, SEED_MAX], or a GradestError: torch would wrap a negative seed to
    2**64 − 1 (or round 1.5 to 1) without a word, and two different seeds would give one stream."""
    if isinstance(seed, bool | np.bool_) or not isinstance(seed, int | np.integer):
        raise GradestError(f"{what} must be an integer from 0 to 2**64 − 1, got {type(seed).__name__} "
                           f"{_short(seed)}; give a Python int, e.g. {what}=0")
    if not 0 <= int(seed) <= SEED_MAX:
        raise GradestError(f"{what} must be an integer from 0 to 2**64 − 1, got {_short(seed)}; torch "
                           "would wrap it to another seed: give one in that range")
    return int(seed)


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def check_device(device: object) -> torch.device:
    """``device`` (a name like ``cpu``, ``cuda:1``, or a torch.device) as a torch.device that can hold
    a generator on this machine, or a GradestError."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GradestError(f"device {_short(device)} is not a device; give cpu, cuda or cuda:N "
                           "(or a torch.device)") from None
    if resolved.type == "cpu" and resolved.index not in (None, 0):
        raise GradestError(f"device {str(resolved)!r}: there is one CPU device; give cpu")
    if resolved.type == "meta":
        raise GradestError("device 'meta' holds no data and so no random numbers; give cpu or cuda "
                           "(the device of real parameters)")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GradestError(f"device {str(resolved)!r}: CUDA is not available (this PyTorch build or "
                               "machine has no GPU); give cpu")
        if resolved.index is not None and resolved.index >= count:
            raise GradestError(f"device {str(resolved)!r}: this machine has {count} GPU(s), cuda:0 to "
                               f"cuda:{count - 1}")
    return resolved


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded with `seed` (the only way gradest turns a seed into randomness).

    Args:
        seed: an int from 0 to 2**64 − 1 (a numpy integer too; not a bool, a float or a string).
        device: where the generator lives: ``cpu``, ``cuda``, ``cuda:N``, … or a torch.device.
    Raises:
        GradestError: a seed outside that range or of another type; a device that is not one, or
            that this machine or PyTorch build does not have.
    """
    seed = check_seed(seed)
    resolved = check_device(device)
    try:
        gen = torch.Generator(device=resolved)
    except (RuntimeError, AssertionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:100]
        raise GradestError(f"cannot make a generator on device {str(resolved)!r} on this machine ({first}); "
                           "give a device it has, e.g. cpu") from None
    gen.manual_seed(seed)
    return gen


def check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise GradestError(
            f"expected a torch.Generator, got {type(generator).__name__}; "
            "create one with gradest.make_generator(seed)"
        )
    return generator


def check_shape(shape: object, what: str = "sample_shape") -> torch.Size:
    """``shape`` as a torch.Size of non-negative ints, or a GradestError (torch says TypeError or
    RuntimeError deep inside a sampler)."""
    items = (shape,) if isinstance(shape, int | np.integer) and not isinstance(shape, bool) else shape
    try:
        bad = isinstance(items, str | bytes) or any(
            isinstance(n, bool | np.bool_) or not isinstance(n, int | np.integer) or n < 0 for n in items)
    except TypeError:
        bad = True
    if bad:
        raise GradestError(f"{what} must be a tuple of integers ≥ 0, got {_short(shape)}; e.g. (100,)")
    return torch.Size(int(n) for n in items)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type != "cuda" or (a.index or 0) == (b.index or 0))


def _noise(fill: Callable[..., torch.Tensor], shape: Shape, generator: torch.Generator,
           like: torch.Tensor) -> torch.Tensor:
    """``fill(shape, generator=, device=, dtype=)`` on ``like``'s device and dtype."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if _same_device(generator.device, like.device):
        return fill(tuple(shape), generator=generator, device=like.device, dtype=dtype)
    return fill(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(like.device)


def normal(shape: Shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal ε ``shape`` on ``like``'s device and dtype."""
    return _noise(torch.randn, check_shape(shape, "shape"), check_generator(generator), _like(like))


def uniform(shape: Shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform(0, 1) ``shape`` on ``like``'s device and dtype, with 0 excluded.

    ``torch.rand`` draws multiples of eps/2 (2⁻²⁴ in float32); a 0 stands for the first cell
    [0, step), so it becomes the cell's middle, step/2 (not the dtype's smallest number, which the
    logistic and Gumbel transforms would send 20 to 70 units further out than the cell's mass).
    """
    u = _noise(torch.rand, check_shape(shape, "shape"), check_generator(generator), _like(like))
    half_step = torch.finfo(u.dtype).eps / 4  # rand steps by eps/2
    return torch.where(u == 0, torch.full_like(u, half_step), u)


def _like(like: object) -> torch.Tensor:
    if not isinstance(like, torch.Tensor):
        raise GradestError(f"like must be a tensor whose device and dtype the noise takes, got "
                           f"{type(like).__name__}")
    return like


def logistic(u: torch.Tensor) -> torch.Tensor:
    """log u − log(1 − u): Logistic(0, 1) noise from uniforms."""
    return u.log() - (-u).log1p()


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """−log(−log u): Gumbel(0, 1) noise from uniforms."""
    return -(-u.log()).log()


def _exponential(shape, *, generator, device, dtype):
    return torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)


def _cauchy(shape, *, generator, device, dtype):
    return torch.empty(shape, device=device, dtype=dtype).cauchy_(generator=generator)


def sample(dist: D.Distribution, sample_shape: Shape, generator: torch.Generator,
           reparameterized: bool) -> torch.Tensor:
    """x ~ dist ``[*sample_shape, *batch_shape, *event_shape]`` from ``generator``.

    ``reparameterized=True`` keeps the path from the parameters to x (``rsample``); False returns a
    draw with no gradient (``sample``).
    """
    check_generator(generator)
    sample_shape = check_shape(sample_shape)
    if not isinstance(dist, D.Distribution):
        raise GradestError(f"expected a torch.distributions.Distribution to sample, got "
                           f"{type(dist).__name__}")
    if not reparameterized:
        with torch.no_grad():
            return _sample(dist, sample_shape, generator, False).detach()
    return _sample(dist, sample_shape, generator, True)


def _sample(dist, sample_shape, generator, reparameterized):
    for family in type(dist).__mro__:
        sampler = SAMPLERS.get(family)
        if sampler is not None:
            return sampler(dist, sample_shape, generator)
        if family is D.Distribution:
            break
    return _global_fallback(dist, sample_shape, generator, reparameterized)


def _device_of(dist: D.Distribution) -> torch.device:
    for value in vars(dist).values():
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, D.Distribution):
            return _device_of(value)
    return torch.device("cpu")


def _global_fallback(dist, sample_shape, generator, reparameterized):
    """torch's own sampler, run on the global RNG forked and seeded from ``generator`` (locked)."""
    seed = int(torch.randint(_SEED_HIGH, (1,), generator=generator, device=generator.device))
    device = _device_of(dist)
    on_cuda = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if on_cuda else 0)
    with _FALLBACK_LOCK, torch.random.fork_rng(
        devices=[index] if on_cuda else [], device_type="cuda" if on_cuda else None
    ):
        if on_cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        if reparameterized and dist.has_rsample:
            return dist.rsample(sample_shape)
        return dist.sample(sample_shape)


def register_sampler(*families: type[D.Distribution]):
    """Decorator: the generator-aware sampler of ``families`` (and their subclasses)."""

    for family in families:
        if not (isinstance(family, type) and issubclass(family, D.Distribution)):
            raise GradestError(f"register_sampler takes torch.distributions classes, got {_short(family)}")

    def wrap(fn: FamilySampler) -> FamilySampler:
        if not callable(fn):
            raise GradestError(f"a sampler must be a function (dist, sample_shape, generator) -> x, got "
                               f"{type(fn).__name__}")
        for family in families:
            SAMPLERS[family] = fn
        return fn

    return wrap


def _shape(dist: D.Distribution, sample_shape: torch.Size) -> torch.Size:
    return sample_shape + dist.batch_shape + dist.event_shape


def normal_draw(dist: D.Normal, sample_shape: Shape, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """x = μ + σ ε ``[*sample_shape, *batch_shape]`` (the Normal sampler's draw) and the ε that made it:
    (x − μ)/σ without the rounding of x."""
    eps = normal(_shape(dist, check_shape(sample_shape)), generator, dist.loc)
    return dist.loc + dist.scale * eps, eps


@register_sampler(D.Normal)
def _normal(dist, sample_shape, generator):
    return normal_draw(dist, sample_shape, generator)[0]


def draws_normal_itself(dist: D.Distribution) -> bool:
    """Whether ``dist`` is a Normal (under Independent wrappers) that :func:`sample` draws with
    :func:`normal_draw`: no sampler registered over the built-in ones of either."""
    while type(dist) is D.Independent:
        if SAMPLERS.get(D.Independent) is not _independent:
            return False
        dist = dist.base_dist
    return type(dist) is D.Normal and SAMPLERS.get(D.Normal) is _normal


@register_sampler(D.MultivariateNormal)
def _mvn(dist, sample_shape, generator):
    eps = normal(_shape(dist, sample_shape), generator, dist.loc)
    return dist.loc + (dist.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


@register_sampler(D.Independent)
def _independent(dist, sample_shape, generator):
    return _sample(dist.base_dist, sample_shape, generator, True)


@register_sampler(D.TransformedDistribution)
def _transformed(dist, sample_shape, generator):
    x = _sample(dist.base_dist, sample_shape, generator, True)
    for transform in dist.transforms:
        x = transform(x)
    return x


@register_sampler(D.Uniform)
def _uniform(dist, sample_shape, generator):
    u = _noise(torch.rand, _shape(dist, sample_shape), generator, dist.low)
    return dist.low + u * (dist.high - dist.low)


@register_sampler(D.Exponential)
def _exponential_family(dist, sample_shape, generator):
    return _noise(_exponential, _shape(dist, sample_shape), generator, dist.rate) / dist.rate


@register_sampler(D.Laplace)
def _laplace(dist, sample_shape, generator):
    eps = torch.finfo(dist.loc.dtype).eps
    u = 2.0 * _noise(torch.rand, _shape(dist, sample_shape), generator, dist.loc) - 1.0
    u = u.clamp(min=eps - 1.0)
    return dist.loc - dist.scale * u.sign() * torch.log1p(-u.abs())


@register_sampler(D.Cauchy)
def _cauchy_family(dist, sample_shape, generator):
    return dist.loc + dist.scale * _noise(_cauchy, _shape(dist, sample_shape), generator, dist.loc)


@register_sampler(D.Bernoulli)
def _bernoulli(dist, sample_shape, generator):
    probs = dist.probs
    return (uniform(_shape(dist, sample_shape), generator, probs) < probs).to(probs.dtype)


def _category(probs: torch.Tensor, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The smallest k with u ≤ F(k) for u ~ U(0, 1): P(k) = F(k) − F(k − 1) = p_k. ``shape`` excludes K."""
    probs = probs.detach()
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    u = uniform(shape, generator, probs).unsqueeze(-1)
    index = torch.searchsorted(cdf.expand(*shape, cdf.shape[-1]).contiguous(), u.contiguous())
    return index.squeeze(-1).clamp_max(probs.shape[-1] - 1)


@register_sampler(D.Categorical)
def _categorical(dist, sample_shape, generator):
    return _category(dist.probs, sample_shape + dist.batch_shape, generator)


@register_sampler(D.OneHotCategorical)
def _one_hot(dist, sample_shape, generator):
    index = _category(dist.probs, sample_shape + dist.batch_shape, generator)
    return torch.nn.functional.one_hot(index, dist.probs.shape[-1]).to(dist.probs.dtype)


@register_sampler(D.Geometric)
def _geometric(dist, sample_shape, generator):
    u = uniform(_shape(dist, sample_shape), generator, dist.probs)
    return (u.log() / (-dist.probs).log1p()).floor()


@register_sampler(D.Poisson)
def _poisson(dist, sample_shape, generator):
    rate = dist.rate.detach().expand(_shape(dist, sample_shape)).contiguous()
    if _same_device(generator.device, rate.device):
        return torch.poisson(rate, generator=generator)
    return torch.poisson(rate.to(generator.device), generator=generator).to(rate.device)


@register_sampler(D.Binomial)
def _binomial(dist, sample_shape, generator):
    shape = _shape(dist, sample_shape)
    count = dist.total_count.detach().expand(shape).contiguous()
    probs = dist.probs.detach().expand(shape).contiguous()
    if _same_device(generator.device, probs.device):
        return torch.binomial(count, probs, generator=generator)
    return torch.binomial(count.to(generator.device), probs.to(generator.device),
                          generator=generator).to(probs.device)


@register_sampler(D.relaxed_bernoulli.LogitRelaxedBernoulli)
def _logit_relaxed_bernoulli(dist, sample_shape, generator):
    u = clamp_probs(_noise(torch.rand, _shape(dist, sample_shape), generator, dist.logits))
    return (logistic(u) + dist.logits) / dist.temperature


@register_sampler(D.relaxed_categorical.ExpRelaxedCategorical)
def _exp_relaxed_categorical(dist, sample_shape, generator):
    u = clamp_probs(_noise(torch.rand, _shape(dist, sample_shape), generator, dist.logits))
    scores = (dist.logits + gumbel(u)) / dist.temperature
    return scores - scores.logsumexp(-1, keepdim=True)


def poisson(rate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x ~ Poisson(rate) elementwise (no gradient), from ``generator``, on ``rate``'s device."""
    check_generator(generator)
    if not isinstance(rate, torch.Tensor) or not rate.is_floating_point():
        got = rate.dtype if isinstance(rate, torch.Tensor) else type(rate).__name__
        raise GradestError(f"the Poisson rate must be a floating-point tensor, got {got}; "
                           "e.g. torch.tensor([2.0])")
    if not bool(torch.isfinite(rate).all()) or bool((rate < 0).any()):
        raise GradestError("the Poisson rate must be finite and ≥ 0 everywhere")
    return _poisson(D.Poisson(rate.detach(), validate_args=False), torch.Size(()), generator)
