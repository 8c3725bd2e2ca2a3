"""Every misuse of the public API raises GradestError with a message that names the fix: never
another exception type (TypeError, KeyError, OverflowError, …), never silent acceptance."""

import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

import gradest
from gradest import GradestError, NonFiniteError, rng
from gradest.compare import compare, timings
from gradest.costs import COST_FORMS, Cost, load_cost, named_cost
from gradest.diagnostics import param_stats, summarize
from gradest.estimators import registry
from gradest.monitor import GradientMonitor, gradient_statistics, plot, read_jsonl
from gradest.snapshot import Snapshot, global_rngs_forked

F64 = torch.float64
N01 = Normal(0.0, 1.0)


def _gen():
    return gradest.make_generator(0)


def _params():
    return {"loc": torch.tensor(1.0, dtype=F64), "scale": torch.tensor(1.0, dtype=F64)}


# ── rng ───────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("seed", "device", "match"), [
    (2**64, "cpu", r"from 0 to 2\*\*64 − 1, got 18446744073709551616"),
    (-1, "cpu", r"got -1; torch would wrap it"),
    (1.5, "cpu", r"got float 1\.5; give a Python int"),
    (2.0, "cpu", r"got float 2\.0"),
    ("0", "cpu", r"got str '0'"),
    (True, "cpu", r"got bool True"),
    (None, "cpu", r"got NoneType"),
    (torch.tensor(3), "cpu", r"got Tensor"),
    (0, "cpu:1", r"there is one CPU device; give cpu"),
    (0, "bogus", r"'bogus' is not a device; give cpu, cuda or cuda:N"),
    (0, "", r"'' is not a device"),
    (0, None, r"None is not a device"),
    (0, "meta", r"'meta' holds no data"),
    (0, "cuda:99", r"CUDA is not available|has \d+ GPU\(s\)"),
])
def test_make_generator(seed, device, match):
    with pytest.raises(GradestError, match=match):
        gradest.make_generator(seed, device)


def test_make_generator_takes_the_whole_range_without_wrapping():
    import numpy as np

    assert gradest.make_generator(2**64 - 1).initial_seed() == 2**64 - 1
    assert gradest.make_generator(np.int64(7)).initial_seed() == 7


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rng.sample(N01, (3,), None, True), r"expected a torch\.Generator, got NoneType"),
    (lambda: rng.sample(N01, (3,), 0, True), r"got int; create one with gradest\.make_generator"),
    (lambda: rng.sample(N01, (-1,), _gen(), True), r"integers ≥ 0, got \(-1,\)"),
    (lambda: rng.sample(N01, (1.5,), _gen(), True), r"integers ≥ 0, got \(1\.5,\)"),
    (lambda: rng.sample(N01, "3", _gen(), True), r"integers ≥ 0, got '3'"),
    (lambda: rng.sample(None, (3,), _gen(), True), r"expected a torch\.distributions"),
    (lambda: rng.normal((-2,), _gen(), torch.zeros(())), r"shape must be a tuple"),
    (lambda: rng.normal((2,), _gen(), 0.0), r"like must be a tensor"),
    (lambda: rng.poisson(torch.ones(2), None), r"expected a torch\.Generator"),
    (lambda: rng.poisson(-torch.ones(2), _gen()), r"finite and ≥ 0"),
    (lambda: rng.poisson(torch.ones(2, dtype=torch.long), _gen()), r"floating-point"),
    (lambda: rng.register_sampler(3), r"takes torch\.distributions classes, got 3"),
    (lambda: rng.register_sampler(Normal)(3), r"a sampler must be a function"),
])
def test_rng_functions(call, match):
    with pytest.raises(GradestError, match=match):
        call()


def test_an_estimator_refuses_a_missing_generator():
    est = gradest.get_estimator("pathwise")
    with pytest.raises(GradestError, match=r"expected a torch\.Generator, got NoneType"):
        est.per_sample(named_cost("cos"), Normal, _params(), 10, None)


