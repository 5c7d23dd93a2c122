"""Each FULL recipe beside the paper's: the table "setting | paper | seglearn FULL | why it differs".

The seglearn column is rendered from the registry's :class:`~seglearn.models.Recipe` and the paper column and the
reasons come from :data:`seglearn.models.paper_settings.PAPER_SETTINGS`, so a chapter (``recipe_table("deeplabv1")``)
and the README (``python -m seglearn.recipe_table --update-readme`` writes it between its ``recipes`` markers) show
the same table, and a recipe that changes changes both. A setting where the two columns differ must say why.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from seglearn.models import Recipe, model_info
from seglearn.models.paper_settings import PAPER_SETTINGS, SETTINGS
from seglearn.models.registry import TRAIN_IMAGES
from seglearn.options import parse_schedule

__all__ = ["ours", "recipe_rows", "recipe_table", "readme_tables", "SAME"]

SAME = "same"  # the "why" column where the paper's value is ours
DATA_NAMES = {"camvid": "CamVid", "voc": "VOC 2012"}
BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"


def _schedule(recipe: Recipe) -> str:
    name, every, gamma = parse_schedule(recipe.schedule)
    if name == "step":
        return f"x{gamma:g} every {every:,} iterations"
    return "fixed" if name == "fixed" else "poly, power 0.9"


def ours(model: str, recipe: Recipe) -> dict[str, str]:
    """The recipe's value of every setting in :data:`SETTINGS`, as the table's seglearn column spells it."""
    info = model_info(model)
    kwargs = dict(recipe.model_kwargs)
    backbone = kwargs.pop("backbone", info.backbones[0] if info.backbones else "its own encoder")
    extras = [f"{k}={v}" for k, v in kwargs.items()] + ["aux head"] * recipe.aux_loss
    extras += [f"{recipe.class_weights} class weights"] if recipe.class_weights else []
    rates = [f"{p} x{m:g}" for p, m in recipe.lr_mult.items()]
    images = TRAIN_IMAGES[(recipe.dataset, recipe.split)]
    augment = "scale 0.5-2, crop, flip" + (f", rotation up to {recipe.rotate:g} deg" if recipe.rotate else "")
    return {
        "data": f"{DATA_NAMES[recipe.dataset]} {recipe.split} ({images:,} images)",
        "init": f"{backbone}, {'ImageNet' if recipe.pretrained_backbone else 'from scratch'}",
        "crop": "x".join(map(str, recipe.crop)),
        "batch": str(recipe.batch_size),
        "optimizer": "SGD, momentum 0.9" if recipe.optimizer == "sgd" else "AdamW",
        "lr": f"{recipe.lr:g}" + "".join(f", {r}" for r in rates),
        "schedule": _schedule(recipe),
        "length": f"{recipe.iterations:,} iterations ({recipe.epochs} epochs)",
        "weight decay": f"{recipe.weight_decay:g}",
        "augmentation": augment,
        "model": ", ".join(extras) or "as built",
    }


def recipe_rows(model: str, recipe: Recipe) -> list[tuple[str, str, str, str]]:
    """``(setting, paper, seglearn, why)`` for every setting, paper and why from :data:`PAPER_SETTINGS` (a setting
    the paper does not fix reads "not stated"; one equal to ours reads "same")."""
    paper = PAPER_SETTINGS.get(recipe.row or "", {})
    mine = ours(model, recipe)
    rows = []
    for setting in SETTINGS:
        value, why = paper.get(setting, ("not stated", ""))
        rows.append((setting, value, mine[setting], SAME if value == mine[setting] else why))
    return rows


def recipe_table(model: str, dataset: str | None = None) -> str:
    """Markdown: one table per FULL recipe of ``model`` (only those on ``dataset`` when given), each titled by its
    row and the paper."""
    info = model_info(model)
    out = []
    for recipe in info.full:
        if dataset is not None and recipe.dataset != dataset:
            continue
        out.append(f"**{recipe.row}** ({info.paper})\n")
        if recipe.row not in PAPER_SETTINGS:  # tinyfcn: seglearn's own baseline
            out += ["seglearn's own model: no paper has a recipe for it.", ""]
            continue
        out.append("| setting | paper | seglearn FULL | why it differs |\n| --- | --- | --- | --- |")
        out += [f"| {s} | {p} | {o} | {w} |" for s, p, o, w in recipe_rows(model, recipe)]
        out.append("")
    return "\n".join(out)


def readme_tables() -> str:
    """Every chapter model's tables, in chapter order: what the README holds between its markers."""
    from seglearn.models import full_recipes

    models = dict.fromkeys(info.name for info, _ in full_recipes(None) if info.chapter)
    return "\n".join(recipe_table(m) for m in models).rstrip() + "\n"


def update_readme(path: Path) -> bool:
    """Write :func:`readme_tables` between the README's markers; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} markers: add them where the tables go")
    head, rest = text.split(BEGIN, 1)
    new = head + BEGIN + "\n" + readme_tables() + END + rest.split(END, 1)[1]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def _main(argv: list[Any]) -> int:
    if argv == ["--update-readme"]:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        print(f"{readme}: {'updated' if update_readme(readme) else 'already up to date'}")
        return 0
    print(readme_tables())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
