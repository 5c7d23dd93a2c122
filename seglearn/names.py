"""The names a command line is checked against before torch is imported, so that a typo is answered at once.

``DATASETS`` is the one list of dataset names (``seglearn.data`` re-exports it). :func:`model_names` is the
registry's list once :mod:`seglearn.models` is imported (a model registered at run time included); before that it
reads the ``@register_model("name"`` lines of the package's model files instead of importing every model.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["DATASETS", "DOWNLOADABLE", "model_names"]

DATASETS = ("camvid", "camvid32", "voc", "synthetic", "folder")  # folder: your own data (SegmentationFolder.from_root)
DOWNLOADABLE = ("camvid", "camvid32", "voc")

_REGISTRATION = re.compile(r"""@register_model\(\s*["']([^"']+)["']""")


def model_names() -> list[str]:
    """The registered model names, sorted (what :func:`seglearn.models.list_models` returns)."""
    registry = sys.modules.get("seglearn.models.registry")
    if registry is not None:
        return registry.list_models()
    found = set()
    for path in (Path(__file__).parent / "models").glob("*.py"):
        found.update(_REGISTRATION.findall(path.read_text(encoding="utf-8")))
    return sorted(found)