# ── costs ─────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("name", "k", "match"), [
    ("cos", math.nan, r"k of cost 'cos' must be a finite number, got nan"),
    ("square", math.inf, r"finite number, got inf"),
    ("exp", -1.0, r"needs k ≥ 0, got k = -1"),
    ("exp", -1e-9, r"needs k ≥ 0"),
    ("square", "2", r"must be a real number, got str '2'"),
    ("square", None, r"got NoneType"),
    ("cos", True, r"got bool True"),
    ("cos", 1 + 2j, r"got complex"),
    ("cos", [1, 2], r"got list"),
    ("cos", torch.tensor(2.0), r"got a tensor; give float\(k\)"),
    ("sqaure", 1.0, r"unknown cost 'sqaure'; choose one of square, exp, cos, linear"),
    (3, 1.0, r"unknown cost 3"),
])
def test_named_cost(name, k, match):
    with pytest.raises(GradestError, match=match):
        named_cost(name, k)


@pytest.mark.parametrize(("spec", "k", "match"), [
    (3, None, r"a cost spec must be a string"),
    (None, None, r"a cost spec must be a string"),
    ("cos", math.nan, r"finite number, got nan"),
    ("cos", "x", r"real number, got str 'x'"),
    ("exp", -2.0, r"needs k ≥ 0"),
    ("math:sqrt", "2", r"real number, got str"),  # was a format error deep in the k message
])
def test_load_cost(spec, k, match):
    with pytest.raises(GradestError, match=match):
        load_cost(spec, k)


@pytest.mark.parametrize(("args", "match"), [
    ((3, 1.0, COST_FORMS["cos"].value), r"name must be a string"),
    (("c", math.nan, COST_FORMS["cos"].value), r"k of cost 'c' must be a finite number"),
    (("c", 1.0, None), r"elementwise must be a function"),
    (("c", 1.0, COST_FORMS["cos"].value, 3), r"normal_mean must be a function"),
])
def test_cost_record(args, match):
    with pytest.raises(GradestError, match=match):
        Cost(*args)


@pytest.mark.parametrize(("x", "match"), [
    (torch.tensor(1.0), r"takes samples as a tensor \[N, \.\.\.\], got shape \[\]"),
    ([1.0, 2.0], r"got list"),
])
def test_cost_call(x, match):
    with pytest.raises(GradestError, match=match):
        named_cost("cos")(x)


@pytest.mark.parametrize(("loc", "scale", "match"), [
    (1.0, 1.0, r"loc and scale as floating-point tensors, got float and float"),
    (torch.tensor(1.0), "x", r"got Tensor and str"),
    (torch.tensor([1, 2]), torch.tensor(1.0), r"floating-point tensors"),
    (torch.zeros(2), torch.ones(3), r"loc \[2\] and scale \[3\] do not broadcast"),
])
def test_cost_expectation_normal(loc, scale, match):
    with pytest.raises(GradestError, match=match):
        named_cost("cos").expectation_normal(loc, scale)


# ── the registry ──────────────────────────────────────────────────────────────────────────────


def _factory(_):
    return gradest.Pathwise()


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("", {}, r"non-empty string without spaces, got ''"),
    ("a b", {}, r"without spaces, got 'a b'"),
    ("x\ny", {}, r"without spaces"),
    (3, {}, r"without spaces, got 3"),
    ("pathwise", {}, r"'pathwise' is already registered; choose another name"),
    ("a+b", {}, r"cannot contain '\+' or '='"),
    ("misuse-ok", {"summary": 3}, r"one non-empty line of text, got 3"),
    ("misuse-ok", {"summary": ""}, r"one non-empty line"),
    ("misuse-ok", {"summary": "two\nlines"}, r"one non-empty line"),
    ("misuse-ok", {"argument": 3}, r"argument name .* without spaces, got 3"),
    ("misuse-ok", {"argument": ""}, r"argument name"),
    ("misuse-ok", {"argument": "b=1"}, r"argument name .* cannot contain"),
    ("misuse-ok", {"required": True}, r"required=True needs an argument name"),
    ("misuse-ok", {"argument": "b", "required": "yes"}, r"required must be True or False"),
    ("misuse-ok", {"variance": 3}, r"variance hook .* must be a function"),
])
def test_register(name, kwargs, match):
    kwargs = {"summary": "a summary", **kwargs}
    summary = kwargs.pop("summary")
    with pytest.raises(GradestError, match=match):
        gradest.register(name, summary, **kwargs)(_factory)
    assert "misuse-ok" not in registry._REGISTRY


