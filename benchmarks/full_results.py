"""The README's FULL-mode results table: every model of the series trained on CamVid with `python -m seglearn train`.

Each row is one command (the chapter's FULL recipe: 367 train images at 360x480, batch 8, SGD with poly decay unless
said otherwise), scored on the 101 val images by ``seglearn.evaluate`` at the end of training, from scratch (no
ImageNet weights). A run writes ``runs/full/<row>/run.json``; the table is made from those files, so every number in it
comes from the command printed beside it. A chapter notebook executed in FULL mode on CamVid leaves a record of the
same kind (``notebooks/runs/chapters``); it takes its row's place, with the notebook command, so the executed chapters
and the table show the same runs and a GPU trains each model once.

    python benchmarks/full_results.py --list                   # the roster: each row's exact command
    python benchmarks/full_results.py --rows segnet unet        # train these rows (a GPU), skipping finished ones
    python benchmarks/full_results.py --table                   # the markdown table from runs/full/*/run.json
    python benchmarks/full_results.py --table --update-readme   # ... written into README.md between its markers

CamVid is found as by every seglearn command (``SEGLEARN_DATA`` or ``data/``; ``python -m seglearn download camvid``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- full-results:begin -->", "<!-- full-results:end -->"


@dataclass(frozen=True)
class Recipe:
    """One row: the model, its training options beyond the common ones, and where the recipe comes from."""

    row: str
    model: str
    epochs: int
    lr: float
    options: list[str] = field(default_factory=list)
    note: str = ""


# The chapters' FULL-mode recipes (same epochs, lr, weight decay, heads, loss), so the executed notebooks and this
# table describe the same training. lr was chosen once per family, not tuned on val: 1e-3 for VGG16 without
# BatchNorm (it diverges from random weights at 1e-2), 1e-2 with BatchNorm; adamw for the tiny baseline.
ROSTER: list[Recipe] = [
    Recipe("tinyfcn", "tinyfcn", 60, 1e-3, ["--optimizer", "adamw"], "ch. 00 baseline, 0.3 M parameters"),
    Recipe("fcn8s", "fcn8s", 60, 1e-3, ["--weight-decay", "5e-4"], "ch. 01, VGG16, the paper's geometry"),
    Recipe("fcn-r50", "fcn", 50, 1e-2, ["--backbone", "resnet50", "--aux-loss"], "torchvision's FCN-ResNet50"),
    Recipe("segnet", "segnet", 60, 1e-2, [], "ch. 02, VGG16-BN encoder"),
    Recipe(
        "segnet-basic",
        "segnet_basic",
        60,
        1e-2,
        ["--class-weights", "median"],
        "the paper's SegNet-Basic, median-frequency weights",
    ),  # fmt: skip
    Recipe("unet", "unet", 80, 1e-2, [], "ch. 03, 64 base channels, plain CE"),
    Recipe("unet-mfb", "unet", 80, 1e-2, ["--class-weights", "median"], "ch. 03, median-frequency weights"),
    Recipe("deeplabv1", "deeplabv1", 50, 1e-3, ["--weight-decay", "5e-4"], "ch. 04, LargeFOV, no CRF"),
    Recipe("deeplabv3", "deeplabv3", 50, 1e-2, ["--backbone", "resnet50"], "ch. 05, ResNet-50, OS 16"),
    Recipe("encnet", "encnet", 80, 1e-2, ["--backbone", "resnet50", "--aux-loss"], "ch. 06, ResNet-50, OS 8, SE-loss"),
    Recipe("upernet", "upernet", 80, 1e-2, ["--backbone", "resnet50", "--aux-loss"], "ch. 07, ResNet-50, 512 ch."),
]


def command(
    r: Recipe, out_root: Path, *, epochs: int | None = None, workers: int = 8, extra: list[str] = ()
) -> list[str]:
    """The ``python -m seglearn train ...`` argv of a row (``epochs`` overrides the recipe's)."""
    argv = ["python", "-m", "seglearn", "train", "--model", r.model, "--dataset", "camvid", "--crop", "360", "480"]
    argv += ["--batch-size", "8", "--epochs", str(epochs or r.epochs), "--lr", f"{r.lr:g}", *r.options]
    argv += ["--workers", str(workers), "--seed", "0", "--out", str(out_root / r.row), *extra]
    return argv


def train(rows: list[Recipe], out_root: Path, *, epochs: int | None, workers: int, extra: list[str],
          force: bool) -> None:  # fmt: skip
    """Run each row's command in turn (a log beside its run.json); a finished row is skipped unless ``force``."""
    for r in rows:
        out = out_root / r.row
        if (out / "run.json").is_file() and not force:
            print(f"{r.row}: done already ({out / 'run.json'}); --force trains it again", flush=True)
            continue
        argv = command(r, out_root, epochs=epochs, workers=workers, extra=extra)
        print(f"{r.row}: {shlex.join(argv)}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train.log", "w") as log:  # tqdm bars go to stderr, the score table to stdout
            done = subprocess.run([sys.executable, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = (out / "train.log").read_text().splitlines()[-5:]
            raise SystemExit(
                f"{r.row} failed (exit {done.returncode}); {out / 'train.log'} ends with:\n" + "\n".join(tail)
            )
        run = json.loads((out / "run.json").read_text())
        print(f"{r.row}: mIoU {100 * run['miou']:.1f} in {run['wall_s']:.0f} s, {run['images_per_s']:.0f} images/s",
              flush=True)  # fmt: skip


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table(records: list[dict], notes: dict[str, str]) -> str:
    """Markdown: one row per run.json, in roster order, with the command that produced it."""
    head = ("| model | recipe | val mIoU % | global acc % | epochs | wall time | images/s | peak memory (MiB) | "
            "hardware | command |")  # fmt: skip
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for run in records:
        scratch = "ImageNet backbone" if run["pretrained_backbone"] else "from scratch"
        recipe = f"{notes.get(run['row'], run['model'])}; {scratch}"
        lines.append(
            f"| {run['row']} | {recipe} | {100 * run['miou']:.1f} | {100 * run['pixel_acc']:.1f} | {run['epochs']} | "
            f"{_duration(run['wall_s'])} | {run['images_per_s']:.0f} | {run['peak_memory_mib']:,.0f} | "
            f"{run['device']}, torch {run['torch']} | `{run['command']}` |"
        )
    return "\n".join(lines)


def load_records(out_root: Path, rows: list[Recipe], chapters: Path | None = None) -> list[dict]:
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
    p.add_argument("--table", action="store_true", help="print the markdown table of the finished rows")
    p.add_argument("--update-readme", action="store_true", help="with --table: write it into README.md")
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    p.add_argument("--out", type=Path, default=Path("runs/full"), help="run folders (default: runs/full)")
    p.add_argument("--chapters", type=Path, default=REPO_ROOT / "notebooks" / "runs" / "chapters",
                   help="FULL-mode chapter records; each replaces its row's run")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="override every row's epochs (recorded in its command)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers per run")
    p.add_argument("--force", action="store_true", help="train rows again even when their run.json exists")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `seglearn train` options for every row")
    args = p.parse_args(argv)
    known = {r.row: r for r in ROSTER}
    unknown = sorted(set(args.rows or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from: {', '.join(known)}")
    rows = [known[name] for name in args.rows] if args.rows else ROSTER
    extra = [a for a in args.extra if a != "--"]
    if args.list:
        text = "\n".join(shlex.join(command(r, args.out, epochs=args.epochs, workers=args.workers, extra=extra))
                         for r in rows)  # fmt: skip
        print(text)
        return text
    if not args.table:
        train(rows, args.out, epochs=args.epochs, workers=args.workers, extra=extra, force=args.force)
    markdown = table(load_records(args.out, rows, args.chapters), {r.row: r.note for r in ROSTER})
    print(markdown)
    if args.update_readme:
        update_readme(args.readme, markdown)
        print(f"\nwrote the table into {args.readme}")
    return markdown


if __name__ == "__main__":
    main()
