"""The GPU runbook's commands parse: every `python3 benchmarks/<script>.py ...` in benchmarks/GPU_SESSION.md is handed
to that script's own argument parser (and stopped there), and every notebook it executes exists.

Device time is scarce (30 minutes a session, 10 a call); an option renamed in a script and not in the runbook would
cost a call. This test catches that here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = REPO_ROOT / "benchmarks" / "GPU_SESSION.md"
SCRIPT = re.compile(r"python3? (benchmarks/(\w+)\.py)\b(.*)")


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _loop_values(block: str) -> dict[str, list[str]]:
    """``for nb in a b c; do`` -> {"nb": ["a", "b", "c"]}."""
    return {m[0]: m[1].split() for m in re.findall(r"for (\w+) in ([^;]+); do", block)}


def runbook_calls() -> list[tuple[str, list[str]]]:
    """(script name, argv) of every benchmark script the runbook's bash blocks run, loop variables expanded."""
    calls = []
    for block in _shell_blocks(RUNBOOK.read_text(encoding="utf-8")):
        loops = _loop_values(block)
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r";|&&|\|\||\|", line):  # one command of a compound line at a time
                m = SCRIPT.search(part)
                if not m:
                    continue
                args = re.sub(r"\$\(\([^)]*\)\)", "500", m.group(3))  # $((570 - SECONDS)) -> a number
                args = re.split(r"\s(?:\d?>|&)", " " + args)[0]  # drop redirections and a trailing &
                argv = shlex.split(args)
                variants = [argv]
                for name, values in loops.items():
                    if any(f"${name}" in a for a in argv):
                        variants = [[a.replace(f"${name}", v) for a in argv] for v in values]
                for v in variants:
                    calls.append((m.group(2), [a.replace("$OUT", "/tmp/out") for a in v]))
    return calls


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def test_the_runbook_runs_every_script_it_needs():
    names = {name for name, _ in runbook_calls()}
    assert {"device_check", "train_throughput", "data_throughput", "full_results"} <= names


@pytest.mark.parametrize("call", runbook_calls(), ids=lambda c: f"{c[0]} {' '.join(c[1])}"[:80])
def test_runbook_command_parses(call, load_benchmark, monkeypatch):
    name, argv = call
    module = load_benchmark(name)
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))  # a bad option exits 2 inside original, failing the test

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed) as parsed:
        module.main(argv)
    for notebook in getattr(parsed.value.namespace, "execute", None) or []:
        assert (REPO_ROOT / notebook).is_file(), f"the runbook executes {notebook}, which does not exist"
    if name == "full_results":
        rows = {r.row for r in module.ROSTER}
        assert set(parsed.value.namespace.rows or []) <= rows