def test_register_refuses_a_factory_that_is_not_callable():
    with pytest.raises(GradestError, match=r"decorates a factory"):
        gradest.register("misuse-ok", "a summary")(3)
    assert "misuse-ok" not in registry._REGISTRY


@pytest.mark.parametrize(("spec", "match"), [
    ("", r"give an estimator name, got ''"),
    ("  ", r"give an estimator name"),
    (None, r"a name like 'pathwise' .* got NoneType"),
    (3, r"got int"),
    (True, r"got bool"),
    (["pathwise"], r"got list"),
    (b"pathwise", r"got bytes"),
    ("pathwise=", r"'pathwise' takes no argument, got 'pathwise='"),
    ("score-ema=", r"no value after '=' in 'score-ema='"),
    ("Pathwise", r"unknown estimator 'Pathwise'"),
    ("misuse-none", r"returned NoneType, not a gradest\.Estimator"),
])
def test_get_estimator(spec, match, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "misuse-none",
                        registry.Entry(lambda _: None, "returns nothing", None, False))
    with pytest.raises(GradestError, match=match):
        gradest.get_estimator(spec)


# ── diagnostics ───────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def per_sample():
    grads = {"loc": torch.randn(64, dtype=F64), "scale": torch.randn(64, dtype=F64)}
    return gradest.PerSampleGradients(grads, torch.randn(64, dtype=F64), 0.01, "pathwise")


@pytest.mark.parametrize(("estimate", "exact", "match"), [
    (None, {"loc": torch.tensor(0.0, dtype=F64)}, r"exact has other parameter names .*missing 'scale'"),
    (None, {"loc": torch.tensor(0.0), "scale": torch.tensor(0.0), "x": torch.tensor(1.0)}, r"extra 'x'"),
    (None, {}, r"missing 'loc', 'scale'"),
    (None, {"loc": 0.5, "scale": 0.1}, r"exact\['loc'\] must be a tensor"),
    (None, {"loc": torch.zeros(3), "scale": torch.zeros(3)}, r"exact\['loc'\] has shape \[3\] but one"),
    (None, {"loc": torch.tensor(math.nan), "scale": torch.tensor(0.0)}, r"contains NaN or inf"),
    (None, [1, 2], r"exact must be what gradest\.exact_grad returned or a mapping"),
    (None, 3.0, r"or a mapping"),
    ({"loc": torch.zeros(3)}, None, r"a PerSampleGradients\), got dict"),
    ("empty", None, r"no samples"),
])
def test_summarize(per_sample, estimate, exact, match):
    if estimate is None:
        estimate = per_sample
    elif estimate == "empty":
        estimate = per_sample._replace(grads={k: g[:0] for k, g in per_sample.grads.items()},
                                       values=per_sample.values[:0])
    with pytest.raises(GradestError, match=match):
        summarize(estimate, exact)


