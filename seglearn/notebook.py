"""``setup_notebook()``: the first cell of every chapter — versions, device, seed, data root and the run mode.

The run mode is ``setup_notebook(mode=...)``, else the variable ``SEGLEARN_MODE``: ``QUICK`` (CI, a CPU: small
data, a few minutes per chapter) or ``FULL`` (a GPU: real CamVid at 360x480, trained to the numbers the chapter
states). Without either a CPU runs QUICK and a GPU runs FULL.
``SEGLEARN_PRETRAINED`` (0 or 1) says whether backbones start from ImageNet weights; by default
FULL does and QUICK does not (set 0 on a machine that cannot download them). :class:`NotebookConfig` carries the
helpers that keep chapters short and free of training loops; :meth:`NotebookConfig.checkpoints` makes a FULL training
run continue where it stopped when its cell is run again (after a Colab disconnect, a crash or a time limit).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import seglearn
from seglearn.checkpoint import check_plain, check_recipe
from seglearn.seeding import seed_everything
from seglearn.settings import MODES, env_names, env_seconds, run_mode, use_pretrained

# the switches live in seglearn.settings; chapters and scripts import them from here too
__all__ = ["MODES", "LoaderInfo", "NotebookConfig", "env_names", "env_seconds", "run_mode", "setup_notebook",
           "spread", "use_pretrained"]  # fmt: skip

if TYPE_CHECKING:
    from seglearn.models import Recipe
    from seglearn.report import RunReport

T = TypeVar("T")

CAMVID_SIZE = (360, 480)
# QUICK frames: CamVid shrunk 3x, so that a chapter trains on two CPU cores in about a minute.
QUICK_SIZE = (120, 160)
# FULL runs checkpoint here, relative to the notebook's folder (notebooks/runs/ is git-ignored).
CHECKPOINTS = Path("runs") / "checkpoints"
# QUICK's safety cap on one training run: a QUICK run takes well under a minute on two CPU cores, so only a machine
# far slower than that hits it (the run then stops early and says so) instead of stalling a learner for an hour.
QUICK_CAP_S = 120
# What fit adds to a checkpoint's recipe by itself: a saved value for one of these is compared only when the chapter
# names the key too.
_FIT_RECIPE_KEYS = frozenset({"lr", "optimizer", "weight_decay", "momentum", "poly_power", "warmup_iters"})


@dataclass
class LoaderInfo:
    """What a chapter needs to know about the data behind its loaders (also readable as ``info["classes"]``)."""

    classes: list[str]
    palette: np.ndarray
    num_classes: int
    ignore_index: int
    source: str  # "camvid" or "synthetic"
    train_size: int
    val_size: int
    dataset: Any = None  # the whole training dataset behind the (possibly subset) loader: class_weights() etc.

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def spread(n: int, total: int) -> list[int]:
    """``min(n, total)`` distinct indices spread evenly over ``range(total)``, starting at 0."""
    if n < 1 or total < 1:
        raise ValueError(f"need at least one image to pick and one to pick from, got n={n}, total={total}")
    n = min(n, total)
    return [i * total // n for i in range(n)]


def _matplotlib_defaults() -> None:
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (8.0, 4.0),
            "figure.dpi": 100,  # small committed outputs
            "savefig.bbox": "tight",
            "image.interpolation": "nearest",  # label maps must not be smoothed
            "axes.grid": False,
            "font.size": 10,
        }
    )


CHAPTER_DATASETS = ("camvid", "voc")  # what a chapter's dataset switch takes


@dataclass
class NotebookConfig:
    """The run's settings and the helpers a chapter calls instead of writing loaders or loops itself."""

    mode: str
    device: torch.device
    seed: int
    data_root: Path
    camvid_root: Path | None
    versions: dict[str, str] = field(default_factory=dict)
    pretrained: bool = False  # pass as pretrained_backbone=: ImageNet weights for the backbones that have them
    checkpoint_root: Path = CHECKPOINTS  # where FULL runs checkpoint (e.g. a mounted Google Drive folder)
    full_minutes: float | None = None  # the most minutes one FULL training cell trains before it stops (resumable)

    @property
    def quick(self) -> bool:
        return self.mode == "QUICK"

    def pick(self, quick: T, full: T) -> T:
        """``quick`` in QUICK mode, ``full`` in FULL mode (epochs, sizes, ...)."""
        return quick if self.quick else full

    def summary(self) -> str:
        """The block :func:`setup_notebook` prints."""
        from seglearn.record import device_name

        v = self.versions
        data = f"{self.data_root}  (CamVid: {self.camvid_root or 'not found, QUICK uses SyntheticScenes'})"
        cap = f" | FULL training cells stop after {self.full_minutes:g} min" if self.full_minutes else ""
        return "\n".join(
            [
                f"run of {time.strftime('%Y-%m-%d')} | seglearn {v.get('seglearn')} | python {v.get('python')} | "
                f"torch {v.get('torch')} | torchvision {v.get('torchvision')}",
                f"device: {device_name(self.device)} | seed: {self.seed} | mode: {self.mode} "
                f"({'small data, a few minutes' if self.quick else 'real data, paper-style training'}; "
                "setup_notebook(mode='QUICK'|'FULL') to change)",
                f"data root: {data}",
                f"backbones: {'ImageNet weights' if self.pretrained else 'from scratch'} "
                f"(set SEGLEARN_PRETRAINED=1|0 to change) | checkpoints: {self.checkpoint_root}{cap}",
            ]
        )

    def estimate(self, model: torch.nn.Module, train_loader: DataLoader, epochs: int) -> str | None:
        """FULL: print and return the estimated training time of ``epochs`` over ``train_loader`` (its dataset's
        size, the crop of its first sample) on this device (:func:`seglearn.estimate.training_estimate`), and what
        ``full_minutes`` does to it. QUICK: None, nothing printed (a QUICK chapter takes minutes)."""
        if self.quick:
            return None
        from seglearn.estimate import training_estimate

        dataset = train_loader.dataset
        size = tuple(dataset[0][0].shape[-2:])  # type: ignore[index]
        text = training_estimate(model, size, len(dataset), epochs, self.device, self.full_minutes)  # type: ignore[arg-type]
        print(text)
        return text

    def checkpoints(self, name: str, **recipe: Any) -> dict[str, Any]:
        """``fit`` keyword arguments that let a FULL run survive a disconnect: ``seglearn.fit(..., **cfg.checkpoints(
        "05_deeplabv3", model="deeplabv3", epochs=50, lr=0.01))``.

        FULL: ``checkpoint_dir`` <checkpoint_root>/<name> (default runs/checkpoints; ``last.pt`` every epoch,
        ``best.pt``), ``resume`` (True when that folder holds a ``last.pt``; it then prints the one line "resuming
        ...") and ``recipe`` ``{"run": name, **recipe}``, which fit stores next to the model's spec. ``recipe`` is
        whatever makes a different run (model name and keywords, epochs, lr, loss, ...; plain values only): a folder
        written by another recipe is refused with a ValueError that names the differing keys and the folder to delete,
        never resumed silently. The checkpoint also loads with :func:`seglearn.load_model` and ``python -m seglearn
        evaluate``.
        With ``setup_notebook(full_minutes=m)`` also ``time_budget_s`` = 60 m: the run stops after m minutes, saved
        mid-epoch, and running the cell again continues it. QUICK: only ``time_budget_s`` = ``QUICK_CAP_S`` (no
        checkpoints: a QUICK run takes under a minute; the cap only guards against a far slower machine).
        """
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"checkpoint name {name!r} must be a plain folder name such as '05_deeplabv3'")
        if "run" in recipe:
            raise ValueError(f"'run' is the checkpoint's name ({name!r}); drop it from the recipe")
        for key, value in recipe.items():
            check_plain(value, f"recipe value {key}=")
        if self.quick:
            return {"time_budget_s": QUICK_CAP_S}
        folder = self.checkpoint_root / name
        config = {"run": name, **recipe}
        last = folder / "last.pt"
        if last.is_file():
            try:
                state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)  # only its config is read
                saved = dict(state.get("recipe") or state.get("model_config") or {})  # model_config: older files
                epoch = int(state["epoch"])
            except Exception as err:  # a file torch cannot read is as stale as a foreign recipe
                raise ValueError(
                    f"{last} is not a readable seglearn checkpoint ({type(err).__name__}: {err}); delete the folder "
                    f"{folder} to train {name} from scratch"
                ) from err
            saved = {k: v for k, v in saved.items() if k in config or k not in _FIT_RECIPE_KEYS}
            check_recipe(saved, config, folder=folder)
            total = recipe.get("epochs")
            of = f"epoch {epoch} of {total}" if total is not None else f"epoch {epoch}"
            steps = int((state.get("partial") or {}).get("steps", 0))  # a time budget stopped it mid-epoch
            of += f", {steps} step{'s' * (steps != 1)} into epoch {epoch + 1}" if steps else ""
            print(f"resuming {name} from {last} ({of}); delete that folder to train from scratch")
        budget = {"time_budget_s": 60.0 * self.full_minutes} if self.full_minutes else {}
        return {"checkpoint_dir": folder, "resume": last.is_file(), "recipe": config, **budget}

    def report(self, name: str, **run: Any) -> RunReport:
        """Save the run's record and show it against the majority floor and chapter 00's baseline, with sentences
        generated from its numbers: :func:`seglearn.report.report_run` (its keywords), ``cfg`` passed for you."""
        from seglearn.report import report_run

        return report_run(self, name, **run)

    def recipe(self, model_name: str, dataset: str = "camvid") -> Recipe:
        """The registry's recipe for ``model_name`` in this run mode: its QUICK recipe (the small variant's model
        keywords, epochs, lr, ...) in QUICK mode, whatever ``dataset`` (QUICK trains on CamVid), and in FULL its first
        FULL recipe on ``dataset`` ("camvid": the chapter's results-table row; "voc": the paper's VOC recipe)."""
        from seglearn.models import model_info

        info = model_info(model_name)
        if dataset not in CHAPTER_DATASETS:
            raise ValueError(f"dataset {dataset!r} is not one of: {', '.join(CHAPTER_DATASETS)}")
        full = [r for r in info.full if r.dataset == dataset]
        recipe = info.quick if self.quick else (full[0] if full else None)
        if recipe is None:
            has = sorted({r.dataset for r in info.full}) or ["none"]
            raise ValueError(
                f"{model_name} registers no {self.mode} recipe on {dataset} (its FULL recipes: {', '.join(has)}); "
                "pass quick= or full= to its register_model, or give epochs and lr to fit directly"
            )
        return recipe

    @staticmethod
    def fit_recipe(recipe: Recipe) -> dict[str, Any]:
        """The :func:`seglearn.fit` keywords of ``recipe``: epochs, lr, optimizer, weight decay, and its schedule
        and per-layer rates when they are not the defaults (plain values, so ``cfg.checkpoints`` can store them)."""
        out: dict[str, Any] = dict(epochs=recipe.epochs, lr=recipe.lr, optimizer=recipe.optimizer,
                                   weight_decay=recipe.weight_decay)  # fmt: skip
        if recipe.schedule != "poly":
            out["schedule"] = recipe.schedule
        if recipe.lr_mult:
            out["lr_mult"] = dict(recipe.lr_mult)
        return out

    def loaders(self, dataset: str = "camvid", **kw: Any) -> tuple[DataLoader, DataLoader, LoaderInfo]:
        """Train and val loaders of ``dataset``: "camvid" is :meth:`camvid_loaders` (``kw`` its keywords); "voc"
        in FULL mode is PASCAL VOC 2012 (``trainaug`` when SBD is beside it, else ``train``; scored on all of val at
        each image's size), and in QUICK mode CamVid's QUICK loaders, as every QUICK chapter (said in one line)."""
        if dataset not in CHAPTER_DATASETS:
            raise ValueError(f"dataset {dataset!r} is not one of: {', '.join(CHAPTER_DATASETS)}")
        if dataset == "camvid" or self.quick:
            if dataset != "camvid":
                print(f"QUICK mode trains on CamVid: dataset={dataset!r} takes effect in FULL mode (a GPU)")
            kw.pop("rotate", None)  # CamVid's upright road scenes: no recipe rotates them
            return self.camvid_loaders(**kw)
        return self._voc_loaders(kw.get("crop", (321, 321)), kw.get("batch_size", 8), kw.get("workers"),
                                 kw.get("rotate", 0.0))  # fmt: skip

    def _voc_loaders(self, crop: Any, batch_size: int, workers: int | None, rotate: float) -> tuple[Any, Any, Any]:
        from seglearn import data

        root = data.locate_dataset("voc") or data.download_voc()
        crop_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
        train_tf = data.train_transforms(crop_hw, rotate=rotate)
        try:
            train_ref = data.VOCSegmentation(root, "trainaug", transforms=train_tf)
        except FileNotFoundError as err:  # no SBD: the 1,464 VOC train images (the papers train on 10,582)
            print(f"training on VOC train, not trainaug: {err}")
            train_ref = data.VOCSegmentation(root, "train", transforms=train_tf)
        val_set = data.VOCSegmentation(root, "val", transforms=data.eval_transforms())
        return self._finish_loaders(train_ref, train_ref, val_set, "voc", batch_size, workers)

    def _finish_loaders(self, train_ref: Any, train_set: Any, val_set: Any, source: str, batch_size: int,
                        workers: int | None) -> tuple[DataLoader, DataLoader, LoaderInfo]:  # fmt: skip
        """The loaders over ``train_set`` (a subset of ``train_ref`` or it) and ``val_set``, and their LoaderInfo."""
        from seglearn import data

        train_ref.transforms.set_random_seed(self.seed)  # albumentations 2 draws from its own generator
        n_workers = self.pick(0, min(4, os.cpu_count() or 1)) if workers is None else workers
        kw = dict(batch_size=batch_size, workers=n_workers, seed=self.seed, pin_memory=self.device.type == "cuda")
        info = LoaderInfo(classes=list(train_ref.classes), palette=np.asarray(train_ref.palette),
                          num_classes=train_ref.num_classes, ignore_index=train_ref.ignore_index, source=source,
                          train_size=len(train_set), val_size=len(val_set), dataset=train_ref)  # fmt: skip
        return data.make_loader(train_set, train=True, **kw), data.make_loader(val_set, train=False, **kw), info

    def camvid_loaders(
        self,
        crop: int | tuple[int, int] = (360, 480),
        batch_size: int = 8,
        quick_train: int = 64,
        quick_val: int = 16,
        workers: int | None = None,
        quick_size: tuple[int, int] = QUICK_SIZE,
    ) -> tuple[DataLoader, DataLoader, LoaderInfo]:
        """Train and val loaders for CamVid's 11 classes, sized by the run mode.

        QUICK: ``quick_train``/``quick_val`` images spread evenly over real CamVid's splits when it is on disk (the
        splits are video sequences: the first N frames would be N views of one street), else as many
        :class:`~seglearn.data.SyntheticScenes`; frames are ``quick_size`` (CamVid's 360x480 shrunk 3x) and train
        crops are ``crop`` clipped to that size. FULL: all of CamVid train/val at 360x480 (downloaded if missing),
        decoded once into memory, train with the augmenting preset at ``crop``, val at full size.
        Batches: images (B, 3, h, w) float (ImageNet-normalized), masks (B, h, w) long with 255 = ignore.
        """
        from seglearn import data

        crop_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
        if len(crop_hw) != 2 or min(crop_hw) < 1:
            raise ValueError(f"crop must be an int or (H, W) with positive sizes, got {crop!r}")
        if self.quick:
            crop_hw = (min(crop_hw[0], quick_size[0]), min(crop_hw[1], quick_size[1]))
        if self.quick and self.camvid_root is not None:
            s = quick_size[0] / CAMVID_SIZE[0]  # shrink the frame, then jitter mildly around it (0.75..1.25)
            train_tf = data.train_transforms(crop_hw, scale=(0.75 * s, 1.25 * s))
            train_ref = data.CamVid(self.camvid_root, "train", transforms=train_tf)
            val_ref = data.CamVid(self.camvid_root, "val", transforms=data.eval_transforms(size=quick_size))
            train_set: Dataset = Subset(train_ref, spread(quick_train, len(train_ref)))
            val_set: Dataset = Subset(val_ref, spread(quick_val, len(val_ref)))
            source = "camvid"
        elif self.quick:
            train_tf = data.train_transforms(crop_hw, scale=(0.75, 1.25))
            train_ref = data.build_dataset("synthetic", "train", num_images=quick_train, size=quick_size,
                                           seed=self.seed, transforms=train_tf)  # fmt: skip
            train_set = train_ref
            val_set = data.build_dataset("synthetic", "val", num_images=quick_val, size=quick_size, seed=self.seed,
                                         transforms=data.eval_transforms())  # fmt: skip
            source = "synthetic"
        else:
            # FULL: the real thing, downloaded when missing (QUICK never downloads).
            root = self.camvid_root or data.download_camvid()
            # decoded once into RAM (~254 MB train, 70 MB val): 50-80 epochs would otherwise decode every PNG each epoch
            train_ref = data.CamVid(root, "train", transforms=data.train_transforms(crop_hw), preload=True)
            train_set = train_ref
            val_set = data.CamVid(root, "val", transforms=data.eval_transforms(), preload=True)
            source = "camvid"
        return self._finish_loaders(train_ref, train_set, val_set, source, batch_size, workers)


