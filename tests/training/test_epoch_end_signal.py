"""SIGUSR2 (SLURM's warning before a time limit or a pre-emption) stops training at the end of
the current epoch with a complete checkpoint, and the resumed run equals an uninterrupted one
bitwise. Without a cluster: a Python handler stands in for submitit's requeue handler, and the
test sends the signals ``scancel --signal=USR2 --full`` delivers (USR2, then SIGTERM).
The same on a real SLURM: tests/slurm/test_slurm.py."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from facrnn.runs.pipeline import train
from facrnn.runs.resume import resume_epoch
from facrnn.training.faults import InterruptCheckpoint, TrainingInterrupted
from tests.helpers import TINY_DATA, compose_config
from tests.runs.test_scale import final_state

pytestmark = pytest.mark.robustness


@pytest.fixture
def requeue_handler() -> Iterator[list[int]]:
    """A Python SIGUSR2 handler like submitit's (it only records the calls); SIGTERM's restored after."""
    calls: list[int] = []
    previous_usr2 = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGUSR2, previous_usr2)
        signal.signal(signal.SIGTERM, previous_term)


def settings(cache: Path, batches_per_call: int) -> list[str]:
    return [
        *TINY_DATA,
        "threads=1",
        "logger=csv",
        f"paths.cache_dir={cache}",
        "trainer.max_epochs=12",
        "trainer.check_val_every_n_epoch=5",
        "evaluate=false",
        "seed=5",
        f"batches_per_call={batches_per_call}",
    ]


@pytest.mark.parametrize(
    "batches_per_call, signal_epoch, signal_batch, signals",
    [(1, 7, 1, ["SIGUSR2", "SIGTERM"]), (0, 3, 0, ["SIGUSR2"]), (1, 9, 1, ["SIGUSR2", "SIGTERM"])],
    ids=["per-batch-usr2-term", "whole-epoch-usr2", "after-the-last-validation"],
)
def test_sigusr2_saves_at_the_epoch_end_and_the_resume_is_bitwise(
    tmp_path: Path,
    requeue_handler: list[int],
    caplog: pytest.LogCaptureFixture,
    batches_per_call: int,
    signal_epoch: int,
    signal_batch: int,
    signals: list[str],
) -> None:
    run_settings = settings(tmp_path / "cache", batches_per_call)
    send = [
        "+callbacks.signal._target_=tests.helpers.callbacks.SignalAt",
        f"+callbacks.signal.signals=[{','.join(signals)}]",
        f"+callbacks.signal.epoch={signal_epoch}",
        f"+callbacks.signal.batch={signal_batch}",  # one training_step per epoch with batches_per_call=0
    ]
    with pytest.raises(TrainingInterrupted) as stopped:
        train(compose_config("train", [*run_settings, *send], tmp_path, run_name="preempted"))
    last = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    interruption = stopped.value.interruption
    assert interruption is not None and stopped.value.code == 140
    assert (interruption.signal_name, interruption.epoch, interruption.checkpoint) == ("SIGUSR2", signal_epoch, last)
    assert stopped.value.message.startswith(f"SIGUSR2 at epoch {signal_epoch} (step ")
    stored = torch.load(last, weights_only=True)
    assert stored["epoch"] == signal_epoch + 1 == resume_epoch(stored)  # the epoch was completed, not cut short
    assert requeue_handler == []  # the requeue waits for the caller (after W&B is closed) ...
    assert interruption.requeue is not None
    interruption.requeue()
    assert requeue_handler == [signal.SIGUSR2]  # ... which hands the signal to the saved handler

    with caplog.at_level(logging.INFO, logger="facrnn.runs.resume"):
        train(compose_config("train", [*run_settings, "ckpt_path=last"], tmp_path, run_name="preempted"))
    assert f"resuming from {last} at epoch {signal_epoch + 1} (global step {stored['global_step']})" in caplog.text
    train(compose_config("train", run_settings, tmp_path, run_name="uninterrupted"))
    resumed, uninterrupted = final_state(tmp_path / "preempted"), final_state(tmp_path / "uninterrupted")
    assert int(uninterrupted["epoch"]) == 11  # last.ckpt holds the final epoch, although it had no validation
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:  # bitwise: weights, Adam moments, step counts, epoch
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=0, msg=name)


def test_without_a_requeue_handler_sigusr2_keeps_its_meaning(tmp_path: Path) -> None:
    """Outside submitit nobody handles SIGUSR2 in Python: the callback installs nothing."""
    assert not callable(signal.getsignal(signal.SIGUSR2))
    callback = InterruptCheckpoint()

    class Trainer:  # what on_train_start reads: nothing, when there is no handler to take over
        pass

    callback.on_train_start(Trainer(), None)  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None)
    assert callback._deferred_handler is None


def test_resume_epoch_of_each_kind_of_checkpoint() -> None:
    def checkpoint(epoch: int, started: int, processed: int, last_batch: bool) -> dict:
        progress = {"ready": started, "started": started, "processed": processed, "completed": processed}
        return {
            "epoch": epoch,
            "loops": {
                "fit_loop": {
                    "epoch_progress": {"total": progress, "current": progress},
                    "epoch_loop.batch_progress": {"is_last_batch": last_batch},
                }
            },
        }

    assert resume_epoch(checkpoint(4, 5, 4, True)) == 5  # at epoch 4's validation: continues with 5
    assert resume_epoch(checkpoint(8, 8, 8, True)) == 8  # epoch 7 complete (SIGUSR2): continues with 8
    assert resume_epoch(checkpoint(6, 7, 6, False)) == 6  # mid-epoch (SIGTERM): continues within 6
    assert resume_epoch({"epoch": 612}) == 612  # no loop state: the stored epoch