@pytest.mark.parametrize(("samples", "kwargs", "match"), [
    (torch.tensor(1.0), {}, r"\[N, \*shape\] with N ≥ 1 .* got shape \[\]"),
    (torch.zeros(0, 2), {}, r"got shape \[0, 2\]"),
    ([1.0, 2.0], {}, r"must be a tensor .* got list"),
    (torch.tensor([1, 2, 3]), {}, r"real floating-point, got torch\.int64"),
    (torch.tensor([True, False]), {}, r"got torch\.bool"),
    (torch.zeros(4, 2, dtype=torch.complex64), {}, r"got torch\.complex64"),
    (torch.zeros(4, 2, device="meta"), {}, r"meta tensor"),
    (torch.zeros(4, 2).to_sparse(), {}, r"dense tensor, got torch\.sparse_coo"),
    (torch.tensor([1.0, math.nan]), {}, r"samples contain NaN or inf"),
    (torch.zeros(5, 2), {"exact": torch.zeros(3)}, r"exact has shape \[3\] but one sample has shape"),
    (torch.zeros(5, 2), {"exact": 0.0}, r"exact must be a tensor of shape \[2\]"),
    (torch.zeros(5, 2), {"exact": torch.zeros(2), "error": "x"}, r"error must be a tensor"),
    (torch.zeros(5, 2), {"exact": torch.zeros(2), "error": -torch.ones(2)}, r"error .* must be ≥ 0"),
    (torch.zeros(5, 2), {"groups": torch.tensor([0, 1])}, r"one label per sample, shape \[5\], got \[2\]"),
    (torch.zeros(4, 2), {"groups": torch.tensor([0.0, 1, 0, 1])}, r"integer tensor \[N\] .* torch\.float32"),
    (torch.zeros(4, 2), {"groups": torch.tensor([0, -1, 0, 1])}, r"labels must be integers ≥ 0"),
    (torch.zeros(4, 2), {"groups": [0, 1, 0, 1]}, r"got list"),
    (torch.zeros(4, 2), {"resolution": -1.0}, r"resolution must be finite and ≥ 0"),
    (torch.zeros(4, 2), {"resolution": "x"}, r"resolution must be a number"),
])
def test_param_stats(samples, kwargs, match):
    with pytest.raises(GradestError, match=match):
        param_stats(samples, **kwargs)


# ── families ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("name", "match"), [
    (None, r"unknown family None; choose one of: normal"),
    (3, r"unknown family 3"),
    ("gausian", r"unknown family 'gausian'"),
])
def test_get_family(name, match):
    with pytest.raises(GradestError, match=match):
        gradest.get_family(name)


@pytest.mark.parametrize(("family", "params", "match"), [
    ("normal", None, r"takes a mapping of parameter name -> tensor \{loc, scale\}, got NoneType"),
    ("normal", "loc", r"got str"),
    ("normal", {"loc": 1.0, "scale": 1.0}, r"loc of normal must be a torch\.Tensor, got float"),
    ("normal", {"loc": torch.tensor(0), "scale": torch.tensor(1)}, r"floating-point .* got torch\.int64"),
    ("normal", {"loc": torch.tensor(True), "scale": torch.tensor(True)}, r"got torch\.bool"),
    ("normal", {"loc": torch.tensor(0j), "scale": torch.tensor(1 + 0j)}, r"got torch\.complex64"),
    ("normal", {"loc": torch.zeros(0), "scale": torch.ones(0)}, r"has no numbers \(shape \[0\]\)"),
    ("normal", {"loc": torch.zeros(2, device="meta"), "scale": torch.ones(2, device="meta")}, r"meta tensor"),
    ("normal", {"loc": torch.zeros(2).to_sparse(), "scale": torch.ones(2).to_sparse()}, r"to_dense"),
    ("categorical", {"probs": torch.zeros(0, 2)}, r"no numbers \(shape \[0, 2\]\)"),
    ("poisson", {"rate": torch.tensor(2)}, r"got torch\.int64"),
])
def test_family_check(family, params, match):
    with pytest.raises(GradestError, match=match):
        gradest.get_family(family).check(params)


