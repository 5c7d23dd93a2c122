"""The README's FULL-mode results table: every model of the series trained on CamVid with `python -m seglearn train`.

Each row is one command: a model's FULL recipe as its registration declares it (``seglearn.models.full_recipes()``;
367 train images at 360x480, batch 8, SGD with poly decay unless said otherwise), scored on the 101 val images by
``seglearn.evaluate`` at the end of training, from scratch (no ImageNet weights). A run writes
``runs/full/<row>/run.json``; the table is made from those files, so every number in it comes from the command
printed beside it. A chapter notebook executed in FULL mode on CamVid leaves a record of the same kind
(``notebooks/runs/chapters``); it takes its row's place, with the notebook command, so the executed chapters and the
table show the same runs and a GPU trains each model once.

    python benchmarks/full_results.py --list                   # the roster: each row's exact command
    python benchmarks/full_results.py --rows segnet unet        # train these rows (a GPU), skipping finished ones
    python benchmarks/full_results.py --rows --jobs 3 --stop-after 540 --pack rows.tgz   # all rows, 3 at once
    python benchmarks/full_results.py --table                   # the markdown table from runs/full/*/run.json
    python benchmarks/full_results.py --table --update-readme   # ... written into README.md between its markers

``--stop-after S`` ends the invocation within S seconds (a row still running then is stopped; its checkpoint stays):
each row gets a ``--time-budget`` of the time left minus ``--margin`` (see MARGIN_S). The next invocation resumes
unfinished rows exactly (``--resume``); the table shows finished rows with their canonical command (no ``--resume``
or ``--time-budget``). ``--pack`` bundles the small result files (never model.pt or checkpoints) with paths relative
to the repository root, so ``tar xzf`` in a checkout restores them; it also runs after a failed row.

CamVid is found as by every seglearn command (``SEGLEARN_DATA`` or ``data/``; ``python -m seglearn download camvid``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from seglearn.models import Recipe, full_recipes

REPO_ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- full-results:begin -->", "<!-- full-results:end -->"
# --stop-after: fit stops after the epoch in which its budget runs out, so the margin holds a row's start-up (imports,
# CUDA, data, model: ~20 s), that epoch (a resumed row adds its longest epoch so far), the final evaluation and the
# files it writes; rows with fewer than 30 s of training left wait for the next invocation.
MARGIN_S, MIN_BUDGET_S = 60.0, 30.0
RESULT_FILES = ("run.json", "history.json", "scores.json", "curves.png", "train.log")  # what --pack takes per row
NOTES = "row.json"  # the runner's own record of a row: canonical command, epochs, parts started


@dataclass(frozen=True)
class Row:
    """One row of the table: its name, the model, and the model's FULL recipe it trains (from the registry)."""

    row: str
    model: str
    recipe: Recipe

    @property
    def note(self) -> str:
        return self.recipe.note


def roster(dataset: str = "camvid") -> list[Row]:
    """Every FULL row on ``dataset``, in roster order: ``seglearn.models.full_recipes(dataset)``, where each model
    declares its recipes (the chapters train the same ones, so the executed notebooks and this table describe the
    same training). The README's table is CamVid's; ``--dataset voc`` runs the papers' VOC rows."""
    return [Row(recipe.row, info.name, recipe) for info, recipe in full_recipes(dataset)]


def recipe_options(recipe: Recipe) -> list[str]:
    """The ``seglearn train`` options of a recipe beyond the ones every row shares (model, data, crop, batch, epochs,
    lr): a non-default optimizer or weight decay, the backbone and other model keywords, the aux head, class weights,
    the split, schedule, rate multipliers, rotation and ImageNet init."""
    options = ["--optimizer", recipe.optimizer] if recipe.optimizer != "sgd" else []
    options += ["--weight-decay", f"{recipe.weight_decay:g}"] if recipe.weight_decay != 1e-4 else []
    kwargs = dict(recipe.model_kwargs)
    options += ["--backbone", str(kwargs.pop("backbone"))] if "backbone" in kwargs else []
    for key, value in kwargs.items():
        options += ["--model-arg", f"{key}={value}"]
    options += ["--aux-loss"] if recipe.aux_loss else []
    options += ["--class-weights", recipe.class_weights] if recipe.class_weights else []
    options += ["--split", recipe.split] if recipe.split != "train" else []
    options += ["--schedule", recipe.schedule] if recipe.schedule != "poly" else []
    options += [a for p, m in recipe.lr_mult.items() for a in ("--lr-mult", f"{p}={m:g}")]
    options += ["--rotate", f"{recipe.rotate:g}"] if recipe.rotate else []
    options += ["--pretrained-backbone"] if recipe.pretrained_backbone else []
    return options


