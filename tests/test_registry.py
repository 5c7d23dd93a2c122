"""The model registry: a new model is its file, its test and its registration; create_model refuses in one place."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from seglearn.models import (
    ModelInfo,
    Recipe,
    SegmentationModel,
    comparison_roster,
    create_model,
    full_recipes,
    list_models,
    model_info,
    register_model,
    registry,
)

COMPARED = ["tinyfcn", "fcn8s", "fcn", "segnet", "unet", "deeplabv1", "deeplabv3", "encnet", "upernet",
            "enet", "fcdensenet103", "linknet", "gfrnet", "pspnet", "refinenet"]  # fmt: skip
# The rows of the README's FULL table, in its order (the former benchmarks/full_results.py roster).
FULL_ROWS = ["tinyfcn", "fcn8s", "fcn-r50", "segnet", "segnet-basic", "unet", "unet-mfb", "deeplabv1", "deeplabv3",
             "encnet", "upernet", "enet", "fcdensenet103", "linknet", "gfrnet", "pspnet", "refinenet"]  # fmt: skip


class ToyEncoder(nn.Module):
    """One stride-2 stage: (N, 3, H, W) -> [(N, width, H/2, W/2)]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.conv(x)]


class ToyHead(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(feats[-1])


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> ModelInfo:
    """A toy model registered the way every model is: a builder with @register_model (on a copy of the registry)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(
        "toynet",
        paper='A. Author, "A Toy Network", 2099',
        url="https://arxiv.org/abs/0000.00000",
        chapter="99_toy",
        quick=Recipe(2, 1e-3, "adamw", model_kwargs={"width": 4}, crop=(32, 48), batch_size=2),
        full=(Recipe(5, 1e-2, row="toynet"),),
        compare=True,
    )
    def toynet(num_classes: int, *, width: int = 8) -> SegmentationModel:
        return SegmentationModel(ToyEncoder(width), ToyHead(num_classes, width))

    return model_info("toynet")


def test_a_registered_toy_model_appears_everywhere(toy, capsys):
    from seglearn.cli import main, parse_train_job
    from seglearn.names import model_names

    assert "toynet" in list_models() and list_models() == sorted(list_models()) == model_names()
    assert parse_train_job(["train", "--model", "toynet"]).model == "toynet"  # TrainJob checks --model
    assert main(["models"]) == 0 and "toynet" in capsys.readouterr().out
    assert [info.name for info in comparison_roster()] == [*COMPARED, "toynet"]  # chapter 99: last
    assert full_recipes()[-1] == (toy, toy.full[0])
    model = create_model("toynet", 3, **toy.quick.model_kwargs)
    assert model(torch.randn(2, 3, 16, 24))["out"].shape == (2, 3, 16, 24)
    assert model.model_spec == {"model": "toynet", "num_classes": 3, "model_kwargs": {"width": 4}}


def test_a_toy_model_is_gone_after_the_test():
    assert "toynet" not in list_models()


def test_registering_a_name_twice_or_a_capability_the_builder_lacks_fails(toy):
    with pytest.raises(ValueError, match="registered twice"):
        register_model("toynet", paper="")(lambda num_classes: nn.Identity())
    with pytest.raises(TypeError, match="declares aux_loss"):
        register_model("toynet2", paper="", aux_loss=True)(lambda num_classes, width=1: nn.Identity())


def test_comparison_roster_and_full_rows_are_the_chapters():
    assert [info.name for info in comparison_roster()] == COMPARED
    assert [recipe.row for _, recipe in full_recipes()] == FULL_ROWS
    for _, recipe in full_recipes():
        assert recipe.crop == (360, 480) and recipe.batch_size == 8  # the FULL table's common options
    for info in comparison_roster():
        assert info.quick is not None and info.quick.row is None and info.full and info.paper and info.chapter
        # an arXiv abstract, or the CVF's open-access copy for a CVPR paper without one (G-FRNet)
        papers = ("https://arxiv.org/abs/", "https://openaccess.thecvf.com/")
        assert info.url.startswith(papers) or info.name == "tinyfcn"


def test_the_comparison_can_be_cut_to_named_models(monkeypatch):
    from seglearn.notebook import env_names

    assert [info.name for info in comparison_roster(["UNet", "tinyfcn"])] == ["tinyfcn", "unet"]  # roster order
    with pytest.raises(ValueError, match="not in the comparison roster: fcn32s; choose from: tinyfcn, fcn8s"):
        comparison_roster(["unet", "fcn32s"])
    with pytest.raises(ValueError, match="no names given"):
        comparison_roster([])
    monkeypatch.setenv("SEGLEARN_COMPARE_MODELS", " unet, pspnet ,")
    assert env_names("SEGLEARN_COMPARE_MODELS") == ["unet", "pspnet"]
    monkeypatch.setenv("SEGLEARN_COMPARE_MODELS", " ")
    assert env_names("SEGLEARN_COMPARE_MODELS") is None


@pytest.mark.parametrize("name", list_models())
def test_registration_matches_the_builder(name):
    """What a model declares is what its builder takes: a declared default backbone is the builder's default."""
    info = model_info(name)
    params = inspect.signature(info.builder).parameters
    assert ("aux_loss" in params) == info.aux_loss
    assert ("pretrained_backbone" in params) == info.pretrained_backbone
    assert ("backbone" in params) == bool(info.backbones)
    if info.backbones:
        assert params["backbone"].default == info.backbones[0]
    for recipe in (info.quick, *info.full):
        if recipe is not None:  # every recipe builds (on "meta": shapes only, no memory)
            json.dumps(recipe.as_dict())
            with torch.device("meta"):
                create_model(name, 11, aux_loss=recipe.aux_loss, **recipe.model_kwargs)


@pytest.mark.parametrize("name", list_models())
def test_every_unsupported_option_is_one_value_error(name):
    info = model_info(name)
    if not info.aux_loss:
        with pytest.raises(ValueError, match=rf"{name} has no auxiliary head: pass aux_loss=False \(models with one:"):
            create_model(name, 3, aux_loss=True)
    if not info.pretrained_backbone:
        with pytest.raises(ValueError, match=rf"{name} has no pretrained backbone.*pass pretrained_backbone=False"):
            create_model(name, 3, pretrained_backbone=True)
    if info.backbones:
        with pytest.raises(ValueError, match=rf"pass one of: {', '.join(info.backbones)} \(default"):
            create_model(name, 3, backbone="mobilenet_v3")
    else:
        with pytest.raises(ValueError, match=rf"{name} has a fixed encoder and takes no backbone="):
            create_model(name, 3, backbone="resnet50")
    with pytest.raises(ValueError, match=rf"{name} does not take colour=; its keywords are: "):
        create_model(name, 3, colour="red")
    for bad in (0, 1, 2.5, "3", True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            create_model(name, bad)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; choose one of: deeplabv1, deeplabv3, "):
        create_model("resnet", 3)
    with pytest.raises(ValueError, match="choose one of"):
        model_info("nope")
    assert model_info("UNet") is model_info("unet")


def test_unknown_keyword_message_names_the_accepted_ones():
    with pytest.raises(ValueError) as err:
        create_model("unet", 3, base=16)
    assert "in_channels, depth, base_channels, up_mode" in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("unet", {"base_channels": 4, "depth": 2}),
        ("tinyfcn", {"width": 8, "aux_loss": True}),
        ("deeplabv3", {"backbone": "resnet18", "aux_loss": True, "atrous_rates": (3, 6, 9), "multi_grid": None}),
        ("segnet_basic", {"width": 8}),
    ],
)
def test_model_spec_round_trip(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, np.int64(5), pretrained_backbone=False, **kwargs)
    spec = model.model_spec
    assert spec == {"model": name, "num_classes": 5, "model_kwargs": kwargs}
    assert type(spec["num_classes"]) is int
    spec = json.loads(json.dumps(spec))  # as a model file stores it: tuples come back as lists
    rebuilt = create_model(spec["model"], spec["num_classes"], **spec["model_kwargs"])
    assert rebuilt.model_spec == spec
    state, again = model.state_dict(), rebuilt.state_dict()
    assert state.keys() == again.keys() and all(state[k].shape == again[k].shape for k in state)
    rebuilt.load_state_dict(state)
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["out"], rebuilt.eval()(x)["out"])


