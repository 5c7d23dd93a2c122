"""docs/gpu.md's commands parse: each benchmark command with its script's own parser, each ``python -m seglearn``
command with the CLI's parser, each notebook it executes exists, ``uv export`` runs on this checkout's lock, and
every pip/uv/nbconvert option it uses is one that tool lists in its ``--help``.

A GPU run is the expensive place to find a renamed option; this test finds it here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = REPO_ROOT / "docs" / "gpu.md"
IGNORED = {"source", "export", "rm", "done", "do", "wait", "tar"}  # shell plumbing: nothing to check


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _simple_commands(line: str) -> list[list[str]]:
    """``a x && b; c | d &`` -> [[a, x], [b], [c], [d]] (quotes respected)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&", "&&", "|", "||"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def page_commands() -> list[list[str]]:
    """Every simple command of the page's bash blocks as argv, loop variables expanded (``for nb in a b; do``)."""
    commands = []
    for block in _blocks(PAGE.read_text(encoding="utf-8")):
        loops = {m[0]: m[1].split() for m in re.findall(r"for (\w+) in ([^;]+); do", block)}
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"for \w+ in [^;]+; do", "", line)
            for argv in _simple_commands(line):
                if argv[0] in IGNORED:
                    continue
                variants = [argv]
                for name, values in loops.items():
                    if any(f"${name}" in a for a in argv):
                        variants = [[a.replace(f"${name}", v) for a in argv] for v in values]
                commands += variants
    return commands


def _kind(argv: list[str]) -> str:
    """What a command runs: 'benchmark', 'seglearn', 'pip', 'uv', 'nbconvert', 'torchrun', 'python -c', 'venv'."""
    if argv[0] == "torchrun":
        return "torchrun"
    if argv[:2] == ["jupyter", "nbconvert"]:
        return "nbconvert"
    if argv[0] in ("python", "python3"):
        if argv[1].startswith("benchmarks/"):
            return "benchmark"
        if argv[1] == "-c":
            return "python -c"
        if argv[1] == "-m" and argv[2] in ("seglearn", "pip", "uv", "venv"):
            return argv[2]
    raise AssertionError(f"docs/gpu.md runs {shlex.join(argv)}, which this test does not know how to check")


def _ids(commands: list[list[str]]) -> list[str]:
    return [shlex.join(c)[:70] for c in commands]


COMMANDS = page_commands()


def test_the_page_shows_every_step():
    kinds = {_kind(argv) for argv in COMMANDS}
    assert kinds == {"benchmark", "seglearn", "pip", "uv", "nbconvert", "torchrun", "python -c", "venv"}
    scripts = {argv[1] for argv in COMMANDS if _kind(argv) == "benchmark"}
    assert {"benchmarks/full_results.py", "benchmarks/train_throughput.py", "benchmarks/data_throughput.py"} <= scripts
    text = " ".join(shlex.join(argv) for argv in COMMANDS)
    # the offline install: a wheelhouse from the lock, installed from it alone
    assert "uv export --frozen --format requirements-txt" in text and "pip download" in text
    assert "pip install --no-index --find-links wheelhouse" in text
    assert "full_results.py --table --update-readme" in text


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


BENCHMARKS = [argv for argv in COMMANDS if _kind(argv) == "benchmark"]


@pytest.mark.parametrize("argv", BENCHMARKS, ids=_ids(BENCHMARKS))
def test_benchmark_command_parses(argv, load_benchmark, monkeypatch):
    script = REPO_ROOT / argv[1]
    assert script.is_file(), f"docs/gpu.md runs {argv[1]}, which does not exist"
    module = load_benchmark(script.stem)
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))  # a bad option exits 2 inside original, failing the test

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])  # every script's main() parses sys.argv by default
    with pytest.raises(_Parsed) as parsed:
        module.main()
    if script.stem == "full_results":
        from seglearn.models import full_recipes

        rows = {recipe.row for _, recipe in full_recipes()}
        assert set(parsed.value.namespace.rows or []) <= rows


def _seglearn_args(argv: list[str]) -> list[str] | None:
    """The CLI arguments of a command that runs ``-m seglearn`` (directly, under torchrun or ``uv run``)."""
    starts = [i for i in range(len(argv) - 1) if argv[i : i + 2] == ["-m", "seglearn"]]
    return argv[starts[0] + 2 :] if starts else None


SEGLEARN = [args for args in map(_seglearn_args, COMMANDS) if args is not None]


