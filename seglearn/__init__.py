"""seglearn: semantic segmentation from FCN to UPerNet — tested PyTorch models and the notebooks that teach them."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Lazy re-exports keep `import seglearn` cheap (no torch/albumentations import until a name is used).
_EXPORTS = {
    "create_model": "seglearn.models",
    "list_models": "seglearn.models",
    "load_model": "seglearn.model_file",
    "fit": "seglearn.engine",
    "train_one_epoch": "seglearn.engine",
    "evaluate": "seglearn.engine",
    "predict": "seglearn.engine",
    "setup_notebook": "seglearn.notebook",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'seglearn' has no attribute {name!r}")