def test_model_spec_leaves_out_pretrained_backbone_and_is_none_for_objects(toy, monkeypatch):
    # A rebuilt model takes its weights from the file it is loaded from, never from ImageNet.
    monkeypatch.setattr(
        "seglearn.models.backbones._build", lambda fn, weights, pretrained, **kw: _tv(fn, **kw), raising=True
    )
    model = create_model("fcn", 3, backbone="resnet18", pretrained_backbone=True)
    assert model.model_spec == {"model": "fcn", "num_classes": 3, "model_kwargs": {"backbone": "resnet18"}}

    @register_model("objnet", paper="")
    def objnet(num_classes: int, **kwargs) -> nn.Module:  # **kwargs: any keyword is accepted
        return nn.Conv2d(3, num_classes, 1)

    assert create_model("objnet", 2, init=torch.zeros(3)).model_spec is None  # a tensor is not a plain value
    assert create_model("objnet", 2, sizes=[1, (2, 3)], opts={"a": None}).model_spec["model_kwargs"] == {
        "sizes": [1, (2, 3)],
        "opts": {"a": None},
    }


def _tv(fn: str, **kwargs) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, fn)(weights=None, **kwargs)


def test_recipe_is_plain_and_checked():
    kwargs = {"backbone": "resnet18"}
    recipe = Recipe(8, 1e-3, "adamw", model_kwargs=kwargs, crop=[96, 128])
    kwargs["backbone"] = "resnet50"  # the recipe keeps its own copy
    assert recipe.model_kwargs == {"backbone": "resnet18"} and recipe.crop == (96, 128)
    d = recipe.as_dict()
    assert d == json.loads(json.dumps(d))
    assert d["crop"] == [96, 128] and d["optimizer"] == "adamw" and d["row"] is None
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(1, 0.1, "adam")
    with pytest.raises(ValueError, match="class_weights"):
        Recipe(1, 0.1, class_weights="inverse")


def test_model_names_read_before_the_registry_loads_are_the_registry(monkeypatch):
    """The CLI checks --model without importing torch by reading the model files' registrations; they must agree."""
    import sys

    from seglearn.names import model_names

    with monkeypatch.context() as m:
        m.delitem(sys.modules, "seglearn.models.registry")
        static = model_names()
    assert static == list_models()


@pytest.mark.parametrize("n", [1, 0, -3, 2.0, "11", True])
def test_num_classes_below_two_or_not_an_integer_is_refused(n):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        create_model("tinyfcn", n)


def test_numpy_integers_are_accepted_and_stored_as_int():
    model = create_model("tinyfcn", np.int64(11))
    assert model.model_spec["num_classes"] == 11 and type(model.model_spec["num_classes"]) is int


def test_a_keyword_of_the_wrong_kind_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"tinyfcn's width takes an int \(default 32\), got 'abc'"):
        create_model("tinyfcn", 3, width="abc")
    assert create_model("tinyfcn", 3, width=np.int64(8)) is not None