@pytest.mark.parametrize(("params", "match"), [
    ({"loc": torch.tensor(0.0), "scale": torch.tensor(-1.0)}, r"invalid parameters for normal: .* scale"),
    ({"foo": torch.tensor(0.0)}, r"invalid parameters for normal: .*it takes \{loc, scale\}"),
])
def test_family_build(params, match):
    with pytest.raises(GradestError, match=match):
        gradest.get_family("normal").build(**params)


# ── exact gradients ───────────────────────────────────────────────────────────────────────────


def _exp_negative_k():
    forms = COST_FORMS["exp"]
    return Cost("exp", -1.0, forms.value, forms.normal_mean)  # around named_cost's k ≥ 0 check


@pytest.mark.parametrize(("f", "builder", "params", "kwargs", "match"), [
    (3, Normal, _params(), {}, r"f must be a function of the samples .* got int"),
    (None, Normal, _params(), {}, r"got NoneType"),
    (named_cost("cos"), 3, _params(), {}, r"dist_builder must be a function .* got int"),
    (named_cost("cos"), Normal, _params(), {"method": None}, r"unknown method None"),
    (named_cost("cos"), Normal, _params(), {"method": ["auto"]}, r"unknown method \['auto'\]"),
    (_exp_negative_k(), Normal, _params(), {}, r"E f is not finite at these parameters"),
    (lambda x: x.sum(-1), Bernoulli, {"probs": torch.full((20_000,), 0.5, dtype=F64)}, {},
     r"enumeration needs 2\^20000 support points"),  # was a ValueError: too many digits to print
])
def test_exact_grad(f, builder, params, kwargs, match):
    with pytest.raises(GradestError, match=match):
        gradest.exact_grad(f, builder, params, **kwargs)


def test_an_infinite_expectation_is_a_non_finite_error():
    with pytest.raises(NonFiniteError):
        gradest.exact_grad(_exp_negative_k(), Normal, _params())


# ── compare ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"estimators": "pathwise"}, r"estimators must be a list of names or Estimators, .* got str 'pathwise'"),
    ({"estimators": []}, r"give at least one estimator"),
    ({"f": 3}, r"f must be a function"),
    ({"num_samples": 0}, r"num_samples must be an integer ≥ 1"),
    ({"num_samples": 1.5}, r"num_samples must be an integer"),
    ({"seed": -1}, r"seed must be an integer from 0 to 2\*\*64 − 1, got -1"),
    ({"seed": "x"}, r"got str 'x'"),
    ({"params": None}, r"params must be a non-empty mapping"),
    ({"params": {"loc": 1.0, "scale": 1.0}}, r"must be a torch\.Tensor"),
    ({"config": [1]}, r"config must be a mapping"),
    ({"on_estimator": 3}, r"on_estimator must be a function"),
    ({"device": "bogus"}, r"'bogus' is not a device"),
])
def test_compare(kwargs, match):
    args = {"f": named_cost("cos"), "dist_builder": Normal, "params": _params(), "estimators": ["pathwise"],
            "num_samples": 10, "seed": 0, **kwargs}
    with pytest.raises(GradestError, match=match):
        compare(**args)


def test_timings_refuses_zero_rounds():
    with pytest.raises(GradestError, match=r"rounds must be an integer ≥ 1"):
        timings([gradest.get_estimator("pathwise")], named_cost("cos"), Normal, _params(), 10, 0, rounds=0)


# ── snapshot ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("call", "match"), [
    (lambda: Snapshot(3), r"Snapshot takes a list of the objects to restore .* got int"),
    (lambda: Snapshot(None), r"got NoneType"),
    (lambda: global_rngs_forked(-1).__enter__(), r"seed must be an integer from 0 to 2\*\*64 − 1, got -1"),
    (lambda: global_rngs_forked(1.5).__enter__(), r"got float 1\.5"),
    (lambda: global_rngs_forked(2**64).__enter__(), r"torch would wrap it"),
])
def test_snapshot(call, match):
    with pytest.raises(GradestError, match=match):
        call()