def command(r: Row, out_root: Path, *, epochs: int | None = None, workers: int = 8, extra: list[str] = ()) -> list[str]:
    """The ``python -m seglearn train ...`` argv of a row (``epochs`` overrides the recipe's)."""
    recipe = r.recipe
    argv = ["python", "-m", "seglearn", "train", "--model", r.model, "--dataset", recipe.dataset]
    argv += ["--crop", *map(str, recipe.crop), "--batch-size", str(recipe.batch_size)]
    argv += ["--epochs", str(epochs or recipe.epochs), "--lr", f"{recipe.lr:g}", *recipe_options(recipe)]
    argv += ["--preload"] * (recipe.dataset == "camvid")  # VOC trainaug decoded would take ~7 GB of RAM
    argv += ["--workers", str(workers), "--seed", "0", "--out", str(out_root / r.row), *extra]
    return argv


def _drop(argv: list[str], flags: dict[str, int]) -> list[str]:
    """``argv`` without each flag in ``flags`` and the number of values it takes."""
    out, i = [], 0
    while i < len(argv):
        out += [] if argv[i] in flags else [argv[i]]
        i += 1 + flags.get(argv[i], 0)
    return out


def same_run(a: str, b: str) -> bool:
    """Whether two row commands train the same run: equal up to ``--workers``, ``--out`` and the part flags."""
    flags = {"--workers": 1, "--out": 1, "--resume": 0, "--time-budget": 1}
    return _drop(shlex.split(a), flags) == _drop(shlex.split(b), flags)


def target_epochs(run: dict) -> int | None:
    """The epochs a run was asked for (the runner's ``row_epochs``, else its command's ``--epochs``), or None."""
    if "row_epochs" in run:
        return int(run["row_epochs"])
    argv = shlex.split(run.get("row_command") or run.get("command", ""))
    return int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv[:-1] else None


def is_finished(run: dict) -> bool:
    """A run.json (or chapter record) of a whole run: not stopped early, and all the epochs it was asked for."""
    target = target_epochs(run)
    return not run.get("stopped_early", False) and (target is None or run["epochs"] >= target)


def time_budget(left: float, margin: float, min_budget: float) -> float | None:
    """A row's ``--time-budget`` ``left`` s before the deadline: ``left - margin``; None (don't start) under min."""
    return left - margin if left > 0 and left - margin >= min_budget else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class _Job:
    row: str
    out: Path
    argv: list[str]  # what runs, with --resume/--time-budget
    notes: dict  # NOTES: row_command, row_epochs, parts, part_commands
    epoch_s: float = 0.0  # the longest epoch of earlier parts, added to the margin
    proc: subprocess.Popen | None = None
    log: IO[str] | None = None
    t_start: float = 0.0


