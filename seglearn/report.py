"""A chapter's training run against the two references every chapter checks, in one call.

The references: the **majority floor** (the most frequent training class predicted everywhere; a model that does not
beat it learned nothing beyond the class prior) and **chapter 00's baseline** ``tinyfcn`` (the smallest fully
convolutional net; a paper's model that loses to it under the same budget has not had the steps its size needs).
:func:`report_run` scores the floor, saves the chapter's record (``runs/chapters/<name>.json``), reads 00's record
when 00 ran in the same mode, prints the three rows and returns a :class:`RunReport` whose Markdown sentences are
generated from this run's numbers, so no chapter types a result in by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from seglearn import metrics
from seglearn.record import chapter_record, load_chapter_record, save_chapter_record

__all__ = ["BASELINE_RECORD", "RunReport", "class_sentence", "compare_sentence", "report_run"]

BASELINE_RECORD = "00_tinyfcn"  # the record chapter 00 saves
# mIoU points below which the sentence tells two short runs apart by nothing: a conservative margin for 16 QUICK val
# frames, not yet the measured seed-to-seed spread of every chapter
NOISE_POINTS = 2.0


@dataclass
class RunReport:
    """What :func:`report_run` measured; shows as its Markdown in a notebook (the cell's last expression)."""

    label: str
    record: dict[str, Any]
    floor_class: str
    floor_miou: float
    baseline: dict[str, Any] | None  # chapter 00's record, when 00 ran in this mode on this data
    sentences: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return "\n".join(f"* {s}" for s in self.sentences)

    def save(self, **extra: Any) -> Path:
        """Save the record again with the chapter's later measurements (e.g. ``miou_crf=...``) added; its path."""
        self.record.update(extra)
        return save_chapter_record(self.record)

    def _repr_markdown_(self) -> str:
        return self.markdown


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f} %"


def _steps(record: dict[str, Any]) -> int:
    return int(round(record.get("images_seen", 0) / max(int(record.get("batch_size") or 1), 1)))


def class_sentence(label: str, scores: Any, classes: Any, learned_at: float = 0.3, missed_below: float = 0.05) -> str:
    """Which classes the run learned (IoU >= ``learned_at``) and which it missed (IoU < ``missed_below``), by name."""
    learned = [c for c, v in zip(classes, scores.iou, strict=True) if v >= learned_at]
    missed = [c for c, v in zip(classes, scores.iou, strict=True) if v < missed_below]
    text = f"{label} learned {', '.join(learned) or 'no class'} (IoU {100 * learned_at:.0f} % or more)"
    if missed:
        return f"{text} and missed {', '.join(missed)} (IoU under {100 * missed_below:.0f} %)."
    return f"{text}; no class stayed under {100 * missed_below:.0f} % IoU."