# ── the monitor ───────────────────────────────────────────────────────────────────────────────


def _model():
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def _loss(model):
    return lambda batch, gen: (model(torch.randn(3, 2, generator=gen)) ** 2).mean()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"jsonl": "{tmp}"}, r"is a folder; give a file in it"),
    ({"jsonl": "{tmp}/file/x.jsonl"}, r"lies under .*file, which is a file"),
    ({"jsonl": "{tmp}/" + "a" * 300}, r"has 300 bytes, more than the 255"),
    ({"jsonl": "{tmp}/" + "a/" * 2100 + "x.jsonl"}, r"cannot write there"),
    ({"jsonl": "/proc/gradest-misuse.jsonl"}, r"cannot write there"),
    ({"jsonl": ""}, r"jsonl='' is not a file name"),
    ({"jsonl": "{tmp}/x\0y"}, r"is not a file name"),
    ({"jsonl": 3}, r"jsonl must be a file path .* got int"),
    ({"seed": -1}, r"seed must be an integer from 0 to 2\*\*64 − 1, got -1"),
    ({"seed": 1.5}, r"got float 1\.5"),
    ({"seed": "3"}, r"got str '3'"),
    ({"seed": True}, r"got bool True"),
    ({"seed": None}, r"got NoneType"),
    ({"seed": 2**64}, r"torch would wrap it"),
    ({"loss_fn": 3}, r"loss_fn must be a function"),
    ({"loss_fn": None, "estimates_fn": 3}, r"estimates_fn must be a function"),
    ({"repeats": 10**12}, r"repeats=1000000000000 needs about .* GiB .*; use repeats ≤"),
    ({"tags": [1]}, r"tags must be a mapping"),
    ({"tags": {"a": math.nan}}, r"tags must be JSON values"),
    ({"tags": {"a": object()}}, r"tags must be JSON values"),
    ({"tags": {"step": "x"}}, r"tag 'step' is a field of every record"),
    ({"tags": {3: "x"}}, r"tag names must be strings"),
    ({"prefix": 3}, r"prefix .* must be a non-empty string"),
    ({"prefix": ""}, r"prefix .* must be a non-empty string"),
    ({"state": 3}, r"state must be a list of the objects"),
    ({"state": None}, r"state must be a list"),
    ({"tensorboard": 3}, r"tensorboard must be a log folder or a SummaryWriter"),
    ({"tensorboard": "{tmp}/file"}, r"is a file; give a log folder"),
    ({"params": {"w": torch.zeros(2, device="meta", requires_grad=True)}}, r"is a meta tensor"),
    ({"params": {"w": torch.zeros(2).to_sparse().requires_grad_()}}, r"sparse_coo tensor"),
    ({"params": {"w": torch.zeros(0, requires_grad=True)}}, r"has no numbers \(shape \[0\]\)"),
])
def test_gradient_monitor(tmp_path, kwargs, match):
    (tmp_path / "file").write_text("")
    model = _model()
    args = {"params": model, "loss_fn": _loss(model), **kwargs}
    for key, value in args.items():
        if isinstance(value, str):
            args[key] = value.replace("{tmp}", str(tmp_path))
    params, loss_fn = args.pop("params"), args.pop("loss_fn")
    with pytest.raises(GradestError, match=match):
        GradientMonitor(params, loss_fn, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the checks leave no trace


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: m.step("x", 1), r"step must be the training step, an integer ≥ 0, got 'x'"),
    (lambda m: m.step(1.5, 1), r"got 1\.5"),
    (lambda m: m.step(-1, 1), r"got -1"),
    (lambda m: m.step(True, 1), r"got True"),
    (lambda m: m.step(None, 1), r"got None"),
    (lambda m: m.measure(math.nan, 1), r"got nan"),
    (lambda m: m.load_state_dict({}), r"takes what GradientMonitor\.state_dict\(\) returned"),
    (lambda m: m.load_state_dict(None), r"got NoneType"),
    (lambda m: m.load_state_dict({"generator": torch.zeros(3), "fork_seeds": torch.zeros(3)}),
     r"not a GradientMonitor state"),
])
def test_gradient_monitor_calls(call, match):
    model = _model()
    monitor = GradientMonitor(model, _loss(model), repeats=2)
    with pytest.raises(GradestError, match=match):
        call(monitor)


