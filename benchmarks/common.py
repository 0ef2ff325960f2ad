"""Shared helpers of the benchmark scripts: composing configs (facrnn.runs.compose), the bare training loop,
timing callbacks, peak-memory measurement in a child process, table printing."""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from facrnn.runs.compose import compose_train_config

__all__ = [
    "FitTimer",
    "bare_loop",
    "compose_train_config",
    "machine_description",
    "median",
    "pipeline_overrides",
    "print_table",
    "quiet_training_runs",
    "run_in_child",
]


class FitTimer(pl.Callback):
    """Wall time of ``trainer.fit`` itself (first to last training batch), and its step count."""

    last: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        FitTimer.last = {"fit_s": time.perf_counter() - self._start, "steps": float(trainer.global_step)}


def bare_loop(module: Any, train_tensors: dict[str, torch.Tensor], batch_size: int, n_epochs: int) -> tuple[float, int]:
    """The pipeline's training computation without Lightning: same module (model and loss),
    same batches (a fresh random permutation per epoch, split into batches, every key indexed),
    same optimizer (``module.configure_optimizers()``).

    Returns
    -------
    (seconds, optimizer steps)
    """
    optimizer = module.configure_optimizers()
    module.train()
    n_samples = int(train_tensors["x"].shape[0])
    steps = 0
    started = time.perf_counter()
    for _ in range(n_epochs):
        for indices in torch.randperm(n_samples).split(batch_size):
            batch = {key: value[indices] for key, value in train_tensors.items()}
            loss = module.loss_terms(batch)["loss"].sum()  # batched copies: one loss per copy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return time.perf_counter() - started, steps


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine_description() -> str:
    """CPU model, core count, torch version and threads, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A Markdown table (pastes into benchmarks/README.md)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    if title:
        print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")
    print(flush=True)


def _child(target: Callable[..., dict[str, Any]], args: tuple, queue: multiprocessing.Queue) -> None:
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        result = target(*args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["baseline_rss_mib"] = baseline_kib / 1024
        queue.put(result)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        queue.put({"error": repr(error)})


def run_in_child(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh spawned process; adds its peak RSS (MiB) and the RSS
    it had before ``target`` ran (imports), so peak memory is measured per case."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"benchmark case {target.__name__}{args} failed: {result['error']}")
    return result


def quiet_training_runs() -> None:
    """W&B offline and silent, Lightning's info and warnings off: benchmark output only."""
    import logging
    import warnings

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def add_pipeline_arguments(parser: Any) -> None:
    """``--model``, ``--logger``, ``--experiment`` and ``--override`` of a benchmarked pipeline
    run (read by :func:`pipeline_overrides`)."""
    parser.add_argument("--model", default="facrnn", help="model config (facrnn, lrrnn, bdrnn, facrnn_full)")
    parser.add_argument("--logger", default="default", help="logger config (default = csv + wandb offline)")
    parser.add_argument("--experiment", default="synthetic_paper")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")


def pipeline_overrides(args: Any, *extra: str) -> list[str]:
    """Hydra overrides of a benchmarked pipeline run from ``--experiment``, ``--model``,
    ``--logger``, ``--epochs`` and ``--override`` (evaluation off)."""
    return [
        f"experiment={args.experiment}",
        f"model={args.model}",
        f"logger={args.logger}",
        f"trainer.max_epochs={args.epochs}",
        "evaluate=false",
        *extra,
        *args.override,
    ]
