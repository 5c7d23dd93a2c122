"""Every FULL recipe beside its paper's: the tables are generated, every difference says why, the README holds the
current tables, each chapter prints its own, and the VOC rows pin the papers' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seglearn.job import TrainJob
from seglearn.models import Recipe, full_recipes, model_info
from seglearn.models.paper_settings import PAPER_SETTINGS, SETTINGS
from seglearn.recipe_table import BEGIN, END, SAME, readme_tables, recipe_rows, recipe_table

REPO = Path(__file__).resolve().parents[1]
CHAPTER_ROWS = [(info, r) for info, r in full_recipes(None) if info.chapter]
OWN_MODELS = {"tinyfcn"}  # seglearn's baseline: no paper has a recipe for it


def test_every_chapter_row_of_a_papers_model_has_the_papers_settings():
    rows = {r.row for info, r in CHAPTER_ROWS if info.name not in OWN_MODELS}
    assert rows <= set(PAPER_SETTINGS), f"rows without the paper's settings: {sorted(rows - set(PAPER_SETTINGS))}"
    assert set(PAPER_SETTINGS) <= {r.row for _, r in full_recipes(None)}, "settings of a row that does not exist"
    for row, settings in PAPER_SETTINGS.items():
        assert set(settings) <= set(SETTINGS), (row, set(settings) - set(SETTINGS))


@pytest.mark.parametrize("info, recipe", CHAPTER_ROWS, ids=[r.row for _, r in CHAPTER_ROWS])
def test_every_difference_from_the_paper_says_why(info, recipe):
    if recipe.row not in PAPER_SETTINGS:
        return
    for setting, paper, ours, why in recipe_rows(info.name, recipe):
        if paper == ours:
            assert why == SAME, (setting, why)
        elif paper != "not stated":
            assert why and why != SAME, f"{recipe.row}: {setting} is {ours!r}, the paper's {paper!r}, and no reason"


def test_the_table_reads_the_recipe_not_a_copy_of_it():
    info = model_info("deeplabv1")
    voc = next(r for r in info.full if r.dataset == "voc")
    rows = {s: (p, o, w) for s, p, o, w in recipe_rows("deeplabv1", voc)}
    assert rows["schedule"] == ("x0.1 every 2,000 iterations", "x0.1 every 2,000 iterations", SAME)
    assert rows["lr"][1] == "0.001, head.fc8 x10"
    # another schedule in the recipe is another value in the table, and a difference without a reason shows
    changed = Recipe(**{**_fields(voc), "schedule": "poly"})
    rows = {s: (p, o, w) for s, p, o, w in recipe_rows("deeplabv1", changed)}
    assert rows["schedule"] == ("x0.1 every 2,000 iterations", "poly, power 0.9", "")
    table = recipe_table("deeplabv1", dataset="voc")
    assert table.count("| setting | paper | seglearn FULL | why it differs |") == 1 and "deeplabv1-voc" in table


def _fields(recipe: Recipe) -> dict:
    d = recipe.as_dict()
    d["crop"] = tuple(d["crop"])
    return d


def test_the_readme_holds_the_current_tables():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == readme_tables().strip(), "stale: run `python -m seglearn.recipe_table --update-readme`"


CHAPTERS = sorted({info.chapter for info, _ in CHAPTER_ROWS if info.name not in OWN_MODELS})


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_chapter_prints_its_recipe_tables(chapter):
    nb = json.loads((REPO / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "recipe_table(" in code, f"{chapter} does not show its recipe beside the paper's"


def test_voc_rows_pin_the_papers_numbers():
    voc = {r.row: r for _, r in full_recipes("voc")}
    assert set(voc) == {"fcn8s-voc", "deeplabv1-voc", "deeplabv3-voc", "encnet-voc", "pspnet-voc", "refinenet-voc"}
    d1, d3, psp, enc = voc["deeplabv1-voc"], voc["deeplabv3-voc"], voc["pspnet-voc"], voc["encnet-voc"]
    assert (d1.batch_size, d1.lr, d1.schedule, dict(d1.lr_mult)) == (20, 1e-3, "step:2000", {"head.fc8": 10.0})
    assert abs(d1.iterations - 6000) < 10582 // 20  # the paper's 6,000, within one epoch
    assert (d3.crop, d3.batch_size, d3.lr, d3.model_kwargs["backbone"]) == ((513, 513), 16, 7e-3, "resnet101")
    assert abs(d3.iterations - 30000) < 10582 // 16 and abs(psp.iterations - 30000) < 10582 // 16
    assert (psp.crop, psp.batch_size, psp.lr) == ((473, 473), 16, 1e-2)
    assert (enc.crop, enc.rotate, enc.epochs) == ((480, 480), 10.0, 50)
    assert all(r.split == "trainaug" and r.pretrained_backbone for r in voc.values())
    assert {r.row for _, r in full_recipes()} & set(voc) == set(), "the CamVid results table holds CamVid rows only"


def test_a_recipe_becomes_the_job_that_trains_it():
    voc = next(r for _, r in full_recipes("voc") if r.row == "deeplabv1-voc")
    job = TrainJob.from_recipe("deeplabv1", voc)
    assert (job.dataset, job.split, job.schedule, job.lr_mult) == ("voc", "trainaug", "step:2000", {"head.fc8": 10.0})
    assert job.pretrained_backbone and job.crop == (321, 321) and job.batch_size == 20


def test_a_recipe_refuses_an_unknown_dataset_or_schedule():
    with pytest.raises(ValueError, match="'camvid' or 'voc'"):
        Recipe(1, 1e-3, dataset="cityscapes")
    with pytest.raises(ValueError, match="poly, fixed, step:N"):
        Recipe(1, 1e-3, schedule="cosine")


@pytest.mark.parametrize("info, recipe", [(i, r) for i, r in full_recipes(None) if r.lr_mult],
                         ids=lambda x: getattr(x, "row", None) or getattr(x, "name", ""))  # fmt: skip
def test_every_learning_rate_multiplier_names_parameters_of_its_model(info, recipe):
    import torch

    from seglearn.schedules import param_groups

    with torch.device("meta"):
        model = create_model_from(info.name, recipe)
    groups = param_groups(model, recipe.lr, recipe.lr_mult)  # a prefix that matches nothing is a ValueError
    assert [g["lr_mult"] for g in groups] == [1.0, *recipe.lr_mult.values()]


def create_model_from(name: str, recipe: Recipe):
    from seglearn.models import create_model

    return create_model(name, 21 if recipe.dataset == "voc" else 11, **recipe.model_kwargs)


def test_every_voc_row_is_a_valid_train_command(load_benchmark):
    from seglearn.cli import parse_train_job

    bench = load_benchmark("full_results")
    for row in bench.roster("voc"):
        argv = bench.command(row, Path("runs/full"), workers=4)
        job = parse_train_job(argv[3:])
        assert (job.dataset, job.split, job.crop, job.batch_size) == ("voc", "trainaug", row.recipe.crop,
                                                                      row.recipe.batch_size)  # fmt: skip
        assert job.schedule == row.recipe.schedule and job.lr_mult == dict(row.recipe.lr_mult)
        assert job.pretrained_backbone and not job.preload