def test_a_failed_load_state_dict_changes_nothing():
    model = _model()
    monitor = GradientMonitor(model, _loss(model), repeats=2)
    before = monitor.state_dict()
    bad = {"generator": before["generator"], "fork_seeds": torch.zeros(3, dtype=torch.uint8)}
    with pytest.raises(GradestError):
        monitor.load_state_dict(bad)
    assert all(torch.equal(before[k], v) for k, v in monitor.state_dict().items())


@pytest.mark.parametrize(("returned", "match"), [
    ({"weight": torch.zeros(4, 1, 2)}, r"no estimates for 'bias'"),
    ({"weight": torch.zeros(4, 1, 2), "bias": torch.zeros(4, 3)}, r"returned \[4, 3\] for 'bias'"),
    ({"weight": torch.zeros(4, 1, 2), "bias": torch.zeros(3, 1)}, r"the same R"),
    ({"weight": torch.zeros(4, 1, 2, dtype=torch.long), "bias": torch.zeros(4, 1)}, r"floating-point"),
    ([1, 2], r"must return \{name: \[R, \*shape\]\} or a PerSampleGradients, got list"),
])
def test_gradient_monitor_refuses_bad_estimates(returned, match):
    model = _model()
    monitor = GradientMonitor(model, estimates_fn=lambda batch, gen, repeats: returned, repeats=4)
    with pytest.raises(GradestError, match=match):
        monitor.measure(0, 1)


@pytest.mark.parametrize(("estimates", "groups", "match"), [
    ([[1.0, 2.0], [3.0, 4.0]], None, r"dense real floating-point tensor \[R, P\], got list"),
    (torch.ones(3, 2, dtype=torch.long), None, r"got torch\.int64"),
    (torch.zeros(4, 2, device="meta"), None, r"on meta"),
    (torch.zeros(4, 0), None, r"no coordinates"),
    (torch.randn(4, 2), torch.tensor([0, 1]), r"one label per sample, shape \[4\]"),
    (torch.randn(4, 2), torch.tensor([0, -1, 0, 1]), r"labels must be integers ≥ 0"),
    (torch.randn(4, 2), torch.tensor([0.0, 1, 0, 1]), r"integer tensor"),
])
def test_gradient_statistics(estimates, groups, match):
    with pytest.raises(GradestError, match=match):
        gradient_statistics(estimates, groups)


@pytest.mark.parametrize(("content", "match"), [
    (None, r"cannot read .*: Is a directory"),
    (b"\xff\xfe", r"is not text \(UTF-8\)"),
    (b"[1]\n3\n", r"line 1 is not a record"),
])
def test_read_jsonl(tmp_path, content, match):
    path = tmp_path
    if content is not None:
        path = tmp_path / "records.jsonl"
        path.write_bytes(content)
    with pytest.raises(GradestError, match=match):
        read_jsonl(path)


def test_read_jsonl_of_a_missing_file():
    with pytest.raises(GradestError, match=r"cannot read .*: No such file"):
        read_jsonl("/nonexistent/monitor.jsonl")


@pytest.mark.parametrize(("records", "match"), [
    (None, r"plot takes a list of records"),
    ({"step": 0}, r"plot takes a list of records"),
    ([{"x": 1}], r"a record lacks step, group, variance, snr"),
    ([json.dumps({"step": 0})], r"a record lacks"),
])
def test_plot(records, match):
    with pytest.raises(GradestError, match=match):
        plot(records)
