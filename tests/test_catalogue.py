"""The catalogue of user mistakes and faults (issue 21): one row per case, ``input -> exit code or exception, and a
fragment of the message``. The next mistake a user finds becomes one more row.

A command-line row is the argv of ``seglearn`` (``{name}`` is a file of the ``files`` fixture) and must exit with its
code; an error is exactly one ``seglearn: error: ...`` line, without a traceback. A Python row is a call on the
``files`` fixture: it raises the exception given (warnings count as raised) or, expecting None, returns a string that
holds the fragment. Killing a writer mid-write is in tests/test_atomic.py (it needs child processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from seglearn.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import serve  # noqa: E402  (the local HTTP server shared by the download tests)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tinyfcn", "--num-images", "8", "--crop", "32", "48", "--batch-size", "4", "--workers", "0",
        "--lr", "0.05", "--device", "cpu", "--model-arg", "width=8"]  # fmt: skip
OWN = ["--model", "tinyfcn", "--crop", "32", "48", "--batch-size", "2", "--epochs", "1", "--device", "cpu"]


@dataclass(frozen=True)
class Case:
    id: str
    call: list[str] | Callable[[dict[str, Path]], Any]  # seglearn argv, or a Python call on the files
    expect: int | type[BaseException] | None  # exit code; exception (or warning) class; None: returns a string
    fragment: str


# ---------------------------------------------------------------- Python calls


def _tiny(n: int = 3):
    from seglearn.models import create_model

    torch.manual_seed(0)
    return create_model("tinyfcn", n, width=8)


def _loader(n: int = 4, label: int | None = None, dataset: Any = None) -> DataLoader:
    masks = torch.randint(0, 3, (n, 16, 24), generator=torch.Generator().manual_seed(0))
    images = torch.eye(3)[masks].permute(0, 3, 1, 2).contiguous()
    if label is not None:
        masks[0, 3, 3] = label
    return DataLoader(dataset or TensorDataset(images, masks), batch_size=2)


def _fit(loader: DataLoader | None = None, **kw: Any):
    from seglearn.engine import fit

    return fit(kw.pop("model", None) or _tiny(), loader or _loader(),
               **{"epochs": 1, "lr": 0.05, "device": "cpu", "progress": False, **kw})  # fmt: skip


def _create(n: Any) -> str:
    from seglearn.models import create_model

    return f"built {create_model('tinyfcn', n, width=4).model_spec['num_classes']!r}"


def _predict_nan(files: dict[str, Path]) -> None:
    from seglearn.engine import predict

    predict(_tiny(), torch.full((1, 3, 16, 24), math.nan))


def _evaluate_empty(files: dict[str, Path]) -> None:
    from seglearn.engine import evaluate

    evaluate(_tiny(), DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8).long())), 3, "cpu")


def _resume(files: dict[str, Path], **kw: Any) -> None:
    folder = files["tmp"] / f"resume-{len(list(files['tmp'].glob('resume-*')))}"
    _fit(epochs=2, checkpoint_dir=folder)
    _fit(checkpoint_dir=folder, resume=True, **{"epochs": 2, **kw})


def _diverge(files: dict[str, Path]) -> None:
    _fit(lr=1e12, epochs=3, checkpoint_dir=files["tmp"] / "diverged")  # weights explode in the first steps


class _Renamed(Dataset):
    def __init__(self, inner: Dataset, rng: Any) -> None:
        self.frames, self.noise = inner, rng

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Any:
        return self.frames[i]


def _own_generator(files: dict[str, Path]) -> None:
    inner = _loader().dataset
    _fit(_loader(dataset=_Renamed(inner, np.random.default_rng(0))), checkpoint_dir=files["tmp"] / "own-rng")


def _jpeg_mask(files: dict[str, Path]) -> None:
    from seglearn.data import SegmentationFolder

    SegmentationFolder.from_root(files["badmasks"])[3]  # f3.png is a JPEG


def _stats_follow_edits(files: dict[str, Path]) -> str:
    from seglearn.data import SegmentationFolder

    root = files["tmp"] / "edited"
    shutil.copytree(files["own"], root)
    before = SegmentationFolder.from_root(root).class_weights()
    time.sleep(0.01)  # a later mtime, as an edit would have
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.full((32, 48), 2, np.uint8)).save(mask)  # edited in place: same names
    after = SegmentationFolder.from_root(root).class_weights()
    return "recounted" if not torch.equal(before, after) else "stale weights"


def _stale_part(files: dict[str, Path]) -> str:
    from seglearn.data.download import download_url

    payload, dest = b"the real file" * 100, files["tmp"] / "f.bin"
    (files["tmp"] / "f.bin.part").write_bytes(payload + b"stale tail")  # longer than the file: a 416
    with serve({"/f.bin": payload}) as srv:
        download_url(srv.url("/f.bin"), dest, retries=0, progress=False)
    return "fetched again" if dest.read_bytes() == payload else "stale part installed"


def _predict_same_names(files: dict[str, Path]) -> str:
    from seglearn.inference import predict_files

    written = predict_files(_tiny(), [files["a_x"], files["b_x"]], files["tmp"] / "same", np.eye(3, dtype=np.uint8),
                            progress=False)  # fmt: skip
    return " ".join(sorted(w.mask.name for w in written))


def _no_temp_after_kill(files: dict[str, Path]) -> str:
    from seglearn.model_file import save_model

    target = files["tmp"] / "kept.pt"
    (files["tmp"] / ".kept.pt.999999999.x.tmp").write_bytes(b"half a model")  # left by a killed writer (no pid)
    save_model(target, _tiny())
    return " ".join(sorted(p.name for p in files["tmp"].glob(".kept.pt*"))) or "no temp left"


# ---------------------------------------------------------------- the catalogue

CASES = [
    # A NaN run is saved as good
    Case("train --lr nan", ["train", *TINY, "--lr", "nan"], 2, "--lr takes a finite number > 0"),
    Case("train --lr inf", ["train", *TINY, "--lr", "inf"], 2, "--lr takes a finite number > 0"),
    Case("fit(lr=nan)", lambda f: _fit(lr=math.nan), ValueError, "lr must be a finite number > 0"),
    Case("fit diverging", _diverge, FloatingPointError, "nothing non-finite was saved"),
    # masks and labels
    Case("fit label >= C", lambda f: _fit(_loader(label=9)), ValueError, "masks of epoch 1, step 1 hold labels 9"),
    Case("fit label < 0", lambda f: _fit(_loader(label=-1)), ValueError, "hold labels -1, outside 0..2"),
    Case("jpeg mask named .png", _jpeg_mask, ValueError, "a lossy format"),
    Case("stats cache after an edit", _stats_follow_edits, None, "recounted"),
    Case(
        "bad mask in a loader worker",
        ["train", *OWN, "--data", "{badmasks}", "--workers", "1", "--out", "{tmp}/w"],
        2,
        "a lossy format",
    ),
    # predict
    Case(
        "predict 16-bit png",
        ["predict", "{png16}", "--checkpoint", "{model}", "--out", "{tmp}/p16"],
        2,
        "more than 8 bits",
    ),
    Case("predict a/x.png b/x.png", _predict_same_names, None, "a_x_mask.png b_x_mask.png"),
    Case("predict(NaN)", _predict_nan, ValueError, "predict got images holding NaN"),
    Case(
        "predict --scales 0",
        ["predict", "{a_x}", "--checkpoint", "{model}", "--scales", "0"],
        2,
        "--scales takes positive numbers",
    ),
    Case("predict --out a file", ["predict", "{a_x}", "--checkpoint", "{model}", "--out", "{afile}"], 2, "is a file"),
    # downloads
    Case("416 on an oversized .part", _stale_part, None, "fetched again"),
    # silent oddities
    Case("create_model(name, 1)", lambda f: _create(1), ValueError, "num_classes must be an integer >= 2"),
    Case("create_model(name, 0)", lambda f: _create(0), ValueError, "num_classes must be an integer >= 2"),
    Case("create_model(name, np.int64)", lambda f: _create(np.int64(11)), None, "built 11"),
    Case("evaluate(empty loader)", _evaluate_empty, ValueError, "the evaluation loader yielded no batches"),
    Case("fit(empty val loader)", lambda f: _fit(val_loader=_loader(0)), ValueError, "val_loader yields no batches"),
    Case("resume with another lr", lambda f: _resume(f, lr=0.1), ValueError, "lr: 0.05 there, 0.1 here"),
    Case("resume with fewer epochs", lambda f: _resume(f, epochs=1), ValueError, "holds 2 epochs but epochs=1"),
    Case(
        "train --resume --lr other",
        ["train", *TINY, "--epochs", "2", "--out", "{run}", "--resume", "--lr", "0.02"],
        2,
        "lr: 0.05 there, 0.02 here",
    ),
    Case(
        "train --resume --epochs fewer",
        ["train", *TINY, "--epochs", "1", "--out", "{run}", "--resume"],
        2,
        "holds 2 epochs but epochs=1",
    ),
    # exact resume depends on an attribute name
    Case("dataset's own generator", _own_generator, UserWarning, "will not be exact: dataset.noise"),
    # the CLI's promise: exit 2 and one line
    Case("train --scale 2 1", ["train", *TINY, "--scale", "2", "1"], 2, "--scale takes MIN MAX with 0 < MIN <= MAX"),
    Case("train --batch-size 0", ["train", *TINY, "--batch-size", "0"], 2, "--batch-size takes an integer >= 1"),
    Case("train --workers -1", ["train", *TINY, "--workers", "-1"], 2, "--workers takes an integer >= 0"),
    Case("train --epochs 0", ["train", *TINY, "--epochs", "0"], 2, "--epochs takes an integer >= 1"),
    Case("train --device bogus", ["train", *TINY, "--device", "bogus"], 2, "--device 'bogus' is not a device"),
    Case("train --device cuda:99", ["train", *TINY, "--device", "cuda:99"], 2, "--device cuda:99: "),
    Case("train --model nosuch", ["train", "--model", "nosuch"], 2, "argument --model: 'nosuch' is not one of: "),
    Case("train --dataset nosuch", ["train", *TINY, "--dataset", "nosuch"], 2, "--dataset 'nosuch' is not one of"),
    Case(
        "train --model-arg width=abc",
        ["train", *TINY, "--model-arg", "width=abc"],
        2,
        "width takes an int (default 32), got 'abc' (from --model-arg",
    ),
    Case("train --model-arg no equals", ["train", *TINY, "--model-arg", "width"], 2, "--model-arg takes KEY=VALUE"),
    Case("train --out a file", ["train", *TINY, "--out", "{afile}"], 2, "is a file; pass a folder"),
    Case("train --out under a file", ["train", *TINY, "--out", "{afile}/run"], 2, "is a file; pass a folder"),
    Case(
        "train --resume truncated last.pt",
        ["train", *TINY, "--epochs", "2", "--out", "{cut_run}", "--resume"],
        2,
        "is not a training checkpoint: it is truncated or damaged",
    ),
    Case(
        "evaluate text checkpoint",
        ["evaluate", "--checkpoint", "{text}", "--device", "cpu"],
        2,
        "is not a seglearn model file: it is text, not a file torch.save wrote",
    ),
    Case(
        "evaluate png checkpoint",
        ["evaluate", "--checkpoint", "{image}", "--device", "cpu"],
        2,
        "is not a seglearn model file: it is a PNG image",
    ),
    Case(
        "evaluate truncated checkpoint",
        ["evaluate", "--checkpoint", "{cut_model}", "--device", "cpu"],
        2,
        "it is truncated or damaged",
    ),
    Case("evaluate missing checkpoint", ["evaluate", "--checkpoint", "{tmp}/none.pt"], 2, "not found; pass the model"),
    Case(
        "evaluate --batch-size 0",
        ["evaluate", "--checkpoint", "{model}", "--batch-size", "0"],
        2,
        "--batch-size takes an integer >= 1",
    ),
    Case("export --onnx a folder", ["export", "{model}", "--onnx", "{tmp}"], 2, "is a folder; pass the file"),
    Case("export truncated", ["export", "{cut_model}", "--onnx", "{tmp}/m.onnx"], 2, "truncated or damaged"),
    Case("train --crop 0", ["train", *TINY, "--crop", "0"], 2, "--crop takes one or two positive ints"),
    Case("train --val-every 0", ["train", *TINY, "--val-every", "0"], 2, "--val-every takes an integer >= 1"),
    Case("train --weight-decay nan", ["train", *TINY, "--weight-decay", "nan"], 2, "--weight-decay takes a finite"),
    Case("train --time-budget nan", ["train", *TINY, "--time-budget", "nan"], 2, "--time-budget takes a number"),
    Case("evaluate --workers -1", ["evaluate", "--checkpoint", "{model}", "--workers", "-1"], 2, "--workers takes"),
    Case(
        "predict --device bogus",
        ["predict", "{a_x}", "--checkpoint", "{model}", "--device", "bogus"],
        2,
        "--device 'bogus' is not a device",
    ),
    Case("export --size 0", ["export", "{model}", "--onnx", "{tmp}/m.onnx", "--size", "0"], 2, "--size takes one"),
    Case("train --batch-size abc", ["train", *TINY, "--batch-size", "abc"], 2, "argument --batch-size: invalid int"),
    Case("train without --model", ["train"], 2, "train needs --model NAME (or --recipe NAME"),
    Case("no such command", ["fit"], 2, "invalid choice: 'fit'"),
    Case("models", ["models"], 0, "unet"),
]
if not torch.cuda.is_available():  # on a GPU machine the row would train
    CASES.append(Case("train --device cuda", ["train", *TINY, "--device", "cuda"], 2, "no CUDA GPU is visible"))


# ---------------------------------------------------------------- fixtures and the runner


def _own_data(root: Path, jpeg_mask: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        mask = np.zeros((32, 48), np.uint8)
        mask[16:] = 1
        mask[20:26, 8 + 4 * i : 20 + 4 * i] = 2
        image = (np.eye(3)[mask] * 200 + rng.integers(0, 40, (32, 48, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"f{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"f{i}.png", format="JPEG" if jpeg_mask and i == 3 else "PNG")
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "road", "car"]}))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("catalogue")
    run = tmp / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    model = run / "model.pt"
    cut_run = tmp / "cut_run"
    shutil.copytree(run, cut_run)
    last = cut_run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (tmp / "cut.pt").write_bytes(model.read_bytes()[:4000])
    (tmp / "text.pt").write_text("not a model\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "image.png")
    Image.fromarray(np.full((32, 48), 40000, np.uint16)).save(tmp / "deep.png")
    for folder in ("a", "b"):
        (tmp / folder).mkdir()
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp / folder / "x.png")
    (tmp / "afile").write_text("a file, not a folder\n")
    return {"tmp": tmp / "scratch", "run": run, "model": model, "cut_run": cut_run, "cut_model": tmp / "cut.pt",
            "text": tmp / "text.pt", "image": tmp / "image.png", "png16": tmp / "deep.png", "a_x": tmp / "a" / "x.png",
            "b_x": tmp / "b" / "x.png", "afile": tmp / "afile", "own": _own_data(tmp / "own"),
            "badmasks": _own_data(tmp / "badmasks", jpeg_mask=True)}  # fmt: skip


def _run_cli(argv: list[str], files: dict[str, Path], capsys) -> tuple[int, str, str]:
    argv = [a.format(**files) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, files, capsys):
    files["tmp"].mkdir(exist_ok=True)
    if isinstance(case.call, list):
        code, out, err = _run_cli(case.call, files, capsys)
        assert code == case.expect, (code, err[-3000:])
        if code == 0:
            assert case.fragment in out
            return
        errors = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars may precede it
        assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-3000:]
        assert errors[0].startswith("seglearn: error: ") and "Traceback" not in err, err[-3000:]
        assert case.fragment in errors[0], errors[0]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        if case.expect is None:
            assert case.fragment in case.call(files)
            return
        with pytest.raises(case.expect) as info:
            case.call(files)
    assert case.fragment in str(info.value)


def test_the_catalogue_covers_every_case_of_issue_21():
    assert len(CASES) >= 56  # 57 on a machine without a GPU


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--model", "nosuch"],
                                  ["train", "--model", "unet", "--batch-size", "0"]])  # fmt: skip
def test_help_and_option_errors_answer_in_under_2_s_without_importing_torch(argv):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['seglearn', *{argv!r}]\n"
        "try:\n    runpy.run_module('seglearn', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    took = time.perf_counter() - start
    torch_loaded, code = done.stdout.split()[-2:]
    assert torch_loaded == "False" and code == ("0" if "--help" in argv else "2"), done.stdout + done.stderr
    assert took < 2.0, f"{argv}: {took:.2f} s"
