"""``seglearn train --recipe NAME``: a named TrainJob, any option given beside it winning."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seglearn.cli import main, parse_train_job
from seglearn.job import JobError, TrainJob
from seglearn.train_recipes import TRAIN_RECIPES, train_recipe


def _plain(job: TrainJob) -> TrainJob:
    return dataclasses.replace(job, argv=[])


@pytest.mark.parametrize("name", list(TRAIN_RECIPES))
def test_every_recipe_value_reaches_the_job_from_the_command_line(name):
    job = parse_train_job(["train", "--recipe", name])
    for key, value in TRAIN_RECIPES[name].items():  # a key the parser did not know would be dropped silently
        assert getattr(job, key) == (tuple(value) if isinstance(value, list) else value), key
    assert _plain(job) == TrainJob.from_train_recipe(name)


def test_cpu_15min_is_the_measured_recipe():
    job = TrainJob.from_train_recipe("cpu-15min")
    assert (job.model, job.model_kwargs, job.dataset) == ("linknet", {"aux_loss": False, "backbone": "resnet18"},
                                                          "camvid")  # fmt: skip
    assert job.plan_epochs and job.time_budget == 870 and job.preload and job.channels_last and job.workers == 0
    assert (job.crop, job.scale, job.eval_scale, job.optimizer, job.lr) == ((176, 240), (0.4, 0.625), 0.625,
                                                                           "adamw", 2e-3)  # fmt: skip
    assert job.class_weights == "median" and job.batch_size == 8


def test_options_beside_the_recipe_win_before_or_after_it():
    job = parse_train_job(["train", "--seed", "3", "--recipe", "cpu-15min", "--lr", "0.01", "--time-budget", "60"])
    assert (job.seed, job.lr, job.time_budget) == (3, 0.01, 60.0)
    assert job.crop == (176, 240) and job.model == "linknet"
    assert TrainJob.from_train_recipe("cpu-15min", seed=3, lr=0.01, time_budget=60.0) == _plain(job)


def test_another_model_leaves_the_recipes_backbone_out():
    job = parse_train_job(["train", "--recipe", "cpu-15min", "--model", "unet", "--model-arg", "base_channels=16"])
    assert job.model == "unet" and job.model_kwargs == {"aux_loss": False, "base_channels": 16}
    assert job.plan_epochs and job.crop == (176, 240)  # the rest of the recipe stays
    assert "backbone" not in train_recipe("cpu-15min", "enet") and TrainJob.from_train_recipe(
        "cpu-15min", model="enet").backbone is None  # fmt: skip


def test_no_model_and_unknown_recipes_exit_2_with_one_line(capsys):
    for argv, message in ((["train"], "train needs --model NAME (or --recipe NAME"),
                          (["train", "--recipe", "gpu-1min"], "invalid choice: 'gpu-1min'")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("seglearn: error:") and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(JobError, match="--recipe 'gpu-1min' is not one of: cpu-15min"):
        TrainJob.from_train_recipe("gpu-1min")


def test_the_recipe_trains_for_its_budget_with_a_planned_schedule(tmp_path, capsys):
    # The recipe on tiny synthetic scenes (not CamVid) with a 3 s budget: planned after epoch 1, scored at half scale.
    out = tmp_path / "run"
    argv = ["train", "--recipe", "cpu-15min", "--dataset", "synthetic", "--num-images", "8", "--crop", "32", "48",
            "--time-budget", "3", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["planned_epochs"] >= 1 and run["epochs"] <= run["planned_epochs"] and run["command"].endswith(
        " ".join(argv[-2:]))  # fmt: skip
    assert f"of {run['planned_epochs']} planned epochs" in capsys.readouterr().out
    assert sum(json.loads((out / "history.json").read_text())["train_time"]) < 6
