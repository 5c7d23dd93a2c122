"""Atomic file writes: every file seglearn writes is either the old one or the new one, never a torn one.

:func:`atomic_write` writes into a temporary file beside the target (``.NAME.PID.XXXX.tmp``, same folder so the
rename stays on one file system), flushes it to disk and ``os.replace``-s it over the target (atomic on POSIX and
Windows). A process killed mid-write (``kill -9``, a power cut) cannot run any clean-up, so the next write to the same
target removes the temporary files that a dead process left beside it: they never accumulate.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_file", "write_json", "remove_stale_temps"]


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (or a platform without signal 0): leave its file
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes to ``path`` whose process is gone (killed mid-write); returns them.

    A temp file of a writer that is still running is left alone (its pid is in the name)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets the new content only once the block has finished
    (an exception, or a kill, leaves the previous file as it was and no temporary file behind)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); a saved file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(f)`` into ``path`` atomically (``torch.save(obj, f)``, ``fig.savefig(f, format="png")``, ...)."""
    with atomic_write(path) as f:
        write(f)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as JSON, atomically (numpy arrays and tensors as lists, anything else unknown as its ``str``)."""
    text = json.dumps(obj, indent=indent, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
