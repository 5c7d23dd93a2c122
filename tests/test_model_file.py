"""Model files: save_model/load_model round trip, fit's checkpoints and the files of earlier versions, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import seglearn
from seglearn.engine import fit
from seglearn.model_file import load_model, save_model
from seglearn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest

SPEC = {"model": "tinyfcn", "num_classes": 3, "model_kwargs": {"width": 8}}
X = torch.randn(2, 3, 24, 32)


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("tinyfcn", 3, width=8)
    model.model_spec = SPEC  # what create_model records (set here too: the test does not depend on it)
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(X)["out"], b.eval()(X)["out"], rtol=0, atol=0)


def test_save_and_load_round_trip_with_meta(tmp_path):
    model = _tiny()
    path = save_model(tmp_path / "run" / "model.pt", model, classes=["a", "b", "c"], palette=torch.eye(3).int())
    assert path == tmp_path / "run" / "model.pt"
    file = torch.load(path, weights_only=True)
    assert set(file) == {"format", "version", "model_spec", "meta", "state_dict"}
    assert (file["format"], file["version"], file["model_spec"]) == ("seglearn-model", 1, SPEC)
    loaded, meta = load_model(path, return_meta=True)
    assert not loaded.training
    assert meta == {"model_spec": SPEC, "classes": ["a", "b", "c"], "palette": torch.eye(3).int().tolist()}
    _same_outputs(loaded, model)
    assert seglearn.load_model is load_model
    assert isinstance(seglearn.load_model(path), nn.Module)


def test_save_is_atomic_and_needs_a_spec(tmp_path, monkeypatch):
    path = save_model(tmp_path / "model.pt", _tiny())
    with pytest.raises(ValueError, match=r"build it with seglearn.create_model .*or pass model_spec="):
        save_model(tmp_path / "other.pt", nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="meta .* is not plain data"):
        save_model(tmp_path / "other.pt", _tiny(), loss=nn.CrossEntropyLoss())

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, _tiny(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the temporary file is gone
    monkeypatch.undo()
    _same_outputs(load_model(path), _tiny())  # and the previous file is intact


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (8, 24, 32), generator=g)
    images = torch.eye(3)[masks].permute(0, 3, 1, 2) + 0.3 * torch.randn(8, 3, 24, 32, generator=g)
    data = TensorDataset(images, masks)
    model = _tiny()
    fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4), epochs=2, lr=0.1,
        device="cpu", checkpoint_dir=d, progress=False, recipe={"run": "t"})  # fmt: skip
    return d, model


def test_fit_checkpoints_load_with_equal_outputs(fitted):
    d, model = fitted
    loaded, meta = load_model(d / "last.pt", return_meta=True)
    _same_outputs(loaded, model)
    assert meta["model_spec"] == SPEC and meta["epoch"] == 2 and meta["num_classes"] == 3
    assert meta["recipe"]["run"] == "t"
    best = torch.load(d / "best.pt", weights_only=True)
    assert load_model(d / "best.pt", return_meta=True)[1]["epoch"] == best["epoch"]


def test_create_model_records_the_spec_fit_stores(tmp_path):
    model = create_model("tinyfcn", 3, width=8)
    assert model.model_spec == SPEC  # set by create_model (seglearn.models.registry)
    data = TensorDataset(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 16, 16)))
    fit(model, DataLoader(data, batch_size=2), epochs=1, lr=0.1, checkpoint_dir=tmp_path, progress=False)
    _same_outputs(load_model(tmp_path / "last.pt"), model)


def test_legacy_cli_model_file_loads(tmp_path):
    model = _tiny()
    legacy = {"model": "tinyfcn", "num_classes": 3, "model_kwargs": {"width": 8}, "dataset": "synthetic",
              "classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3, "crop": [16, 16],
              "state_dict": model.state_dict()}  # fmt: skip
    torch.save(legacy, tmp_path / "model.pt")
    loaded, meta = load_model(tmp_path / "model.pt", return_meta=True)
    _same_outputs(loaded, model)
    assert meta["model_spec"] == SPEC and meta["dataset"] == "synthetic" and meta["classes"] == ["a", "b", "c"]


def test_legacy_fit_checkpoint_with_the_clis_model_config_loads(fitted, tmp_path):
    d, model = fitted
    state = torch.load(d / "last.pt", weights_only=True)
    for key in ("model_spec", "recipe"):
        del state[key]
    state["model_config"] = {"model": "tinyfcn", "num_classes": 3, "model_kwargs": {"width": 8}, "dataset": "camvid"}
    torch.save(state, tmp_path / "last.pt")
    loaded, meta = load_model(tmp_path / "last.pt", return_meta=True)
    _same_outputs(loaded, model)
    assert meta["model_spec"] == SPEC and meta["dataset"] == "camvid" and meta["epoch"] == 2


def test_checkpoints_without_a_spec_say_how_to_get_one(fitted, tmp_path):
    d, _ = fitted
    state = torch.load(d / "last.pt", weights_only=True)
    torch.save({**state, "model_spec": None}, tmp_path / "nospec.pt")
    chapter = {k: v for k, v in state.items() if k not in ("model_spec", "recipe")}
    torch.save({**chapter, "model_config": {"run": "05_deeplabv3", "epochs": 50}}, tmp_path / "chapter.pt")
    advice = r"without a model_spec.*seglearn.create_model \(or pass model_spec= to fit\)"
    for name in ("nospec.pt", "chapter.pt"):
        with pytest.raises(ValueError, match=advice):
            load_model(tmp_path / name)


def test_other_files_are_refused_with_what_to_pass(tmp_path):
    not_a_model = r"is not a seglearn model file: (.*; )?pass a model.pt written by `seglearn train`, or a last.pt/best"
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    torch.save(nn.Conv2d(1, 1, 1), tmp_path / "pickled.pt")  # a whole module: weights_only refuses it
    torch.save([1, 2], tmp_path / "list.pt")
    for name in ("other.pt", "text.pt", "pickled.pt", "list.pt"):
        with pytest.raises(ValueError, match=not_a_model):
            load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no model file at"):
        load_model(tmp_path / "missing.pt")
    save_model(tmp_path / "new.pt", _tiny())
    torch.save({**torch.load(tmp_path / "new.pt", weights_only=True), "version": 2}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="version 2: upgrade seglearn"):
        load_model(tmp_path / "new.pt")


def test_weights_of_another_shape_are_named(tmp_path):
    save_model(tmp_path / "model.pt", _tiny(), model_spec={**SPEC, "model_kwargs": {"width": 16}})
    with pytest.raises(ValueError, match=r"shape mismatches: .*\(8, 3, 3, 3\) in the checkpoint vs \(16, 3, 3, 3\)"):
        load_model(tmp_path / "model.pt")


def test_legacy_files_from_before_backbone_and_head_load(tmp_path):
    torch.manual_seed(0)
    unet = create_model("unet", 3, base_channels=8).eval()
    old_names = {k.removeprefix("backbone.").removeprefix("head."): v for k, v in unet.state_dict().items()}
    assert any(k.startswith("inc.") for k in old_names) and any(k.startswith("up") for k in old_names)
    torch.save({"model": "unet", "num_classes": 3, "model_kwargs": {"base_channels": 8}, "state_dict": old_names},
               tmp_path / "unet.pt")  # fmt: skip
    _same_outputs(load_model(tmp_path / "unet.pt"), unet)
    torch.manual_seed(0)
    basic = create_model("segnet_basic", 3).eval()
    torch.save({"model": "segnet", "num_classes": 3, "model_kwargs": {"variant": "basic"},
                "state_dict": basic.state_dict()}, tmp_path / "segnet.pt")  # fmt: skip
    loaded, meta = load_model(tmp_path / "segnet.pt", return_meta=True)
    assert meta["model_spec"] == {"model": "segnet_basic", "num_classes": 3, "model_kwargs": {}}
    _same_outputs(loaded, basic)


def test_deeplabv3_files_from_before_head_load_with_torchvisions_head(tmp_path):
    """Until head= existed, deeplabv3 had torchvision's head; such a file's spec names no head."""
    torch.manual_seed(0)
    old = create_model("deeplabv3", 3, backbone="resnet18", head="torchvision").eval()
    torch.save({"model": "deeplabv3", "num_classes": 3, "model_kwargs": {"backbone": "resnet18"},
                "state_dict": old.state_dict()}, tmp_path / "old.pt")  # fmt: skip
    _same_outputs(load_model(tmp_path / "old.pt"), old)
    new = create_model("deeplabv3", 3, backbone="resnet18").eval()  # the paper's head, the default now
    save_model(tmp_path / "new.pt", new)
    _same_outputs(load_model(tmp_path / "new.pt"), new)
