"""Named training setups: ``python -m seglearn train --recipe NAME`` and ``TrainJob.from_train_recipe(NAME)``.

A train recipe is a set of :class:`~seglearn.job.TrainJob` values, model and dataset included; any option given
beside ``--recipe`` (or any keyword of ``from_train_recipe``) replaces the recipe's value. It needs no import of
torch, so the command line can read it before anything is loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRAIN_RECIPES", "train_recipe"]

TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # The fastest learner that benchmarks/cpu_budget.py found for 15 minutes on 2 CPU cores (README, "Fifteen
    # minutes on two cores"): LinkNet-R18 on CamVid, trained around half resolution (crops of frames rescaled by
    # 0.4-0.625) with SegNet's median-frequency class weights, scored at 0.625 of full resolution (val mIoU 51.7
    # there against 50.1 at 0.5 for the same model: the small classes gain). Preloaded frames and loading in the
    # training process (workers=0) give both cores to the convolutions; NHWC is 1.48x faster per step on a CPU;
    # batch 4 learned less in the same time than batch 8. The epochs are planned after the first one to end the
    # poly decay at the budget; the budget is training time, and preloading and the val scoring take the rest.
    "cpu-15min": dict(
        model="linknet", backbone="resnet18", dataset="camvid", crop=(176, 240), scale=(0.4, 0.625),
        eval_scale=0.625, class_weights="median", batch_size=8, workers=0, preload=True, channels_last=True,
        optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_iters=100, epochs=200, plan_epochs=True,
        time_budget=870.0, val_every=200,
    ),
}  # fmt: skip


def train_recipe(name: str, model: str | None = None) -> dict[str, Any]:
    """A copy of the TrainJob values of the train recipe ``name``; ValueError naming the recipes for another.
    With ``model`` (another than the recipe's) the recipe's backbone and model keywords, which are its model's, are
    left out."""
    if name not in TRAIN_RECIPES:
        raise ValueError(f"--recipe {name!r} is not one of: {', '.join(TRAIN_RECIPES)}")
    values = dict(TRAIN_RECIPES[name])
    if model is not None and model != values["model"]:
        values = {k: v for k, v in values.items() if k not in ("backbone", "model_args")}
    return values
