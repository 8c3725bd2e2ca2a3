"""Same seeded outputs from two source trees: every ``gradest`` command, byte for byte.

    python benchmarks/same_outputs.py OLD_SRC NEW_SRC [--keep DIR] [--only NAME ...]

OLD_SRC and NEW_SRC are source trees (a checkout's root or its ``src`` folder). Every command of the
command line (compare, gaussian, sweep, advise, discrete, blr, vae train, vae eval, vae compare) runs
once with each tree, with small seeded settings, one thread, in a folder of its own; then every file
written is compared:

* ``identical bytes``;
* ``identical except timing (...)``: equal once the fields that hold measured times are removed —
  JSON/JSONL keys and CSV columns whose name says time (seconds, time, wall, elapsed, duration, date,
  µs, monitor_share), the selection's ranking, which is ordered by variance × measured time
  (advise: recommendation, reason, near_tie, efficiency, relative, the candidates' order), HTML table
  columns headed by a time and sentences quoting one ("took 9.0 s", "took 21.0% of the training
  time"); the figures embedded in HTML are compared byte for byte, as the PNG files are;
* ``DIFFERENT``: with the first differing lines.

The console output of each command is compared the same way: rich's tables cell by cell without the
columns headed by a time (their width moves the borders), lines stripped, elapsed times ("0:00:01",
"2.3 s") masked; advise's console table is ranked by measured time and is left out. A checkpoint
(``.pt``) whose bytes differ (it holds the metrics, with their seconds) is loaded as plain data
(``weights_only``) and compared value by value, tensors exactly, timing keys removed.

Exit status 0 when everything is the same, 1 when anything differs, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import csv
import difflib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: words that, in a key's or a column's name, say it holds a measured time ("s/epoch", "µs/sample")
TIMING_WORDS = {"s", "sec", "secs", "second", "seconds", "time", "times", "timing", "wall", "elapsed",
                "duration", "date", "timestamp", "clock", "ms", "µs", "us"}
#: advise ranks by variance × seconds per sample: these are computed from the measured time
RANKING_KEYS = {"recommendation", "reason", "near_tie", "efficiency", "relative", "efficiency_interval"}
#: a duration written in prose or by rich's progress bars, by the name the report gives it
TIMING_TEXT = {
    "elapsed h:mm:ss": re.compile(r"\b\d+:\d\d:\d\d\b"),
    "durations 'N s'": re.compile(r"(?<![\w.])\d[\d.,]*(?:e[-+]?\d+)?[ \u00a0\u202f](?:s|ms|µs|min)"
                                  r"(?![\w/])"),
    "'N% of the … time'": re.compile(r"\d[\d.]*%(?:\s*[–-]\s*\d[\d.]*%)? of the (?:\w+ )?time"),
}
PNG_DATA = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")

VAE = "--dataset digits --hidden 8 --batch-size 256 --iwae-k 4"


@dataclass
class Command:
    name: str
    args: str  # the command line after ``gradest``
    #: what it writes, relative to the run folder
    outputs: list[str]
    console: bool = True

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.args)


#: every command, small and seeded, with options that exist at every commit of the module split
COMMANDS = [
    Command("compare-normal", "compare --dist normal --param loc=1 --param scale=1 --cost cos --k 2 "
            "--estimator pathwise --estimator score --estimator score-loo --estimator mvd "
            "--estimator score-delta=2 --samples 2000 --seed 0 --json compare-normal.json",
            ["compare-normal.json"]),
    Command("compare-bernoulli", "compare --dist bernoulli --param probs=[0.3,0.6] --cost square --k 0.45 "
            "--estimator score --estimator arm --estimator rebar --estimator enumerate --samples 2000 "
            "--seed 2 --json compare-bernoulli.json", ["compare-bernoulli.json"]),
    Command("compare-gamma", "compare --dist gamma --param concentration=2 --param rate=1 --cost square "
            "--estimator pathwise --estimator score-optb --samples 2000 --seed 1 --json compare-gamma.json",
            ["compare-gamma.json"]),
    Command("gaussian", "gaussian --steps 20 --samples-per-step 8 --seed 3 --out gaussian", ["gaussian"]),
    Command("sweep", "sweep --cost square --cost cos --k 0.5,2 --estimator pathwise --estimator score "
            "--estimator mvd --samples 500 --seed 4 --threads 1 --out sweep", ["sweep"]),
    # its console table is ranked by variance × measured time: not compared (advise.json is, ranking aside)
    Command("advise", "advise --dist normal --param loc=1 --param scale=1 --cost cos --samples 500 --seed 5 "
            "--threads 1 --json advise.json", ["advise.json"], console=False),
    Command("discrete", "discrete --samples 80 --bits 1,2 --t 0.45 --estimator score --estimator arm "
            "--estimator rebar --estimator relax --estimator gumbel-softmax=0.5 --sign-samples 1,4 "
            "--relax-steps 5 --seed 6 --threads 1 --out discrete", ["discrete"]),
    Command("blr", "blr --steps 4 --estimator pathwise --estimator score --estimator mvd-delta "
            "--variance-samples 8 --log-every 2 --samples 4 --seed 7 --threads 1 --out blr", ["blr"]),
    Command("vae-train", f"vae train {VAE} --latent 2 --estimator pathwise --epochs 2 --monitor-repeats 3 "
            "--seed 8 --out vae-train", ["vae-train"]),
    Command("vae-train-bernoulli", f"vae train {VAE} --latent 4 --latent-dist bernoulli "
            "--estimator vimco --k 2 --epochs 2 --monitor-repeats 3 --seed 9 --out vae-train-bernoulli",
            ["vae-train-bernoulli"]),
    Command("vae-eval", "vae eval vae-train --iwae-k 6 --seed 10 --json vae-eval.json", ["vae-eval.json"]),
    Command("vae-compare", f"vae compare {VAE} --latent 2 --estimator pathwise --estimator iwae:2 --epochs 1 "
            "--monitor-repeats 2 --seed 11 --out vae-compare", ["vae-compare"]),
]


def source(path: str) -> Path:
    p = Path(path).resolve()
    for cand in (p / "src", p):
        if (cand / "gradest" / "__init__.py").is_file():
            return cand
    raise SystemExit(f"error: {path} holds no gradest source (neither {p}/src/gradest nor {p}/gradest)")


def environment(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="120", LINES="50",
               TERM="dumb", NO_COLOR="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env.pop("FORCE_COLOR", None)
    return env


def check_import(python: str, src: Path) -> None:
    """``gradest`` must resolve to this tree, not to an installed copy."""
    out = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('gradest').origin)"],
                         env=environment(src), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(src):
        raise SystemExit(f"error: with PYTHONPATH={src}, gradest resolves to {out}")


def run_side(python: str, src: Path, folder: Path, commands: list[Command]) -> dict[str, tuple[int, float]]:
    folder.mkdir(parents=True)
    (folder / "console").mkdir()
    done = {}
    for c in commands:
        start = time.perf_counter()
        with open(folder / "console" / f"{c.name}.txt", "wb") as log:
            rc = subprocess.run([python, "-m", "gradest", *c.argv], cwd=folder, env=environment(src),
                                stdout=log, stderr=subprocess.STDOUT, timeout=900).returncode
        done[c.name] = (rc, time.perf_counter() - start)
        print(f"  {folder.name}: {c.name} rc={rc} {done[c.name][1]:.1f} s", file=sys.stderr, flush=True)
    return done


# --- comparison ---------------------------------------------------------------------------------------


@dataclass
class Verdict:
    status: str  # "identical bytes" | "identical except timing" | "DIFFERENT"
    detail: str = ""
    dropped: set[str] = field(default_factory=set)

    @property
    def same(self) -> bool:
        return self.status != "DIFFERENT"


def is_timing(name: str) -> bool:
    low = name.lower()
    words = set(re.findall(r"[a-zµ]+", low))
    return bool(TIMING_WORDS & words) or re.search(r"monitor.?share", low) is not None


def first_lines(a: str, b: str, n: int = 8, width: int = 220) -> str:
    diff = [line if len(line) <= width else line[:width] + "…"
            for line in difflib.unified_diff(a.splitlines(), b.splitlines(), "old", "new", n=0, lineterm="")]
    return "\n".join(diff[2:2 + n])


def first_position(a: str, b: str, context: int = 120) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, i - context)
    return f"at character {i}:\n  old …{a[lo:i + context]!r}\n  new …{b[lo:i + context]!r}"


def strip_json(value: object, dropped: set[str], ranked: bool) -> object:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if is_timing(k) or (ranked and k in RANKING_KEYS):
                dropped.add(k)
            else:
                out[k] = strip_json(v, dropped, ranked)
        return out
    if isinstance(value, list):
        items = [strip_json(v, dropped, ranked) for v in value]
        if ranked and items and all(isinstance(v, dict) and "estimator" in v for v in items):
            dropped.add("order of " + "candidates")
            items.sort(key=lambda v: str(v["estimator"]))
        return items
    return value


def compare_json(a: str, b: str, ranked: bool, lines: bool) -> Verdict:
    dropped: set[str] = set()
    if lines:
        ja = [strip_json(json.loads(x), dropped, ranked) for x in a.splitlines() if x.strip()]
        jb = [strip_json(json.loads(x), dropped, ranked) for x in b.splitlines() if x.strip()]
    else:
        ja, jb = strip_json(json.loads(a), dropped, ranked), strip_json(json.loads(b), dropped, ranked)
    if ja == jb:
        return Verdict("identical except timing", dropped=dropped)
    da = json.dumps(ja, indent=1, sort_keys=True, ensure_ascii=False)
    db = json.dumps(jb, indent=1, sort_keys=True, ensure_ascii=False)
    removed = ", ".join(sorted(dropped)) or "nothing"
    return Verdict("DIFFERENT", f"with {removed} removed:\n{first_lines(da, db)}")


def compare_csv(a: str, b: str) -> Verdict:
    ra, rb = list(csv.reader(io.StringIO(a))), list(csv.reader(io.StringIO(b)))
    if not ra or not rb or ra[0] != rb[0]:
        return Verdict("DIFFERENT", first_lines(a, b))
    keep = [i for i, h in enumerate(ra[0]) if not is_timing(h)]
    dropped = {h for h in ra[0] if is_timing(h)}
    ca = "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in ra)
    cb = "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rb)
    if ca == cb:
        return Verdict("identical except timing", dropped=dropped)
    return Verdict("DIFFERENT", f"with {', '.join(sorted(dropped))} removed:\n{first_lines(ca, cb)}")


def mask_text(text: str, dropped: set[str]) -> str:
    for label, pattern in TIMING_TEXT.items():
        text, n = pattern.subn("‹time›", text)
        if n:
            dropped.add(label)
    return text


def console_text(text: str, dropped: set[str]) -> str:
    """rich's tables cell by cell, without the columns headed by a time (whose width moves the borders
    and the centred titles), each line stripped, durations masked."""
    out, heads, gone = [], [], set()
    for line in text.splitlines():
        if line.lstrip().startswith("┏"):
            heads, gone = [], set()
        if "┃" in line:
            cells = [c.strip() for c in re.split(r"[┃]", line)[1:-1]]
            same_table = len(heads) == len(cells)
            heads = [f"{h} {c}".strip() for h, c in zip(heads, cells, strict=True)] if same_table else cells
            gone = {i for i, h in enumerate(heads) if is_timing(h)}
            dropped.update(f"console column '{heads[i]}'" for i in gone)
            line = "┃".join(c for i, c in enumerate(cells) if i not in gone)
        elif "│" in line:
            cells = [c.strip() for c in line.split("│")[1:-1]]
            line = "│".join(c for i, c in enumerate(cells) if i not in gone)
        elif line.strip() and set(line.strip()) <= set("┏┓┗┛┡┩┢┪┣┫┳┻╇╈╋━─┌┐└┘├┤┬┴┼╭╮╰╯"):
            line = "‹border›"
        out.append(line.strip())
    return mask_text("\n".join(out), dropped)


def drop_html_columns(html: str, dropped: set[str]) -> str:
    """Remove the cells of every table column whose header names a time."""
    def table(m: re.Match) -> str:
        t = m.group(0)
        heads = re.findall(r"<th[^>]*>(.*?)</th>", t, flags=re.S)
        gone = [i for i, h in enumerate(heads) if is_timing(re.sub(r"<[^>]+>", "", h))]
        if not gone:
            return t
        dropped.update(f"column '{re.sub(r'<[^>]+>', '', heads[i])}'" for i in gone)

        def row(r: re.Match) -> str:
            cells = re.findall(r"<t[hd][^>]*>.*?</t[hd]>", r.group(1), flags=re.S)
            return "<tr>" + "".join(c for i, c in enumerate(cells) if i not in gone) + "</tr>"
        return re.sub(r"<tr[^>]*>(.*?)</tr>", row, t, flags=re.S)
    return re.sub(r"<table.*?</table>", table, html, flags=re.S)


def compare_html(a: str, b: str) -> Verdict:
    pa, pb = PNG_DATA.findall(a), PNG_DATA.findall(b)
    figures = ""
    if len(pa) != len(pb):
        return Verdict("DIFFERENT", f"{len(pa)} embedded figures against {len(pb)}")
    pairs = enumerate(zip(pa, pb, strict=True))
    differing = [i for i, (x, y) in pairs if base64.b64decode(x) != base64.b64decode(y)]
    if differing:
        figures = f"embedded figures {', '.join(str(i + 1) for i in differing)} of {len(pa)} differ; "
    dropped: set[str] = set()
    ta = mask_text(drop_html_columns(PNG_DATA.sub("‹png›", a), dropped), dropped)
    tb = mask_text(drop_html_columns(PNG_DATA.sub("‹png›", b), dropped), dropped)
    if ta == tb and not differing:
        return Verdict("identical except timing", dropped=dropped)
    text = "text identical except timing" if ta == tb else "text " + first_position(ta, tb)
    return Verdict("DIFFERENT", figures + text)


def compare_checkpoint(pa: Path, pb: Path) -> Verdict:
    import torch

    def load(p: Path) -> object:
        return torch.load(p, map_location="cpu", weights_only=True)

    def same(x: object, y: object, path: str, dropped: set[str]) -> str | None:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            ok = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
            return None if ok else f"{path}: tensors differ"
        if isinstance(x, dict) and isinstance(y, dict):
            keys = [k for k in x if not (isinstance(k, str) and is_timing(k))]
            dropped.update(k for k in x if isinstance(k, str) and is_timing(k))
            if set(keys) != {k for k in y if not (isinstance(k, str) and is_timing(k))}:
                return f"{path}: keys {sorted(map(str, x))} against {sorted(map(str, y))}"
            return next((d for k in keys if (d := same(x[k], y[k], f"{path}[{k!r}]", dropped))), None)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                return f"{path}: {len(x)} items against {len(y)}"
            pairs = enumerate(zip(x, y, strict=True))
            return next((d for i, (u, v) in pairs if (d := same(u, v, f"{path}[{i}]", dropped))), None)
        if type(x).__name__ != type(y).__name__:
            return f"{path}: {type(x).__name__} against {type(y).__name__}"
        return None if x == y or (x != x and y != y) else f"{path}: {x!r} against {y!r}"

    try:
        dropped: set[str] = set()
        problem = same(load(pa), load(pb), "checkpoint", dropped)
    except Exception as e:  # the comparison reports what it could not load
        return Verdict("DIFFERENT", f"bytes differ and loading failed: {type(e).__name__}: {e}")
    if problem:
        return Verdict("DIFFERENT", problem)
    return Verdict("identical except timing", "bytes differ, every tensor and value equal", dropped)


def compare_file(pa: Path, pb: Path, ranked: bool = False, console: bool = False) -> Verdict:
    a, b = pa.read_bytes(), pb.read_bytes()
    if a == b:
        return Verdict("identical bytes")
    suffix = pa.suffix.lower()
    if suffix == ".png":
        return Verdict("DIFFERENT", f"PNG bytes differ ({len(a)} against {len(b)} bytes)")
    if suffix == ".pt":
        return compare_checkpoint(pa, pb)
    ta, tb = a.decode("utf-8", "replace"), b.decode("utf-8", "replace")
    try:
        if suffix in (".json", ".jsonl"):
            return compare_json(ta, tb, ranked, suffix == ".jsonl")
        if suffix == ".csv":
            return compare_csv(ta, tb)
    except ValueError as e:
        return Verdict("DIFFERENT", f"unreadable: {e}\n{first_lines(ta, tb)}")
    if suffix in (".html", ".htm"):
        return compare_html(ta, tb)
    dropped: set[str] = set()
    normal = console_text if console else mask_text
    ma, mb = normal(ta, dropped), normal(tb, dropped)
    if ma == mb:
        return Verdict("identical except timing", dropped=dropped)
    return Verdict("DIFFERENT", first_lines(ma, mb))


def files_of(root: Path, outputs: list[str]) -> set[str]:
    found = set()
    for out in outputs:
        p = root / out
        if p.is_file():
            found.add(out)
        elif p.is_dir():
            found |= {str(f.relative_to(root)) for f in p.rglob("*") if f.is_file()}
    return found


def compare_command(c: Command, old: Path, new: Path, rcs: tuple[int, int]) -> list[tuple[str, Verdict]]:
    rows: list[tuple[str, Verdict]] = []
    if rcs[0] != rcs[1]:
        rows.append(("exit status", Verdict("DIFFERENT", f"{rcs[0]} against {rcs[1]}")))
    elif rcs[0] != 0:
        rows.append(("exit status", Verdict("DIFFERENT", f"both failed with {rcs[0]}: the command list needs "
                                                         "fixing (see console)")))
    if c.console:
        log = f"console/{c.name}.txt"
        rows.append((log, compare_file(old / log, new / log, console=True)))
    fa, fb = files_of(old, c.outputs), files_of(new, c.outputs)
    for f in sorted(fa | fb):
        if f not in fb or f not in fa:
            rows.append((f, Verdict("DIFFERENT", f"only written by {'old' if f in fa else 'new'}")))
        else:
            rows.append((f, compare_file(old / f, new / f, ranked=c.name == "advise")))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the source tree before (a checkout or its src folder)")
    parser.add_argument("new", help="the source tree after")
    parser.add_argument("--keep", type=Path, help="write the runs here (old/, new/) and keep them")
    parser.add_argument("--only", action="append", choices=[c.name for c in COMMANDS],
                        help="run only this command (repeatable; vae-eval needs vae-train)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (default: this one)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: compare the runs already there instead of running again")
    args = parser.parse_args(argv)
    old, new = source(args.old), source(args.new)
    for src in (old, new):
        check_import(args.python, src)
    commands = [c for c in COMMANDS if not args.only or c.name in args.only]
    if args.reuse:
        if not args.keep:
            parser.error("--reuse needs --keep DIR")
        base = args.keep.resolve()
        done = json.loads((base / "runs.json").read_text())
        return report(old, new, base, commands, done["old"], done["new"])
    if args.keep:
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep} is not empty")
        base = args.keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="same-outputs-"))
    try:
        rc_old = run_side(args.python, old, base / "old", commands)
        rc_new = run_side(args.python, new, base / "new", commands)
        (base / "runs.json").write_text(json.dumps({"old": rc_old, "new": rc_new}))
        return report(old, new, base, commands, rc_old, rc_new)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def report(old: Path, new: Path, base: Path, commands: list[Command], rc_old: dict, rc_new: dict) -> int:
    """Print the table; 1 where anything differs."""
    print(f"old: {old}\nnew: {new}\n")
    print(f"{'command':<22} {'file':<52} result")
    different = 0
    for c in commands:
        rows = compare_command(c, base / "old", base / "new", (rc_old[c.name][0], rc_new[c.name][0]))
        for f, v in rows:
            extra = f" ({', '.join(sorted(v.dropped))})" if v.dropped else ""
            print(f"{c.name:<22} {f:<52} {v.status}{extra}")
            if v.detail and not v.same:
                print("    " + v.detail.replace("\n", "\n    "))
            elif v.detail:
                print(f"    {v.detail}")
            different += not v.same
        took = f"{rc_old[c.name][1]:.1f} s / {rc_new[c.name][1]:.1f} s"
        print(f"{'':<22} {'(wall time old / new)':<52} {took}")
    files = sum(1 for _ in (base / "old").rglob("*") if _.is_file())
    print(f"\n{different} DIFFERENT of the compared files and console outputs ({files} files per side)"
          if different else f"\nall the same ({files} files per side)")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
