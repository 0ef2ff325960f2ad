"""How every figure is written: one PNG resolution and one save function for all plots modules."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

# Resolution of every PNG (figures were 90-120 before). savefig's time is the constrained layout
# and drawing, hardly the pixels: 100 instead of 120 saves a few per cent, and a 12-inch
# figure stays 1200 px wide.
DPI = 100
# Resolution of the imaging movie's frames (facrnn.plots.imaging): lower, a GIF holds hundreds.
MOVIE_DPI = 72
# zlib level of the PNGs: 3 encodes in ~half the time of PIL's default 6 for 3-9 % larger files
# (the six figures of the paper run: ~0.1 s less)
PNG_COMPRESS_LEVEL = 3

__all__ = ["DPI", "MOVIE_DPI", "PNG_COMPRESS_LEVEL", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG of :data:`DPI` (zlib level :data:`PNG_COMPRESS_LEVEL`) to ``path``,
    creating its parent folders.

    Parameters
    ----------
    fig
        The figure to render (Agg canvas; no pyplot state is touched).
    path
        Destination file; its suffix is not used to pick the format (always PNG).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path
