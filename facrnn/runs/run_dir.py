"""What counts as a training run directory (light: no torch import)."""

from __future__ import annotations

from pathlib import Path


def has_plain_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds ``best.ckpt`` or ``last.ckpt`` of one model.

    A run of batched copies (``model.replicas > 1``) keeps only its training state in
    ``checkpoints/copies``; its replica directories are the runs.
    """
    return any((Path(run_dir) / "checkpoints" / name).is_file() for name in ("best.ckpt", "last.ckpt"))


__all__ = ["has_plain_checkpoint"]
