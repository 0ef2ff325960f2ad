"""Run directories and what happens in them: the training/evaluation pipeline, checkpoints,
resume, replica export and multirun sweeps.

The only layer that knows the files of a run directory; uses every layer below it.
"""
