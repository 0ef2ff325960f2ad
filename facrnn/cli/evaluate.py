"""What ``python evaluate.py run_dir=RUN [checkpoint=...] [posthoc=ica|svd]`` does: check the
command's config (``conf/evaluate.yaml``) before anything is loaded, score the run or its
post-hoc variant, print the metrics table.

The evaluation settings themselves are :class:`~facrnn.evaluation.settings.EvalSettings`
(checked when built); this module adds what belongs to the command: ``run_dir``,
``posthoc`` and ``threads``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from facrnn.cli.report import format_metrics
from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings, require_positive_integer
from facrnn.runs.run_dir import RunDir

if TYPE_CHECKING:
    from facrnn.evaluation.scoring import Evaluation


@dataclass(frozen=True)
class EvaluateCommand:
    """One ``evaluate.py`` call.

    Parameters
    ----------
    run_dir : Path
        The training run directory.
    settings : EvalSettings
        How it is scored.
    posthoc : {"ica", "svd"}, optional
        Score this post-hoc variant of the run instead of the run itself.
    threads : int, optional
        Torch threads (None: torch's default).
    """

    run_dir: Path
    settings: EvalSettings
    posthoc: str | None = None
    threads: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> EvaluateCommand:
        """The command of a composed ``conf/evaluate.yaml``, checked before anything is loaded.

        Raises
        ------
        ConfigError
            The first problem found, as ``KEY=VALUE: what is wrong; expected ...``.
        """
        from facrnn.runs.pipeline import check_posthoc_kind

        run_dir = OmegaConf.select(cfg, "run_dir", default=None)
        if run_dir in (None, ""):
            raise ConfigError("run_dir is not set: expected run_dir=RUN, a directory written by train.py")
        settings = EvalSettings.from_config(cfg)
        threads = cfg.get("threads")
        if threads is not None:
            require_positive_integer("threads", threads, "the number of torch threads, or null")
        posthoc = cfg.get("posthoc")
        if posthoc is not None:
            check_posthoc_kind(posthoc)
        return cls(Path(str(run_dir)), settings, posthoc, threads)


def evaluate(cfg: Any) -> Evaluation:
    """Check ``cfg``, score the run (or its post-hoc variant), print the metrics table.

    Writes ``RUN/metrics.json`` (or ``RUN/posthoc_<kind>/metrics.json``) and figures.
    """
    import torch

    from facrnn.runs.pipeline import evaluate_posthoc, evaluate_run

    command = EvaluateCommand.from_config(cfg)
    if command.threads is not None:
        torch.set_num_threads(command.threads)
    split = command.settings.split
    if command.posthoc:
        evaluation, _ = evaluate_posthoc(command.run_dir, command.posthoc, command.settings)
        written = RunDir(command.run_dir).posthoc(command.posthoc).metrics_file
        title = f"{split} metrics, post-hoc {command.posthoc}"
    else:
        evaluation = evaluate_run(command.run_dir, command.settings)
        written = RunDir(command.run_dir).metrics_file
        title = f"{split} metrics"
    sys.stdout.write(format_metrics(evaluation.metrics, title=title) + "\n")
    sys.stdout.write(f"written: {written}\n")
    return evaluation


__all__ = ["EvaluateCommand", "evaluate"]
