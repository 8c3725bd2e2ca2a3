r"""Pictures and self-contained HTML reports of VAE runs (one run, or several side by side).

Figures: learning curves (−ELBO per image, train and test), encoder-gradient variance tr Cov(ĝ) per
epoch (log scale), the gradient monitor's variance and SNR per parameter group (encoder, decoder,
all) against the Adam step (:func:`gradest.monitor.plot` of ``monitor.jsonl``), test images above
their reconstructions E[x|z = μ_φ(x)], samples E[x|z], z ~ p(z), and, for a 2-D latent space, the
posterior means μ_φ(x) of the test images coloured by digit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradest import report as html
from gradest.errors import GradestError
from gradest.io import write_atomic
from gradest.monitor import plot, read_jsonl
from gradest.rng import make_generator
from gradest.vae.config import TrainConfig
from gradest.vae.files import CONFIG, METRICS, MONITOR, SUMMARY, load_run, read_metrics

REPORT = "report.html"
#: posterior collapse is flagged when fewer than this share of the latent units are active
COLLAPSE_SHARE = 0.5
_BOUND_TEXT = (
    "−ELBO(x) = −E_q(z|x)[log p(x|z)] + KL(q(z|x) ‖ p(z))\n"
    "NLL_K(x) = −E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)],  z_k ~ q(z|x)\n"
    "grad_var = tr Cov(ĝ_φ)\n"
    "SNR = ‖mean ĝ‖ / √tr Cov(ĝ)"
)
_BOUND_TEX = (
    r"\begin{aligned}"
    r"-\mathrm{ELBO}(x) &= -\mathbb{E}_{q(z\mid x)}\left[\log p(x\mid z)\right]"
    r" + \mathrm{KL}\big(q(z\mid x)\,\|\,p(z)\big) \\"
    r"\mathrm{NLL}_K(x) &= -\mathbb{E}\Big[\log \tfrac1K \textstyle\sum_k p(x, z_k)/q(z_k\mid x)\Big],"
    r"\quad z_k \sim q(z\mid x) \\"
    r"\text{grad\_var} &= \operatorname{tr}\operatorname{Cov}(\hat g_\phi) \\"
    r"\mathrm{SNR} &= \lVert \bar{\hat g} \rVert \big/ \sqrt{\operatorname{tr}\operatorname{Cov}(\hat g)}"
    r"\end{aligned}"
)
_BOUND_NOTE = (
    "−ELBO and NLL_K in nats per image, lower is better; NLL_K is the IWAE bound, which tends to −log p(x) "
    "as K grows. grad_var: the encoder gradient's total variance over R repeated estimates on one fixed "
    "batch; the gradient monitor gives it and the SNR per parameter group (encoder φ, decoder θ, all)."
)


def _objective() -> str:
    return html.section("Objective", html.math(_BOUND_TEXT, _BOUND_TEX), html.paragraph(_BOUND_NOTE))


def collapse_note(active_units: int | None, latent: int, kl: float | None) -> str:
    """'posterior collapse: only 1 of 20 latent units active (KL 0.11 nats) …', or '' without collapse.

    A unit u is active when its posterior mean varies across the test images, Var_x E_q[z_u] > 0.01
    (Burda et al., 2016); collapse is flagged when fewer than :data:`COLLAPSE_SHARE` of the units are.
    """
    if active_units is None or active_units >= COLLAPSE_SHARE * latent:
        return ""
    kl_text = "" if kl is None else f" (KL {kl:.2f} nats)"
    return (
        f"posterior collapse: only {active_units} of {latent} latent units active{kl_text}; a unit is "
        f"active when Var_x E_q[z_u] > 0.01, and collapse is flagged below {COLLAPSE_SHARE:.0%} of them. "
        "The decoder models the images without the latent code: train longer, or try fewer latent units "
        "(--latent) or another --estimator"
    )


#: how each key of a learning curve is drawn, and its name in the key beside the plot
_TRAIN = ("train_neg_elbo", "--", "s", "training batches (mean over the epoch)")
_TEST = ("test_neg_elbo", "-", "o", "test set")
_GRAD = ("grad_var", "-", "o", "")


def _curve_figure(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    keys: Sequence[tuple[str, str, str, str]],
    ylabel: str,
    log: bool = False,
) -> bytes:
    """One colour per run; each key (name, line style, marker, legend text) its line style and marker, so
    that a run of one epoch, a single point per key, still tells its keys apart."""
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    values: list[float] = []
    epochs: list[int] = []
    for i, (name, metrics) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for j, (key, style, marker, _) in enumerate(keys):
            pts = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
            if pts:
                # One legend entry per run (its colour); the line style and marker tell the keys apart.
                label = name if j == len(keys) - 1 else None
                ax.plot(*zip(*pts, strict=True), style, color=color, label=label, marker=marker, ms=5,
                        mfc="white" if marker == "s" else color)
                values += [v for _, v in (pts[1:] if len(pts) > 2 else pts)]
                epochs += [e for e, _ in pts]
    if log:
        ax.set_yscale("log")
    elif values:
        # The first epoch's loss dwarfs the rest: frame the curves from the second epoch on (with three
        # epochs or more; two would leave one point per line in the frame).
        low, high = min(values), max(values)
        ax.set_ylim(low - 0.03 * (high - low), high + 0.03 * (high - low))
    if epochs and min(epochs) == max(epochs):  # a single epoch: its tick, not a range around it
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5" ticks
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        described = [k for k in keys if k[3]]
        if len(described) > 1:  # the keys' styles, in grey, after the runs' colours
            handles += [Line2D([], [], color="grey", ls=style, marker=marker, mfc="white" if marker == "s"
                               else "grey") for _, style, marker, _ in described]
            labels += [text for *_, text in described]
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # every run stopped before its first epoch ended
        ax.text(0.5, 0.5, "no finished epoch", ha="center", va="center", transform=ax.transAxes)
    return html.png_bytes(fig)


def learning_curves(runs: Mapping[str, Sequence[dict[str, Any]]]) -> bytes:
    return _curve_figure(runs, [_TRAIN, _TEST], "−ELBO (nats per image)")


#: the caption of :func:`learning_curves`, true for one epoch (a point per key) and for many (lines)
LEARNING_CAPTION = ("−ELBO per image: training batches dashed with squares (the mean over the epoch's "
                    "batches), test set solid with dots (one z per image; the last epoch's with the final "
                    "evaluation's z per image, as in the test-set table)")


def variance_curves(runs: Mapping[str, Sequence[dict[str, Any]]]) -> bytes:
    return _curve_figure(runs, [_GRAD], "encoder gradient variance tr Cov(ĝ)", log=True)


def _options(config: TrainConfig) -> list[list[str]]:
    """The run's options as a reader would give them: no Python None, lists as their items."""
    absent = {"monitor_every": "once per epoch", "arch": "— (Gaussian latents)"}
    rows = []
    for key, value in config.to_dict().items():
        if value is None:
            value = absent.get(key, "—")
        elif isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value)
        rows.append([key, str(value)])
    return rows


