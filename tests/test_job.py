"""TrainJob: the CLI's defaults, validation naming the option, recipes from the registry, and run_train_job's folder."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch

import seglearn
from seglearn.cli import parse_train_job
from seglearn.job import JobError, TrainJob, run_train_job


def test_defaults_are_the_cli_defaults():
    parsed = parse_train_job(["train", "--model", "tinyfcn"])
    assert parsed.argv == ["train", "--model", "tinyfcn"]
    assert dataclasses.replace(parsed, argv=[]) == TrainJob("tinyfcn")
    job = TrainJob("tinyfcn")
    assert (job.dataset, job.crop, job.scale, job.epochs, job.lr, job.optimizer) == (
        "synthetic", (96, 128), (0.5, 2.0), 10, 0.01, "sgd")  # fmt: skip
    assert job.out == Path("runs") / "tinyfcn" and job.amp and job.model_kwargs == {"aux_loss": False}


def test_a_job_built_in_python_records_the_command_that_makes_it_again():
    job = TrainJob(
        "unet", crop=48, image_size=(48, 64), scale=(1.0, 1.0), epochs=3, lr=0.05, optimizer="adamw", amp=False,
        class_weights="median", model_args={"base_channels": 8, "depth": 3}, aux_loss=False, preload=True,
        out="runs/x", workers=0, time_budget=30.0, plan_epochs=True, eval_scale=0.5,
    )  # fmt: skip
    args = job.command_args()
    assert args[:3] == ["train", "--model", "unet"] and "--no-amp" in args and "--epochs" in args
    assert "--dataset" not in args  # defaults are left out
    assert dataclasses.replace(parse_train_job(args), argv=[]) == job
    assert parse_train_job(shlex.split(shlex.join(args))).model_args == {"base_channels": 8, "depth": 3}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"crop": (0, 10)}, "--crop takes one or two positive ints"),
        ({"crop": (8, 8, 8)}, "--crop takes one or two positive ints"),
        ({"image_size": -3}, "--image-size takes one or two positive ints"),
        ({"epochs": 0}, "--epochs takes an integer >= 1"),
        ({"workers": -1}, "--workers takes an integer >= 0"),
        ({"optimizer": "adam"}, "--optimizer 'adam' is not one of: sgd, adamw"),
        ({"dataset": "cityscapes"}, "--dataset 'cityscapes' is not one of"),
        ({"model": "fcn9s"}, "--model 'fcn9s' is not one of"),
        ({"scale": (2.0, 1.0)}, "--scale takes MIN MAX"),
        ({"class_weights": "inverse"}, "--class-weights"),
        ({"lr": 0.0}, "--lr takes a finite number > 0"),
        ({"plan_epochs": True}, "--plan-epochs plans the epochs that fit a time budget: give --time-budget S"),
        ({"eval_scale": 0.0}, "--eval-scale takes a number > 0"),
    ],
)
def test_bad_values_are_refused_naming_the_option(changes, message):
    with pytest.raises(JobError, match=message) as err:
        TrainJob(**{"model": "tinyfcn", **changes})
    assert isinstance(err.value, ValueError)


def test_one_int_crop_means_a_square():
    assert TrainJob("tinyfcn", crop=64).crop == (64, 64) == TrainJob("tinyfcn", crop=[64]).crop


def test_from_recipe_takes_the_registry_recipe():
    from seglearn.models import Recipe, model_info

    kwargs = {"backbone": "resnet18", "output_stride": 16}
    recipe = Recipe(epochs=4, lr=1e-3, optimizer="adamw", weight_decay=0.0, aux_loss=True, batch_size=2,
                    model_kwargs=kwargs, class_weights="median", crop=(64, 80))  # fmt: skip
    job = TrainJob.from_recipe("deeplabv3", recipe, dataset="camvid", epochs=5)
    assert (job.epochs, job.lr, job.optimizer, job.weight_decay, job.batch_size, job.crop) == (
        5, 1e-3, "adamw", 0.0, 2, (64, 80))  # fmt: skip
    assert job.model_kwargs == {"aux_loss": True, "output_stride": 16, "backbone": "resnet18"}
    assert (job.class_weights, job.dataset) == ("median", "camvid")
    quick = TrainJob.from_recipe("unet", model_info("unet").quick)
    assert quick.model_args == dict(model_info("unet").quick.model_kwargs)


def test_run_train_job_writes_a_run_folder_that_loads(tmp_path, capsys):
    job = TrainJob("tinyfcn", num_images=8, crop=(32, 48), batch_size=4, workers=0, epochs=1, lr=0.05,
                   model_args={"width": 8}, device="cpu", out=tmp_path / "run")  # fmt: skip
    result = run_train_job(job, quiet=True)
    assert capsys.readouterr().out == ""
    assert result.out == tmp_path / "run" and result.history.epochs == 1 and result.classes[3] == "Road"
    for name in ("model.pt", "run.json", "history.json", "scores.json", "curves.png", "checkpoints/last.pt"):
        assert (job.out / name).is_file(), name
    model = seglearn.load_model(job.out / "model.pt")
    x = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(model(x)["out"], result.model(x)["out"])
    run = json.loads((job.out / "run.json").read_text())
    assert run["command"] == "python -m seglearn " + shlex.join(job.command_args())
    assert run["model_kwargs"] == {"aux_loss": False, "width": 8} and run["miou"] == result.scores.miou
    history = json.loads((job.out / "history.json").read_text())
    assert history["val_epochs"] == [1] and len(history["val"]) == 1


def test_a_missing_dataset_is_a_job_error_before_anything_is_written(tmp_path):
    job = TrainJob("tinyfcn", dataset="camvid", root=tmp_path / "nothing", out=tmp_path / "run", device="cpu")
    with pytest.raises(JobError, match="download camvid"):
        run_train_job(job)
    assert not (tmp_path / "run").exists()
