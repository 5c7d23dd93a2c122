"""Keep the chapters' Colab cells in step with pyproject, and re-render the chapters executed.

``python notebooks/render.py --stamp`` writes into every chapter: the Colab badge under its title, the install cell
that runs on Colab only, and the setup cell. The repository URL is read from pyproject's ``[project.urls]``.
``python notebooks/render.py [CHAPTER ...]`` also executes the chapters (all of them without arguments) in QUICK mode
on real CamVid and commits their outputs into the files, so that a reader on GitHub sees every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import nbformat
import tomllib

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
MAX_BYTES = 1_500_000  # a rendered chapter stays small enough for GitHub to show and git to keep

SETUP_SOURCE = """\
import seglearn

# mode: "QUICK" (a CPU: a small run of every cell) or "FULL" (a GPU: the chapter's full recipe); None picks by device.
# data_root, checkpoint_root: folders that outlive a Colab session, e.g. "/content/drive/MyDrive/seglearn/data" once
# Google Drive is mounted (chapter 00 shows how). full_minutes: the most minutes each FULL training cell trains;
# running the cell again continues from its checkpoint.
cfg = seglearn.setup_notebook(mode=None, data_root=None, checkpoint_root=None, full_minutes=None)"""


def repository_url() -> str:
    """The project's repository, as pyproject's ``[project.urls] Repository`` names it."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return meta["project"]["urls"]["Repository"].rstrip("/")


def badge(notebook: str, url: str | None = None) -> str:
    """Markdown for the 'Open in Colab' badge of ``notebook`` (a file name under notebooks/)."""
    repo = (url or repository_url()).removeprefix("https://github.com/")
    target = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


def install_source(url: str | None = None) -> str:
    """The chapters' first code cell: on Colab only, install seglearn (keeping Colab's torch) and d2l."""
    return f"""\
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab only: install seglearn beside Colab's own torch and torchvision
    REPOSITORY = "{url or repository_url()}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"seglearn[crf] @ git+{{REPOSITORY}}"], check=True)
    # d2l's exact pins (numpy==1.23.5, ...) would downgrade Colab's stack: it goes in without them
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "d2l==1.0.3"], check=True)"""


def chapters() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _code_cell(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell["id"] = uuid.uuid4().hex[:8]
    return cell


def stamp(path: Path) -> bool:
    """Write the badge, the install cell and the setup cell into one chapter; True when the file changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    title = nb.cells[0].source.split("\n")
    line = badge(path.name)
    if len(title) > 2 and "colab-badge.svg" in title[2]:
        title[2] = line
    else:
        title[1:1] = ["", line]
    nb.cells[0].source = "\n".join(title)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if "google.colab" not in nb.cells[code[0]].source:
        nb.cells.insert(code[0], _code_cell(""))
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    nb.cells[code[0]].source = install_source()
    nb.cells[code[1]].source = SETUP_SOURCE
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after + ("" if after.endswith("\n") else "\n"))
    return after != before


def render(path: Path, timeout_s: int = 1800) -> int:
    """Execute one chapter in QUICK mode and write it back with its outputs; returns the file's size in bytes."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    where = {"metadata": {"path": str(NOTEBOOKS)}}  # chapters run from notebooks/, as in JupyterLab
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources=where)
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps: they would change every line of the diff
    nb.metadata.get("widgets", {}).clear()
    text = nbformat.writes(nb) + "\n"
    size = len(text.encode())
    if size > MAX_BYTES:
        raise SystemExit(f"{path.name} renders to {size / 1e6:.2f} MB, over {MAX_BYTES / 1e6:.1f} MB: shrink figures")
    path.write_text(text)
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter files or numbers (default: all)")
    parser.add_argument("--stamp", action="store_true", help="only write the Colab badge, install and setup cells")
    args = parser.parse_args(argv)
    chosen = [p for p in chapters() if not args.chapters or any(p.name.startswith(a.removeprefix("notebooks/")[:2])
                                                                 for a in args.chapters)]  # fmt: skip
    for path in chosen:
        if stamp(path):
            print(f"stamped {path.name}")
    if args.stamp:
        return 0
    os.environ["SEGLEARN_MODE"] = "QUICK"  # what every learner without a GPU gets; the kernels inherit it
    sys.path.insert(0, str(ROOT))
    from seglearn.data import locate_dataset

    if locate_dataset("camvid") is None:
        print("real CamVid not found: set SEGLEARN_DATA to the folder that holds camvid/ (renders never show the "
              "synthetic stand-in)", file=sys.stderr)  # fmt: skip
        return 2
    for path in chosen:
        print(f"rendered {path.name}: {render(path) / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