@pytest.mark.parametrize("args", SEGLEARN, ids=_ids(SEGLEARN))
def test_seglearn_command_parses(args):
    from seglearn.cli import build_parser

    parsed = build_parser().parse_args(args)  # exits 2 on an unknown option or model
    assert parsed.command == args[0]


def test_notebooks_it_executes_exist():
    notebooks = [a for argv in COMMANDS if _kind(argv) == "nbconvert" for a in argv if a.endswith(".ipynb")]
    assert len(notebooks) >= 7
    for name in notebooks:
        assert (REPO_ROOT / name).is_file(), f"docs/gpu.md executes {name}, which does not exist"


def test_python_snippets_compile():
    for argv in COMMANDS:
        if _kind(argv) == "python -c":
            compile(argv[2], "<docs/gpu.md>", "exec")


def _uv() -> str | None:
    return os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to its own path


def _pip() -> list[str] | None:
    if shutil.which("pip3") is None and shutil.which("pip") is None:
        return None
    return [shutil.which("pip3") or shutil.which("pip")]


@cache
def _help(tool: tuple[str, ...]) -> str:
    proc = subprocess.run([*tool, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _options(argv: list[str]) -> list[str]:
    return [a.split("=")[0] for a in argv if a.startswith("-") and a != "-"]


def _check_options(tool: tuple[str, ...], options: list[str]) -> None:
    text = _help(tool)
    for opt in options:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), f"`{' '.join(tool)}` has no {opt}"


@pytest.mark.parametrize("kind", ["pip", "uv", "nbconvert"])
def test_tool_options_exist(kind):
    found = [argv for argv in COMMANDS if _kind(argv) == kind]
    assert found
    for argv in found:
        if kind == "nbconvert":
            jupyter = shutil.which("jupyter") or shutil.which("jupyter", path=str(Path(sys.executable).parent))
            if jupyter is None:
                pytest.skip("jupyter not installed")
            tool, rest = (jupyter, "nbconvert"), argv[2:]
        else:
            prog = _pip() if kind == "pip" else [_uv()] if _uv() else None
            if prog is None:
                pytest.skip(f"{kind} not installed")
            tool, rest = (*prog, argv[3]), argv[4:]
            rest = rest[: rest.index("python")] if "python" in rest else rest  # `uv run python ...`: uv's own
        _check_options(tool, _options(rest))


def test_uv_export_writes_the_locked_closure(tmp_path):
    uv = _uv()
    if uv is None:
        pytest.skip("uv not installed")
    argv = next(a for a in COMMANDS if a[:4] == ["python3", "-m", "uv", "export"])
    out = argv.index("-o") + 1
    args = [*argv[3:out], str(tmp_path / "req.txt"), *argv[out + 1 :]]
    subprocess.run([uv, *args], check=True, capture_output=True, cwd=REPO_ROOT, timeout=120)
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", (tmp_path / "req.txt").read_text(), flags=re.M))
    assert {"torch", "torchvision", "albumentations", "pydensecrf2", "d2l", "nbconvert", "pytest"} <= set(pins)
    assert "seglearn" not in pins  # installed from the checkout (-e .), not from the wheelhouse
    # the page's variant for a machine that keeps its own torch
    subprocess.run([uv, *args, "--prune", "torch", "--prune", "torchvision"], check=True, capture_output=True,
                   cwd=REPO_ROOT, timeout=120)  # fmt: skip
    pruned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (tmp_path / "req.txt").read_text(), flags=re.M))
    assert {"numpy", "albumentations"} <= pruned and not {"torch", "torchvision", "triton"} & pruned


# Wording of one particular lent machine (its upload limit, output folder, minutes) has no place in the repository.
# (written with [ ] so that this blocklist is not itself a match for repository-wide greps of the same words)
REMOTE = re.compile(r"\$OUT\b|upload|device[ ]time|device[ ]call|device-minute|lent[ ]GPU|runbook|GPU_SESSION"
                    r"|device_check|device_wheels", flags=re.I)  # fmt: skip


def test_no_file_describes_a_particular_remote_machine():
    files = [PAGE, REPO_ROOT / "README.md", *sorted((REPO_ROOT / "benchmarks").glob("*"))]
    hits = [f"{f.relative_to(REPO_ROOT)}: {m.group(0)}" for f in files for m in REMOTE.finditer(f.read_text())]
    assert not hits


def test_every_benchmark_script_is_documented():
    text = PAGE.read_text(encoding="utf-8") + (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((REPO_ROOT / "benchmarks").glob("*.py")) if f"benchmarks/{p.name}" not in text]
    assert not missing, f"neither README.md nor docs/gpu.md says what {missing} measure"
