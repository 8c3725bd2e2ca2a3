"""The public API is small and pinned: adding or removing a name is a deliberate change."""

import gradest

PUBLIC = {
    # estimators and their parts
    "Estimator", "PerSampleGradients", "Pathwise", "ScoreFunction", "MeasureValued",
    "NoBaseline", "Constant", "LeaveOneOut", "MovingAverage",
    "ControlVariate", "DeltaMethod", "ConstantControl", "Antithetic", "QuasiMonteCarlo",
    "available", "available_samplers", "get_estimator", "register",
    # the hook a new estimator implements, and what it declares
    "Terms", "Node", "BoundCost", "Capabilities",
    # problems, exact gradients, diagnostics
    "Cost", "named_cost", "load_cost", "FAMILIES", "get_family", "ExactGradient", "exact_grad",
    "EstimatorSummary", "ParamStats", "param_stats", "summarize", "select", "Selection",
    # the conformance kit for new estimators (a module: gradest.testing.check_estimator)
    "testing",
    # monitoring any training loop; stochastic computation graphs and per-node attribution
    "GradientMonitor", "graph", "Graph", "NodeGradients", "attribute", "Attribution", "enumerate_graph",
    # plumbing
    "GradestError", "NonFiniteError", "make_generator", "rng", "__version__",
}


def test_public_api_is_pinned():
    assert set(gradest.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(gradest, name), name


def test_registry_names_are_stable():
    names = set(gradest.available())
    assert {"pathwise", "score", "score-loo", "score-const=B", "score-ema=DECAY", "mvd", "mvd-uncoupled",
            "score-delta=ORDER", "mvd-delta=ORDER", "score-optb"} <= names