def compare_sentence(label: str, record: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """One sentence that puts ``record`` beside chapter 00's ``baseline`` record and says what differs in budget.

    ``record`` and ``baseline`` are chapter records (see :func:`report_run`) with ``miou``, ``params``,
    ``images_seen``, ``batch_size``, ``frame`` and ``wall_s``; ``baseline`` None says 00 has not run in this mode.
    """
    if baseline is None:
        return (f"Chapter 00's `tinyfcn` has not run in {record['mode']} mode on {record['data']} in this checkout: "
                "run notebooks/00_data_and_metrics.ipynb to add it to this comparison.")  # fmt: skip
    gap = 100 * (record["miou"] - baseline["miou"])
    verdict = f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'}"
    ratio = record["params"] / max(baseline["params"], 1)
    budget = (f"{label} took {_steps(record)} optimizer steps of {record['batch_size']} frames at "
              f"{'×'.join(map(str, record['frame']))} in {record['wall_s']:.0f} s with {ratio:.0f}× tinyfcn's "
              f"parameters; tinyfcn took {_steps(baseline)} steps of {baseline['batch_size']} at "
              f"{'×'.join(map(str, baseline['frame']))} in {baseline['wall_s']:.0f} s.")  # fmt: skip
    if abs(gap) < NOISE_POINTS:
        why = "A gap this small can flip with another seed: no verdict at this budget."
    elif gap > 0:
        why = "It is ahead by more than a short run's seed-to-seed spread, even at this budget."
    elif _steps(record) < _steps(baseline) or ratio > 10:
        why = ("It has had fewer steps per parameter than the baseline, so this says more about the budget than "
               "about the design: the FULL run is the comparison that counts.")  # fmt: skip
    else:
        why = "With a comparable budget it still trails: the run is too short for what this design needs to learn."
    return f"Against chapter 00's `tinyfcn` ({_pct(baseline['miou'])}): {verdict}. {budget} {why}"


def report_run(
    cfg: Any,
    name: str,
    *,
    label: str,
    model_name: str,
    model: nn.Module,
    history: Any,
    scores: Any,
    info: Any,
    train_loader: DataLoader,
    val_loader: DataLoader,
    row: str | None = None,
    notebook: str | None = None,
    **extra: Any,
) -> RunReport:
    """Score the floor on ``val_loader``, save the chapter record ``name``, print the run beside the floor and chapter
    00's baseline, and return the generated sentences. Raises AssertionError when the model does not beat the floor
    (training broke: the chapter should stop there).

    ``cfg`` is the chapter's :class:`~seglearn.notebook.NotebookConfig`, ``info`` its loaders' ``LoaderInfo``;
    ``row`` the results-table row (default ``model_name``), ``notebook`` the chapter file (default ``name``), and
    ``extra`` further fields for the record (e.g. ``miou_crf``).
    """
    majority, floor = metrics.majority_baseline(train_loader, val_loader, info.num_classes, info.ignore_index)
    frame = list(train_loader.dataset[0][0].shape[-2:])
    record = chapter_record(
        name, row=row or model_name, notebook=notebook or name, model_name=model_name, model=model, history=history,
        scores=scores, cfg=cfg, info=info, batch_size=train_loader.batch_size, frame=frame,
        images_seen=int(sum(history.train_images)), **extra,
    )  # fmt: skip
    save_chapter_record(record)
    baseline = load_chapter_record(BASELINE_RECORD) if name != BASELINE_RECORD else None
    if baseline is not None and (baseline["mode"], baseline["data"]) != (record["mode"], record["data"]):
        baseline = None  # another mode or data set: not comparable
    floor_name = info.classes[majority]
    rows = [(f"majority class ({floor_name}) everywhere", floor.miou, floor.pixel_acc)]
    if baseline is not None:
        rows.append((f"chapter 00's tinyfcn ({baseline['epochs']} epochs)", baseline["miou"], baseline["pixel_acc"]))
    rows.append((f"{label} ({cfg.mode}, {history.epochs} epochs)", scores.miou, scores.pixel_acc))
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'mIoU':>7}  {'pixel acc':>9}")
    for text, miou, acc in rows:
        print(f"{text:<{width}}  {_pct(miou):>7}  {_pct(acc):>9}")
    above = 100 * (scores.miou - floor.miou)
    sentences = [
        f"{label} reaches {_pct(scores.miou)} mIoU and {_pct(scores.pixel_acc)} pixel accuracy on {info.val_size} "
        f"{info.source} val images, {above:.1f} points of mIoU above predicting {floor_name} everywhere "
        f"({_pct(floor.miou)} mIoU, {_pct(floor.pixel_acc)} pixel accuracy)."
        + " " + class_sentence("It", scores, info.classes)
    ]
    if name != BASELINE_RECORD:
        sentences.append(compare_sentence(label, record, baseline))
    report = RunReport(label, record, floor_name, float(floor.miou), baseline, sentences)
    assert scores.miou > floor.miou, f"{label} learned less than predicting one class everywhere: training broke"
    return report