def _plan(r: Row, out: Path, canonical: list[str]) -> _Job | str | None:
    """What to do with a row: None when finished, a message when its folder holds another command's unfinished run,
    else the job that starts it, or resumes it from its checkpoint with the command it was started with."""
    run, notes = _read(out / "run.json"), _read(out / NOTES) or {}
    if run is not None and is_finished(run):
        return None
    resume = (out / "checkpoints" / "last.pt").is_file()
    if not resume and run is not None:  # stopped early, but its checkpoint is gone (e.g. a fresh machine)
        print(f"{r.row}: {out / 'run.json'} is unfinished and has no checkpoint; training it from the start")
        shutil.rmtree(out)
    recorded = (run or {}).get("row_command") or notes.get("row_command") or (run or {}).get("command")
    recorded = shlex.join(_drop(shlex.split(recorded if resume and recorded else shlex.join(canonical)),
                                {"--resume": 0, "--time-budget": 1}))  # fmt: skip
    if not same_run(recorded, shlex.join(canonical)):
        return (f"{r.row}: {out} holds an unfinished run of another command ({recorded}); run that command's "
                f"--epochs and options to resume it, or --force to start this one")  # fmt: skip
    argv = shlex.split(recorded)  # its own --workers too: they seed the augmentations, and resume is exact
    if "--out" in argv[:-1]:
        argv[argv.index("--out") + 1] = str(out)
    notes = {"row_command": recorded, "row_epochs": target_epochs({"command": recorded}), "parts": 0,
             "part_commands": [], **(notes if resume else {})}  # fmt: skip
    history = (_read(out / "history.json") if resume else None) or {}
    return _Job(r.row, out, argv + ["--resume"] * resume, notes, epoch_s=max(history.get("epoch_time") or [0.0]))