def image_grid(images: torch.Tensor, shape: tuple[int, int], columns: int) -> bytes:
    """Images [N, H·W] in [0, 1] as a grid of ``columns`` per row."""
    rows = -(-images.shape[0] // columns)
    h, w = shape
    canvas = torch.zeros(rows * (h + 1), columns * (w + 1))  # 0 is white under gray_r
    for i, img in enumerate(images.detach().cpu().float()):
        r, c = divmod(i, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img.reshape(h, w)
    fig = Figure(figsize=(columns * 0.6, rows * 0.6))
    ax = fig.add_subplot()
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    return html.png_bytes(fig)


def latent_plot(loc: torch.Tensor, labels: torch.Tensor) -> bytes:
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    points = ax.scatter(*loc.detach().cpu().T.numpy(), c=labels.cpu().numpy(), cmap="tab10", s=6)
    fig.colorbar(points, ax=ax, label="digit")
    ax.set_xlabel("μ₁(x)")
    ax.set_ylabel("μ₂(x)")
    return html.png_bytes(fig)


def _summary_rows(summaries: Mapping[str, dict[str, Any]]) -> list[list[object]]:
    return [
        [
            name,
            s.get("k"),
            s.get("test_neg_elbo"),
            s.get("test_nll_iwae"),
            s.get("iwae_k"),
            s.get("kl"),
            s.get("active_units"),
            s.get("grad_var"),
            s.get("seconds_per_epoch"),
            s.get("monitor_share"),
        ]
        for name, s in summaries.items()
    ]


_SUMMARY_HEAD = [
    "estimator",
    "K",
    "test −ELBO",
    "test NLL (IWAE)",
    "IWAE K",
    "KL",
    "active units",
    "final grad_var",
    "s/epoch",
    "monitor share",
]


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def run_report(out: str | Path, device: str = "cpu") -> Path:
    """Write ``OUT/report.html`` for the run in ``out``; returns its path."""
    out = Path(out)
    config, run = load_run(out, device)
    metrics = read_metrics(out)
    summary = _read_summary(out)
    model = run.model.eval()
    gen = make_generator(config.seed, run.test.device)
    originals = run.test[:16]
    with torch.no_grad():
        recon = model.reconstruct(originals)
        samples = model.sample(32, gen)
    parts = [
        _objective(),
        html.section("Run", html.table(["option", "value"], _options(config))),
    ]
    if summary:
        note = collapse_note(summary.get("active_units"), config.latent, summary.get("kl"))
        parts.append(
            html.section("Test set", html.table(_SUMMARY_HEAD, _summary_rows({config.estimator: summary})),
                         *([html.paragraph(note)] if note else []))
        )
    parts += [
        html.section(
            "Learning curves",
            html.figure(
                learning_curves({config.estimator: metrics}), LEARNING_CAPTION,
            ),
        ),
        _variance_section({config.estimator: metrics}),
        *_monitor_section({config.estimator: out}, config),
        html.section(
            "Reconstructions",
            html.figure(
                image_grid(torch.cat([originals, recon]), run.data.shape, 16),
                "top: test images; bottom: E[x | z = μ(x)]" if config.latent_dist == "gaussian"
                else "top: test images; bottom: E[x | b] at the posterior mode b = 1[q(b_u = 1 | x) > ½]",
            ),
        ),
        html.section(
            "Samples", html.figure(image_grid(samples, run.data.shape, 16),
                                   "E[x | z], z ~ N(0, I)" if config.latent_dist == "gaussian"
                                   else "E[x | b], b ~ the learned prior Bernoulli(σ(prior logits))")
        ),
    ]
    if config.latent == 2 and config.latent_dist == "gaussian":  # binary latents: 4 points, no plot
        with torch.no_grad():
            loc, _ = model.encode(run.test)
        parts.append(
            html.section(
                "Latent space",
                html.figure(
                    latent_plot(loc, run.data.test_labels), "posterior means μ(x) of the test images"
                ),
            )
        )
    page = html.page(f"VAE trained with {config.estimator} on {config.dataset}", *parts)
    return write_atomic(out / REPORT, page)


def _variance_section(runs: Mapping[str, Sequence[dict[str, Any]]]) -> str:
    tracked = any(m.get("grad_var") is not None for ms in runs.values() for m in ms)
    if not tracked:
        return html.section("Gradient variance", html.paragraph("not measured (--monitor-repeats 0)"))
    return html.section(
        "Gradient variance",
        html.figure(
            variance_curves(runs), "trace of the encoder gradient's covariance on a fixed batch (log scale)"
        ),
    )


def _monitor_section(runs: Mapping[str, str | Path], config: TrainConfig) -> list[str]:
    """The monitor's plot of the runs ``label -> folder`` (one line style per group); none without records."""
    records = []
    for label, folder in runs.items():
        path = Path(folder) / MONITOR
        if path.is_file():
            records += [{**r, "run": label} for r in read_jsonl(path)]
    if not records:
        return []
    every = "once per epoch" if config.monitor_every is None else f"every {config.monitor_every} Adam steps"
    measured = (f"R = {config.var_repeats} gradient estimates {every} on a fixed batch of {config.var_batch} "
                "training images, per parameter group")
    caption = measured + "; shaded: ± 2 standard errors (log scales)"
    took = ""
    shares = [s.get("monitor_share") for s in (_read_summary(Path(f)) for f in runs.values())]
    shares = [s for s in shares if s is not None]
    if shares:
        took = "; the monitor took " + (
            f"{shares[0]:.1%}" if len(shares) == 1 else f"{min(shares):.1%}–{max(shares):.1%}"
        ) + " of the training time"
        caption += took
    series = ("run",) if len(runs) > 1 else ()
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        counts[r["run"], r["group"]] = counts.get((r["run"], r["group"]), 0) + 1
    if max(counts.values()) < 2:  # one point per line: a plot would be empty axes
        steps = ", ".join(str(s) for s in dict.fromkeys(r["step"] for r in records))
        why = (f"One measurement per group (after Adam step {steps}): a curve needs two. Measure more often "
               "(--monitor-every N Adam steps) or train for more epochs to see the variance change. ")
        rows = [[*([r["run"]] if series else []), r["step"], r["group"], r["variance"], r["variance_stderr"],
                 r["snr"]] for r in records]
        head = [*(["run"] if series else []), "step", "group", "variance tr Cov(ĝ)", "± se", "SNR"]
        return [html.section("Gradient monitor", html.paragraph(why + measured + took + "."),
                             html.table(head, rows))]
    title = "Gradient variance while training" + ("" if series else f": {next(iter(runs))}")
    figure = plot(records, title=title, series=series)
    return [html.section("Gradient monitor", html.figure(html.png_bytes(figure), caption))]


def compare_report(
    out: str | Path,
    runs: Mapping[str, str | Path],
    stopped: Mapping[str, str] | None = None,
    setting: TrainConfig | None = None,
) -> Path:
    """Write ``OUT/report.html`` putting the runs ``label -> folder`` side by side.

    ``stopped``: label -> message of the runs that stopped on a non-finite loss; their curves run
    up to the last good epoch (none if it was the first) and their test figures are blank.
    ``setting``: the shared options, shown when no run got as far as saving its config.json.
    """
    out = Path(out)
    stopped = dict(stopped or {})
    metrics = {
        label: read_metrics(folder) if (Path(folder) / METRICS).is_file() else []
        for label, folder in runs.items()
    }
    summaries = {label: _read_summary(Path(folder)) for label, folder in runs.items()}
    saved = [Path(f) for f in runs.values() if (Path(f) / CONFIG).is_file()]
    if not saved and setting is None:
        raise GradestError("no run saved its config.json; pass setting= (the runs' shared options)")
    first = TrainConfig.from_dict(_read_config(saved[0])) if saved else setting
    parts = [
        _objective(),
        html.section(
            "Setting",
            html.paragraph(
                f"dataset {first.dataset}, binarize {first.binarize}, hidden {list(first.hidden)}, latent "
                f"{first.latent}, batch {first.batch_size}, Adam lr {first.lr}, seed {first.seed}; "
                "the same data and seed for every estimator"
            ),
        ),
        html.section("Test set", html.table(_SUMMARY_HEAD, _summary_rows(summaries)), *(
            html.paragraph(f"{label}: {note}") for label, s in summaries.items() if s
            for note in [collapse_note(s.get("active_units"), first.latent, s.get("kl"))] if note)),
    ]
    if stopped:
        parts.append(
            html.section(
                "Stopped runs", *(html.paragraph(f"{label}: {text}") for label, text in stopped.items())
            )
        )
    parts += [
        html.section(
            "Learning curves",
            html.figure(learning_curves(metrics), LEARNING_CAPTION),
        ),
        _variance_section(metrics),
        *_monitor_section(runs, first),
    ]
    return write_atomic(out / REPORT, html.page("VAE estimators compared", *parts))


def _read_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / CONFIG).read_text())
