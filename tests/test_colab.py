"""Colab in one click: every badge and install line names pyproject's repository, the install cell runs on Colab only
and keeps Colab's torch, and the setup cell every chapter shares runs as written."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render", ROOT / "notebooks" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
CHAPTERS = render.chapters()
URL = render.repository_url()


def _code(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_repository_url_is_written_once_in_pyproject():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL), URL
    assert len(CHAPTERS) == 11


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_its_badge_install_and_setup_cells(path: Path):
    title = nbformat.read(path, as_version=4).cells[0].source.split("\n")
    assert title[2] == render.badge(path.name), "run: python notebooks/render.py --stamp"
    assert f"/blob/main/notebooks/{path.name})" in title[2] and URL.removeprefix("https://github.com/") in title[2]
    code = _code(path)
    assert code[0] == render.install_source() and f'REPOSITORY = "{URL}"' in code[0]
    assert code[1] == render.SETUP_SOURCE


def test_readme_badges_and_install_line_use_the_repository():
    readme = (ROOT / "README.md").read_text()
    for path in CHAPTERS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| {path.name[:2]} | `{path.name}`"))
        assert render.badge(path.name) in row
    assert f'"seglearn[crf] @ git+{URL}"' in readme
    assert "<this repository" not in readme
    owner_name = URL.removeprefix("https://github.com/")
    assert f'torch.hub.load("{owner_name}"' in readme


def _run_install_cell(monkeypatch, on_colab: bool) -> list[list[str]]:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(_code(CHAPTERS[1])[0], {})
    return calls


def test_install_cell_installs_on_colab_only_and_keeps_colabs_torch(monkeypatch):
    assert _run_install_cell(monkeypatch, on_colab=False) == []
    calls = _run_install_cell(monkeypatch, on_colab=True)
    assert calls == [
        [sys.executable, "-m", "pip", "install", "-q", f"seglearn[crf] @ git+{URL}"],
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "d2l==1.0.3"],
    ]
    assert not any("torch" in arg for cmd in calls for arg in cmd)  # no pin that would replace Colab's CUDA torch


def test_the_git_requirement_is_one_pip_accepts():
    from packaging.requirements import Requirement

    req = Requirement(f"seglearn[crf] @ git+{URL}")
    assert (req.name, req.extras, req.url) == ("seglearn", {"crf"}, f"git+{URL}")


def test_setup_cell_runs_with_a_mode_and_drive_folders(monkeypatch, tmp_path):
    """The shared setup cell, with the values a Colab learner would type in, gives the run they asked for."""
    monkeypatch.delenv("SEGLEARN_MODE", raising=False)
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "elsewhere"))
    drive = tmp_path / "drive" / "MyDrive" / "seglearn"
    typed = {"mode": '"QUICK"', "data_root": f'"{drive / "data"}"', "checkpoint_root": f'"{drive / "runs"}"',
             "full_minutes": "20"}
    source = render.SETUP_SOURCE
    for key, value in typed.items():
        source = source.replace(f"{key}=None", f"{key}={value}")
    scope: dict = {}
    exec(source, scope)
    cfg = scope["cfg"]
    chosen = (cfg.mode, cfg.data_root, cfg.checkpoint_root, cfg.full_minutes)
    assert chosen == ("QUICK", drive / "data", drive / "runs", 20)
