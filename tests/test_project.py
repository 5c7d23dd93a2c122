"""The project's own promises: CI runs the README's command, conda and uv name the same packages, data/ stays empty."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [
        ln for ln in (REPO / ".ci/run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))
    ]
    assert len(ci_lines) == 1, ci_lines
    assert ci_lines[0] in _readme_commands(), "the README must show the exact command .ci/run runs"
    assert "pytest" in ci_lines[0]


def test_readme_main_command_runs_the_demo():
    assert any(c.endswith("python -m seglearn demo") for c in _readme_commands())


def test_environment_yml_and_pyproject_name_the_same_packages():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    wanted = {_name(r) for r in pyproject["project"]["dependencies"]}
    for group in pyproject["dependency-groups"].values():
        for req in group:
            if _name(req) == "seglearn":  # the groups install the package's own extras: "seglearn[crf,export]"
                for extra in re.search(r"\[(.*)\]", req).group(1).split(","):
                    wanted |= {_name(r) for r in extras[extra.strip()]}
            else:
                wanted.add(_name(req))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    named = {_name(r) for r in pip_section if not r.startswith("-e")}
    # d2l cannot go through pip's resolver beside numpy 2 (its pins); environment.yml installs it with --no-deps.
    env_text = (REPO / "environment.yml").read_text()
    assert "pip install --no-deps d2l==1.0.3" in env_text
    assert named | {"d2l"} == wanted


def test_optional_parts_are_extras_not_requirements():
    """A library user gets torch and the datasets, not Jupyter, the CRF or ONNX: those are extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {"jupyterlab", "ipykernel", "pydensecrf2", "onnx", "onnxruntime", "d2l"}
    assert {"crf", "export", "notebooks"} <= set(project["optional-dependencies"])


def test_lock_file_is_committed_and_current():
    assert (REPO / "uv.lock").is_file()
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    names = {p["name"] for p in lock["package"]}
    assert {"torch", "torchvision", "albumentations", "d2l", "pydensecrf2", "numpy"} <= names
    numpy = next(p for p in lock["package"] if p["name"] == "numpy")
    assert int(numpy["version"].split(".")[0]) >= 2, "d2l's numpy pin must be overridden"


def test_nothing_but_readme_and_gitignore_committed_under_data():
    out = subprocess.run(["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        return  # not a git checkout (an sdist): nothing to check
    tracked = {Path(p).name for p in out.stdout.split()}
    assert tracked <= {"README.md", ".gitignore"}, tracked


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
