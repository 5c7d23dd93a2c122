"""A trained model in one file: ``save_model`` writes it, ``load_model`` rebuilds any model file seglearn writes.

A model file holds ``{"format": "seglearn-model", "version": 1, "model_spec", "meta", "state_dict"}``: the spec is
what :func:`seglearn.models.create_model` rebuilds (``{"model": name, "num_classes": n, "model_kwargs": {...}}``,
set on every model it builds as ``model.model_spec``), meta is free plain data (classes, palette, dataset, ...).
:func:`load_model` also reads ``fit``'s ``last.pt``/``best.pt`` and the files of earlier seglearn versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    check_finite,
    check_plain,
    check_state_dict,
    read_torch_file,
    renamed_state_dict,
    save_checkpoint,
)

__all__ = ["save_model", "load_model", "labelled_meta", "FORMAT", "VERSION"]

FORMAT, VERSION = "seglearn-model", 1

_NOT_A_MODEL_FILE = (
    "{path} is not a seglearn model file: pass a model.pt written by `seglearn train`, or a last.pt/best.pt "
    "written by fit"
)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _tolist(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def save_model(
    path: str | os.PathLike, model: nn.Module, *, model_spec: dict[str, Any] | None = None, **meta: Any
) -> Path:
    """Write ``model``'s weights with what rebuilds it to ``path`` (atomically: a temporary file, then a rename).

    ``model_spec`` defaults to ``model.model_spec`` (set by ``create_model``); ``meta`` keywords are stored as they
    are (plain values; numpy arrays and tensors become lists), e.g. ``classes=``, ``palette=``, ``dataset=``.
    """
    net = _unwrap(model)
    spec = model_spec if model_spec is not None else getattr(net, "model_spec", None)
    if spec is None:
        raise ValueError(
            f"save_model needs to know how to rebuild this {type(net).__name__}: build it with "
            "seglearn.create_model (which records model.model_spec), or pass model_spec={'model': name, "
            "'num_classes': n, 'model_kwargs': {...}}"
        )
    meta = {k: _tolist(v) for k, v in meta.items()}
    check_plain(spec, "model_spec")
    check_plain(meta, "meta")
    state = net.state_dict()
    check_finite(state, f"the {type(net).__name__} given to save_model")
    return save_checkpoint({"format": FORMAT, "version": VERSION, "model_spec": dict(spec), "meta": meta,
                            "state_dict": state}, path)  # fmt: skip


def _spec_from(name: Any, num_classes: Any, model_kwargs: Any) -> dict[str, Any]:
    """The spec of a file written before specs were stored."""
    kwargs = dict(model_kwargs or {})
    if name == "segnet" and kwargs.get("variant") in ("basic", "full"):  # segnet(variant=) became two names
        name = "segnet_basic" if kwargs.pop("variant") == "basic" else name
    return {"model": name, "num_classes": num_classes, "model_kwargs": kwargs}


def _no_spec(path: Path) -> ValueError:
    return ValueError(
        f"{path} was written by fit for a model without a model_spec, so it cannot be rebuilt from the file: build "
        "the model with seglearn.create_model (or pass model_spec= to fit) when training, or build the same model "
        "yourself and load its weights with seglearn.checkpoint.load_checkpoint(path, model)"
    )


def _read(path: Path, ckpt: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(model_spec, meta, state_dict) of any file seglearn writes."""
    if not isinstance(ckpt, dict):
        raise ValueError(_NOT_A_MODEL_FILE.format(path=path))
    if ckpt.get("format") == FORMAT:
        if int(ckpt.get("version", 0)) > VERSION:
            raise ValueError(f"{path} is a seglearn model file of version {ckpt['version']}: upgrade seglearn")
        return dict(ckpt["model_spec"]), dict(ckpt.get("meta") or {}), ckpt["state_dict"]
    if "state_dict" in ckpt and "model" in ckpt and "num_classes" in ckpt:  # `seglearn train`'s model.pt before 0.2
        meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "model_kwargs")}
        return _spec_from(ckpt["model"], ckpt["num_classes"], ckpt.get("model_kwargs")), meta, ckpt["state_dict"]
    if isinstance(ckpt.get("model"), dict) and "epoch" in ckpt:  # fit's last.pt / best.pt
        meta = {"epoch": ckpt["epoch"], "num_classes": ckpt.get("num_classes"), "recipe": ckpt.get("recipe")}
        if "model_spec" in ckpt:
            if not ckpt["model_spec"]:
                raise _no_spec(path)
            return dict(ckpt["model_spec"]), meta, ckpt["model"]
        config = ckpt.get("model_config") or {}  # written before model_spec: the CLI's config named the model
        if "model" in config and "num_classes" in config:
            meta.update((k, v) for k, v in config.items() if k not in ("model", "num_classes", "model_kwargs"))
            return _spec_from(config["model"], config["num_classes"], config.get("model_kwargs")), meta, ckpt["model"]
        raise _no_spec(path)
    raise ValueError(_NOT_A_MODEL_FILE.format(path=path))


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, return_meta: bool = False
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """The model a seglearn file describes, with its weights, in eval mode on ``device``.

    Reads a file of :func:`save_model` (``seglearn train``'s ``model.pt``), ``fit``'s ``last.pt``/``best.pt``
    (when the model came from ``create_model`` or ``fit`` got ``model_spec=``) and the files of earlier versions,
    with ``torch.load(weights_only=True)``. ``return_meta=True`` returns ``(model, meta)``, meta being
    ``{"model_spec": ..., **what the file stores beside the weights}``.
    """
    from .models import create_model  # here: reading a model file's header should not need every model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: pass the model.pt `seglearn train` wrote under --out")
    hint = "pass a model.pt written by `seglearn train`, or a last.pt/best.pt written by fit"
    ckpt = read_torch_file(path, "seglearn model file", hint)  # truncated, a PNG, a pickle: one line each
    spec, meta, state = _read(path, ckpt)
    kwargs = dict(spec.get("model_kwargs") or {})
    head = state.get("head.1.weight")
    if spec["model"] == "deeplabv3" and "head" not in kwargs and getattr(head, "shape", ())[-1:] == (3,):
        kwargs["head"] = "torchvision"  # written before head= existed, when torchvision's (a 3x3 conv) was the one
    model = create_model(spec["model"], int(spec["num_classes"]), **kwargs)
    state = renamed_state_dict(state, model)
    check_state_dict(state, model, source=str(path), saved_spec=spec)
    model.load_state_dict(state)
    model = model.to(device).eval()
    return (model, {"model_spec": spec, **meta}) if return_meta else model


def labelled_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``load_model(..., return_meta=True)``'s meta with what the commands show: ``model``, ``num_classes``,
    ``dataset`` and the ``classes``/``palette`` (for a file of fit, which stores none, its dataset's)."""
    from .data import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, voc_palette

    spec = meta["model_spec"]
    dataset = meta.get("dataset") or (meta.get("recipe") or {}).get("dataset")  # fit's checkpoints keep it there
    meta = {**meta, "model": spec["model"], "num_classes": int(spec["num_classes"]), "dataset": dataset}
    if "classes" not in meta:  # a checkpoint written by fit (a chapter): its dataset's names and colours
        voc = dataset == "voc" or (dataset is None and meta["num_classes"] == len(VOC_CLASSES))
        meta["classes"] = list(VOC_CLASSES if voc else CAMVID_CLASSES)
        meta["palette"] = (voc_palette(len(VOC_CLASSES)) if voc else CAMVID_PALETTE).tolist()
    return meta
