"""Open a trained run in Python and look at what it learned (docs/python.md).

Usage::

    python docs/examples/load_run.py RUN                      # metrics, latents per split, connectivity
    python docs/examples/load_run.py RUN --checkpoint last    # another checkpoint
    python docs/examples/load_run.py RUN --figure latents.png # the test latents of the first trial

``RUN`` is a run directory written by ``python train.py`` (``logs/train/runs/...``). The
latents come from ``RUN/outputs.h5`` (written by ``evaluate.py``) or, without it, are computed
from the run's data.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import facrnn
from facrnn.errors import FacRNNError

#: metrics printed first when present (all others follow in alphabetical order)
HEADLINE = ("cond_loglik", "recon_r2", "partial_corr", "group_latent_r2", "connectivity_r2", "bits_per_spike")


def print_metrics(run: facrnn.LoadedRun) -> None:
    if run.metrics is None:
        print("metrics: none stored for this checkpoint (run evaluate.py first)")
        return
    names = [name for name in HEADLINE if name in run.metrics]
    names += sorted(name for name in run.metrics if name not in HEADLINE)
    print(f"metrics ({len(names)}, test split):")
    for name in names:
        value = run.metrics[name]
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        print(f"  {name:<32} {shown}")


def plot_latents(run: facrnn.LoadedRun, path: Path) -> None:
    """The posterior means of the first test trial over time, one line per latent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = run.outputs("test")
    first = outputs["trial_index"] == outputs["trial_index"].min()
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(outputs["time"][first], outputs["latents"][first])
    axis.set(xlabel="bin", ylabel="posterior mean", title=f"{run.config.model.name}: test latents")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written by train.py")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a .ckpt path")
    parser.add_argument("--figure", type=Path, help="save a small PNG of the test latents here")
    args = parser.parse_args(argv)

    try:
        run = facrnn.load_run(args.run_dir, checkpoint=args.checkpoint)
    except FacRNNError as error:  # not a run directory, no such checkpoint, ...: one line, no traceback
        raise SystemExit(str(error)) from None
    model = run.model
    print(f"run: {run.run.path}")
    print(f"model: {run.config.model.name}, K={model.latent_dim} in groups {model.group_sizes}, N={model.n_neurons}")
    print(f"checkpoint: {run.checkpoint.name}")
    print_metrics(run)
    print(f"latents ({'outputs.h5' if run.has_outputs else 'computed from the data'}):")
    for split in ("train", "val", "test"):
        print(f"  {split:<5} {tuple(run.latents(split).shape)}")
    if model.is_linear:
        arrays = run.connectivity()
        print(f"connectivity: W {arrays['W'].shape}, W_groups {arrays['W_groups'].shape}")
    else:
        print("connectivity: none (MLP encoder/decoder)")
    if args.figure is not None:
        plot_latents(run, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
