"""The built wheel works outside the repository: installed into a fresh virtual environment, it imports, answers
``seglearn --help`` and trains on a SegmentationFolder, with none of the checkout on its path."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_own_data import make_own_data

REPO = Path(__file__).resolve().parents[1]


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    return [sys.executable, "-m", "uv"]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([*_uv(), "build", "--wheel", "--out-dir", str(dist), str(REPO)], cwd=REPO)
    (path,) = dist.glob("seglearn-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed. Its third-party packages (torch, ~5 GB) are borrowed from this
    environment through a path entry, which does not run this environment's .pth files: the checkout's editable
    install stays invisible, so ``import seglearn`` can only find the wheel."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    _run([*_uv(), "pip", "install", "--python", str(python), "--no-deps", str(wheel)], cwd=root)
    return root


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_holds_the_package_and_declares_its_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "seglearn/models/registry.py" in names and "seglearn/data/folder.py" in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "benchmarks/"))]
    for extra in ("crf", "export", "notebooks"):
        assert f"Provides-Extra: {extra}" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if any(x in r for x in ("jupyter", "pydensecrf", "onnx"))], core


def test_installed_wheel_imports_helps_and_trains_outside_the_repository(venv, tmp_path):
    env = _env(venv)
    where = _run([str(venv / "bin" / "python"), "-c", "import seglearn; print(seglearn.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    helped = _run([str(venv / "bin" / "seglearn"), "--help"], tmp_path, env)
    assert "train" in helped.stdout and "export" in helped.stdout
    data = make_own_data(tmp_path / "data", n=6)
    argv = [str(venv / "bin" / "seglearn"), "train", "--model", "tinyfcn", "--data", str(data), "--epochs", "1",
            "--crop", "32", "48", "--batch-size", "2", "--workers", "0", "--out", str(tmp_path / "run")]  # fmt: skip
    _run(argv, tmp_path, env)
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "scores.json").is_file()
