"""Training: the LightningModule (loss, steps, optimizer), the settings schema checked before
anything is built, callbacks, fault handling (atomic checkpoints, interrupts, non-finite
losses) and the runtime set-up (threads, allocator).

Uses :mod:`facrnn.core` and :mod:`datamodules`; never evaluation, plots, runs or the CLI.
"""