def setup_notebook(
    seed: int = 0, device: str | torch.device | None = None, quiet: bool = False, *, mode: str | None = None,
    data_root: str | os.PathLike | None = None, checkpoint_root: str | os.PathLike | None = None,
    full_minutes: float | None = None,
) -> NotebookConfig:  # fmt: skip
    """Seed everything, pick the device and run mode, set plotting defaults and print one short summary block.

    ``mode``: "QUICK" or "FULL"; None reads ``SEGLEARN_MODE``, else the device decides (a GPU runs FULL).
    ``data_root``: where datasets are found and downloaded (sets ``SEGLEARN_DATA`` for this process, e.g. a Google
    Drive folder, so that a download outlives the session). ``checkpoint_root``: where FULL runs checkpoint (default
    runs/checkpoints). ``full_minutes``: the most minutes each FULL training cell trains; it stops at a checkpoint
    and running it again continues (a free Colab session is shorter than the papers' schedules).
    """
    import torchvision

    from seglearn.data import locate_dataset
    from seglearn.data import paths as data_paths

    if full_minutes is not None and not 0 < full_minutes < float("inf"):
        raise ValueError(f"full_minutes={full_minutes!r} must be a positive number of minutes (or None: no cap)")
    if data_root is not None:
        os.environ["SEGLEARN_DATA"] = str(Path(data_root).expanduser())  # downloads and locate_dataset read it
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = run_mode(dev, mode)
    seed_everything(seed)
    _matplotlib_defaults()
    cfg = NotebookConfig(
        mode=run,
        device=dev,
        seed=seed,
        data_root=Path(data_paths.data_root()),
        camvid_root=locate_dataset("camvid"),
        pretrained=use_pretrained(run),
        checkpoint_root=Path(checkpoint_root).expanduser() if checkpoint_root is not None else CHECKPOINTS,
        full_minutes=full_minutes,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "seglearn": seglearn.__version__,
        },
    )
    if not quiet:
        print(cfg.summary())  # the notebook's setup cell shows this block (the package's other print: checkpoints)
    return cfg
