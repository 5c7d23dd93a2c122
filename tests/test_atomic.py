"""Every kind of file seglearn writes survives ``kill -9`` mid-write: the target is the old file or the new one, and
the temporary file the killed writer left is removed by the next write (issue 21)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglearn.atomic import atomic_write, remove_stale_temps, write_file, write_json

# The child writes one file of `kind` with every write() call split in two and a long pause between the halves:
# it is killed while the temporary file is half written.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    kind, target, marker = sys.argv[1:4]
    real_fdopen = os.fdopen

    class Slow:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            half = len(data) // 2
            self.f.write(data[:half])
            self.f.flush()
            open(marker, "w").close()  # half of it is on disk: kill me now
            time.sleep(60)
            return self.f.write(data[half:]) + half
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
    sys.path.insert(0, os.path.dirname(marker))
    from writers import WRITERS
    WRITERS[kind](target, "new")
    sys.exit("the write was meant to be killed")
    """
)

WRITERS = textwrap.dedent(
    """
    import torch
    import numpy as np

    def model(path, version):
        from seglearn.model_file import save_model
        from seglearn.models import create_model
        torch.manual_seed(0 if version == "old" else 1)
        save_model(path, create_model("tinyfcn", 3, width=4), version=version)

    def checkpoint(path, version):
        from seglearn.checkpoint import save_checkpoint
        save_checkpoint({"version": version, "model": {"w": torch.full((50_000,), 1.0 if version == "old" else 2.0)}},
                        path)

    def json_file(path, version):
        from seglearn.atomic import write_json
        write_json(path, {"version": version, "values": list(range(20_000))})

    def png(path, version):  # predictions: a palette mask / an overlay
        from pathlib import Path
        from seglearn.inference import _save_png
        _save_png(np.full((64, 96, 3), 10 if version == "old" else 200, np.uint8), Path(path))

    def figure(path, version):  # curves.png, the demo's gallery
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from seglearn.atomic import write_file
        fig, ax = plt.subplots()
        ax.set_title(version)
        write_file(path, lambda f: fig.savefig(f, format="png"))
        plt.close(fig)

    WRITERS = {"model": model, "checkpoint": checkpoint, "json": json_file, "png": png, "figure": figure}
    """
)

KINDS = {"model": "model.pt", "checkpoint": "last.pt", "json": "history.json", "png": "x_mask.png",
         "figure": "curves.png"}  # fmt: skip


def _read(kind: str, path: Path):
    if kind == "model":
        from seglearn.model_file import load_model

        return load_model(path, return_meta=True)[1]["version"]
    if kind == "checkpoint":
        return torch.load(path, weights_only=True)["version"]
    if kind == "json":
        return json.loads(path.read_text())["version"]
    if kind == "png":
        return "old" if np.asarray(Image.open(path))[0, 0, 0] == 10 else "new"
    Image.open(path).load()  # a whole PNG
    return path.read_bytes()


def _writers(tmp_path: Path):
    (tmp_path / "writers.py").write_text(WRITERS)
    (tmp_path / "child.py").write_text(CHILD)
    sys.path.insert(0, str(tmp_path))
    try:
        import writers
    finally:
        sys.path.remove(str(tmp_path))
    return writers.WRITERS


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_kill_9_mid_write_leaves_the_old_file_and_the_next_write_clears_its_temp(tmp_path):
    writers = _writers(tmp_path)
    children = {}
    for kind, name in KINDS.items():
        folder = tmp_path / kind
        folder.mkdir()
        writers[kind](folder / name, "old")
        children[kind] = subprocess.Popen(
            [sys.executable, str(tmp_path / "child.py"), kind, str(folder / name), str(folder / "started")],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        for kind, child in children.items():
            marker, deadline = tmp_path / kind / "started", time.monotonic() + 240
            while not marker.exists():
                assert child.poll() is None, child.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, f"{kind}: the child never started writing"
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    for kind, name in KINDS.items():
        target = tmp_path / kind / name
        old = _read(kind, target)
        assert kind == "figure" or old == "old", kind  # never the torn half of the new file
        stale = list(target.parent.glob(f".{name}.*.tmp"))
        assert len(stale) == 1 and stale[0].stat().st_size > 0, (kind, stale)  # what the killed write left
        writers[kind](target, "new")
        assert kind == "figure" or _read(kind, target) == "new"
        assert not list(target.parent.glob(f".{name}.*.tmp")), kind  # removed by the next write, not piled up
        assert sorted(p.name for p in target.parent.iterdir()) == sorted([name, "started"])


def test_a_running_writers_temp_is_left_alone_and_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "run.json"
    mine = tmp_path / f".run.json.{os.getpid()}.abc.tmp"
    dead = tmp_path / ".run.json.999999999.abc.tmp"  # no such pid
    mine.write_text("{}"), dead.write_text("{")
    assert remove_stale_temps(target) == [dead] and mine.exists()
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("{half")
        raise RuntimeError("the writer failed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "run.json"])


def test_written_files_keep_the_umasks_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_file(tmp_path / "model.pt", lambda f: torch.save({"a": torch.ones(1)}, f))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_repeated_kills_at_random_moments_never_leave_a_torn_checkpoint(tmp_path):
    loop = textwrap.dedent(
        """
        import sys, torch
        from seglearn.checkpoint import save_checkpoint
        open(sys.argv[2], "w").close()
        i = 0
        while True:
            i += 1
            save_checkpoint({"i": i, "w": torch.full((200_000,), float(i))}, sys.argv[1])
        """
    )
    (tmp_path / "loop.py").write_text(loop)
    target = tmp_path / "last.pt"
    rng = np.random.default_rng(0)
    for attempt in range(2):  # each a fresh interpreter (torch import): a few seconds
        marker = tmp_path / f"started{attempt}"
        child = subprocess.Popen([sys.executable, str(tmp_path / "loop.py"), str(target), str(marker)], env=_env())
        while not marker.exists():
            assert child.poll() is None
            time.sleep(0.05)
        time.sleep(0.3 + rng.uniform(0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if target.exists():
            ckpt = torch.load(target, weights_only=True)
            assert torch.equal(ckpt["w"], torch.full((200_000,), float(ckpt["i"])))
        assert len(list(tmp_path.glob(".last.pt.*.tmp"))) <= 1  # at most the one the last kill left
