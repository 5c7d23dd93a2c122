"""Progress reporting for training: tqdm bars (notebook widgets in Jupyter) and a live loss/mIoU curve."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["in_notebook", "progress_bar", "LivePlot"]


def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (an IPython shell with a kernel), False in a terminal or a script."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_bar(iterable: Iterable, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm.auto.tqdm`` over ``iterable`` (a widget in Jupyter, text elsewhere); ``enabled=False`` hides it.

    The bar gets one iterator of ``iterable``: tqdm.auto's class calls ``iter()`` on an iterable in its constructor
    and std tqdm iterates the iterable again, which for a DataLoader means two iterators per epoch (a second set
    of worker processes prefetching batches nobody reads, and one more draw from the loader's generator).
    """
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)  # redraws at most twice a second: few widget messages in Jupyter
    if kwargs.get("total") is None and hasattr(iterable, "__len__"):
        kwargs["total"] = len(iterable)
    return tqdm(iter(iterable), disable=not enabled, **kwargs)


def _show_replacing(fig: Any) -> None:
    """Show ``fig`` as the cell's output, replacing the previous one when the next arrives (as d2l does)."""
    from IPython import display

    display.display(fig)
    display.clear_output(wait=True)


class _MatplotlibAnimator:
    """A minimal stand-in for d2l's ``Animator``: redraws the lines and replaces the cell's output on each ``add``."""

    def __init__(self, xlabel: str, legend: list[str], xlim: list[float]) -> None:
        from matplotlib.figure import Figure

        # A bare Figure (not pyplot) so the inline backend does not show a second copy when the cell ends.
        self.fig = Figure(figsize=(4.5, 3.0))
        self.ax = self.fig.add_subplot()
        self.xlabel, self.legend, self.xlim = xlabel, legend, xlim
        self.X: list[list[float]] = [[] for _ in legend]
        self.Y: list[list[float]] = [[] for _ in legend]

    def add(self, x: float, ys: tuple[float | None, ...]) -> None:
        for i, y in enumerate(ys):
            if y is not None:
                self.X[i].append(x)
                self.Y[i].append(y)
        self.ax.cla()
        for xs, values, label, fmt in zip(self.X, self.Y, self.legend, ("-", "m--", "g-.", "r:"), strict=False):
            self.ax.plot(xs, values, fmt, label=label)
        self.ax.set_xlabel(self.xlabel)
        self.ax.set_xlim(*self.xlim)
        self.ax.grid(True)
        self.ax.legend()
        _show_replacing(self.fig)


def _inline_png() -> None:
    """Undo d2l's ``use_svg_display()``: it would turn every later figure of the notebook into (large) SVG."""
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if in_notebook():
        set_matplotlib_formats("png")


class LivePlot:
    """A curve of training loss and validation mIoU per epoch that redraws in place in a Jupyter cell.

    Uses d2l's ``Animator`` (as in "Dive into Deep Learning") when ``d2l`` imports, else a small matplotlib
    equivalent. ``update(epoch, train_loss, val_miou)`` adds one point per line (``val_miou=None`` skips it).
    """

    def __init__(self, epochs: int, *, use_d2l: bool | None = None) -> None:
        legend = ["train loss", "val mIoU"]
        xlim = [1, max(int(epochs), 2)]
        self.backend = "matplotlib"
        self.animator: Any = None
        if use_d2l is not False:
            try:
                from d2l import torch as d2l

                self.animator = d2l.Animator(xlabel="epoch", legend=legend, xlim=xlim)
                self.backend = "d2l"
                _inline_png()
            except ImportError:
                if use_d2l:
                    raise
        if self.animator is None:
            self.animator = _MatplotlibAnimator("epoch", legend, xlim)

    @property
    def figure(self) -> Any:
        """The matplotlib figure being drawn."""
        return self.animator.fig

    def update(self, epoch: int, train_loss: float | None = None, val_miou: float | None = None) -> None:
        """Add the points of one epoch (1-based) and redraw."""
        ys = tuple(None if v is None or math.isnan(v) else float(v) for v in (train_loss, val_miou))
        self.animator.add(epoch, ys)