def _start(job: _Job, budget: float | None, env: dict[str, str]) -> None:
    argv = job.argv + ([] if budget is None else ["--time-budget", f"{budget:.2f}"])
    job.notes["parts"] += 1
    job.notes["part_commands"].append(shlex.join(argv))
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / NOTES).write_text(json.dumps(job.notes, indent=2))
    print(f"{job.row}: part {job.notes['parts']}: {shlex.join(argv)}", flush=True)
    job.log = open(job.out / "train.log", "a")  # noqa: SIM115 -- closed in _finish; every part appends
    print(f"=== part {job.notes['parts']}: {shlex.join(argv)}", file=job.log, flush=True)
    job.t_start = time.monotonic()
    # tqdm bars go to stderr, the score table to stdout; a session of its own, so a deadline stops its workers too
    job.proc = subprocess.Popen([sys.executable, *argv[1:]], stdout=job.log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def _stop(job: _Job) -> None:
    """End a row's process group (the run and its DataLoader workers; POSIX): SIGTERM, then SIGKILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if job.proc.poll() is None:
            os.killpg(job.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.proc.wait(timeout=10)
    job.log.close()


def _finish(job: _Job) -> str | None:
    """Report a part that ended: its failure message (format kept from the serial runner), or None."""
    job.log.close()
    code, log = job.proc.wait(), job.out / "train.log"
    if code != 0 or not (job.out / "run.json").is_file():
        tail = log.read_text().splitlines()[-5:]
        return f"{job.row} failed (exit {code}); {log} ends with:\n" + "\n".join(tail)
    run = json.loads((job.out / "run.json").read_text())
    parts = job.notes["parts"]
    run.update(row=job.row, row_command=job.notes["row_command"], row_epochs=job.notes["row_epochs"],
               parts=parts, resumed=parts - 1, part_commands=job.notes["part_commands"])  # fmt: skip
    (job.out / "run.json").write_text(json.dumps(run, indent=2))
    said = f"mIoU {100 * run['miou']:.1f} in {run['wall_s']:.0f} s, {run['images_per_s']:.0f} images/s"
    part = f" (part {parts} took {time.monotonic() - job.t_start:.0f} s)"
    if is_finished(run):
        print(f"{job.row}: {said}{part}", flush=True)
    else:
        print(f"{job.row}: stopped early at {run['epochs']}/{run['row_epochs']} epochs, {said}{part}; "
              "the next invocation resumes it", flush=True)  # fmt: skip
    return None


def train(rows: list[Row], out_root: Path, *, epochs: int | None, workers: int, extra: list[str], force: bool,
          jobs: int = 1, stop_after: float | None = None, margin: float = MARGIN_S,
          min_budget: float = MIN_BUDGET_S) -> list[str]:  # fmt: skip
    """Run the rows' commands, ``jobs`` at a time (a log beside each run.json); finished rows are skipped unless
    ``force``, unfinished ones resumed. Returns the failures' messages: one failing row does not stop the others."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    failures: list[str] = []
    queue: list[_Job] = []
    for r in rows:
        out = out_root / r.row
        if force and out.exists():
            shutil.rmtree(out)
        plan = _plan(r, out, command(r, out_root, epochs=epochs, workers=workers, extra=extra))
        if plan is None:
            print(f"{r.row}: done already ({out / 'run.json'}); --force trains it again", flush=True)
        elif isinstance(plan, str):
            print(plan, flush=True)
            failures.append(plan)
        else:
            queue.append(plan)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # concurrent rows share the CPU cores instead of oversubscribing
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    running: list[_Job] = []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                budget = None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    budget = time_budget(left, margin + queue[0].epoch_s, min_budget)
                    if budget is None:
                        late = f"not started, {left:.0f} s left (< --margin + --min-budget); the next run trains it"
                        print("\n".join(f"{job.row}: {late}" for job in queue), flush=True)
                        queue.clear()
                        break
                _start(queue[0], budget, env)
                running.append(queue.pop(0))
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                failures += [msg for msg in [_finish(job)] if msg]
            if deadline is not None and time.monotonic() >= deadline:
                for job in running:
                    _stop(job)
                    print(f"{job.row}: stopped at the --stop-after deadline; the next invocation resumes it from "
                          "its last checkpoint", flush=True)  # fmt: skip
                running.clear()
            time.sleep(0.1)
    finally:  # an error or Ctrl-C here must not leave rows training in their own sessions
        for job in running:
            _stop(job)
    return failures


def pack(path: Path, rows: list[Row], out_root: Path, chapters: Path | None, root: Path = REPO_ROOT) -> list[str]:
    """Write ``path`` (.tgz): each row's RESULT_FILES under ``out_root`` and the FULL chapter records, named relative
    to ``root`` so that ``tar xzf`` there restores them. Returns the names."""
    files = [out_root / r.row / name for r in rows for name in RESULT_FILES if (out_root / r.row / name).is_file()]
    for record in sorted(chapters.glob("*.json")) if chapters is not None and chapters.is_dir() else []:
        if json.loads(record.read_text()).get("mode") == "FULL":
            files.append(record)
    base, names = Path(os.path.abspath(root)), []
    for f in files:
        try:
            names.append(Path(os.path.abspath(f)).relative_to(base).as_posix())
        except ValueError:
            raise SystemExit(f"{f} is outside {base}: pass --pack-root a folder holding --out and --chapters") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for f, name in zip(files, names, strict=True):
            tar.add(f, arcname=name)
    return names


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table(records: list[dict], notes: dict[str, str]) -> str:
    """Markdown: one row per finished run, in roster order, with the command that produced it; unfinished runs are
    listed below it."""
    head = ("| model | recipe | val mIoU % | global acc % | epochs | wall time | images/s | peak memory (MiB) | "
            "hardware | command |")  # fmt: skip
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for run in filter(is_finished, records):
        scratch = "ImageNet backbone" if run["pretrained_backbone"] else "from scratch"
        recipe = f"{notes.get(run['row'], run['model'])}; {scratch}"
        parts = f" ({run['parts']} parts)" if run.get("parts", 1) > 1 else ""  # wall_s sums every part's epochs
        lines.append(
            f"| {run['row']} | {recipe} | {100 * run['miou']:.1f} | {100 * run['pixel_acc']:.1f} | {run['epochs']} | "
            f"{_duration(run['wall_s'])}{parts} | {run['images_per_s']:.0f} | {run['peak_memory_mib']:,.0f} | "
            f"{run['device']}, torch {run['torch']} | `{run.get('row_command') or run['command']}` |"
        )
    pending = [f"in progress: {r['row']} ({r['epochs']}/{target_epochs(r) or '?'} epochs)" for r in records
               if not is_finished(r)]  # fmt: skip
    return "\n".join(lines + [""] * bool(pending) + pending)


def load_records(out_root: Path, rows: list[Row], chapters: Path | None = None) -> list[dict]:
    """Per row, in roster order: the FULL-mode record its chapter notebook left in ``chapters`` (so the table and
    the executed notebook show the same run), else the ``run.json`` of its ``seglearn train`` command, else nothing."""
    from_chapters: dict[str, dict] = {}
    for path in sorted(chapters.glob("*.json")) if chapters is not None and chapters.is_dir() else []:
        record = json.loads(path.read_text())
        if record.get("mode") == "FULL" and record.get("data") == "camvid" and "row" in record:
            from_chapters[record["row"]] = record
    records = []
    for r in rows:
        path = out_root / r.row / "run.json"
        if r.row in from_chapters:
            records.append(from_chapters[r.row])
        elif path.is_file():
            records.append({**json.loads(path.read_text()), "row": r.row})
    return records


def update_readme(readme: Path, markdown: str) -> None:
    """Replace what sits between the README's ``full-results`` markers (which must exist) with ``markdown``."""
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{readme} needs exactly one {BEGIN} ... {END} pair around the results table")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="*", default=None, help="row ids (default: all); see --list")
    p.add_argument("--list", action="store_true", help="print each row's command and exit")
    p.add_argument("--dataset", choices=("camvid", "voc"), default="camvid", help="the rows of this dataset")
    p.add_argument("--table", action="store_true", help="print the markdown table of the finished rows")
    p.add_argument("--update-readme", action="store_true", help="with --table: write it into README.md")
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    p.add_argument("--out", type=Path, default=Path("runs/full"), help="run folders (default: runs/full)")
    p.add_argument("--chapters", type=Path, default=REPO_ROOT / "notebooks" / "runs" / "chapters",
                   help="FULL-mode chapter records; each replaces its row's run")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="override every row's epochs (recorded in its command)")
    p.add_argument("--jobs", type=int, default=1, help="rows trained at once, each its own process (default: 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers per run (default: cpu_count / jobs, at most 8)")  # fmt: skip
    p.add_argument("--stop-after", type=float, default=None, metavar="S",
                   help="end this invocation within S seconds; unfinished rows resume next time")  # fmt: skip
    p.add_argument("--margin", type=float, default=MARGIN_S, metavar="S",
                   help=f"--stop-after: a row's budget is the time left minus S (default {MARGIN_S:g})")  # fmt: skip
    p.add_argument("--min-budget", type=float, default=MIN_BUDGET_S, metavar="S",
                   help=f"--stop-after: start no row with under S s to train (default {MIN_BUDGET_S:g})")  # fmt: skip
    p.add_argument("--force", action="store_true", help="train rows again from scratch (their folders are deleted)")
    p.add_argument("--pack", type=Path, default=None, metavar="FILE.tgz",
                   help="pack the rows' results and FULL chapter records (without --rows: no training)")  # fmt: skip
    p.add_argument("--pack-root", type=Path, default=REPO_ROOT, help="--pack names files relative to it (the repo)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `seglearn train` options for every row")
    args = p.parse_args(argv)
    everything = roster(args.dataset)
    known = {r.row: r for r in everything}
    unknown = sorted(set(args.rows or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from: {', '.join(known)}")
    if args.jobs < 1 or (args.stop_after is not None and args.stop_after <= 0):
        raise SystemExit("--jobs takes a count of at least 1 and --stop-after a positive number of seconds")
    rows = [known[name] for name in args.rows] if args.rows else everything
    extra = [a for a in args.extra if a != "--"]
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 1) // args.jobs))
    if args.list:
        text = "\n".join(shlex.join(command(r, args.out, epochs=args.epochs, workers=workers, extra=extra))
                         for r in rows)  # fmt: skip
        print(text)
        return text
    failures = []
    if not args.table and not (args.pack is not None and args.rows is None):
        failures = train(rows, args.out, epochs=args.epochs, workers=workers, extra=extra, force=args.force,
                         jobs=args.jobs, stop_after=args.stop_after, margin=args.margin,
                         min_budget=args.min_budget)  # fmt: skip
    markdown = table(load_records(args.out, rows, args.chapters), {r.row: r.note for r in everything})
    print(markdown)
    if args.pack is not None:  # also after a failed row, so the others' results still come back
        names = pack(args.pack, rows, args.out, args.chapters, args.pack_root)
        print(f"\npacked {len(names)} files into {args.pack} ({args.pack.stat().st_size / 1024:.1f} KiB)")
    if failures:
        raise SystemExit("\n\n".join(failures))
    if args.update_readme:
        update_readme(args.readme, markdown)
        print(f"\nwrote the table into {args.readme}")
    return markdown


if __name__ == "__main__":
    main()
