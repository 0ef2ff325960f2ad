"""What ``python evaluate.py run_dir=RUN [checkpoint=...] [posthoc=ica|svd]`` does: check the
command's config (``conf/evaluate.yaml``) before anything is loaded, score the run or its
post-hoc variant, print the metrics table.

The evaluation settings themselves are :class:`~facrnn.evaluation.settings.EvalSettings`
(checked when built); this module adds what belongs to the command: ``run_dir``,
``posthoc`` and ``threads``.

``run_dir`` is checked first of all, before Hydra creates its run directory: the
``hydra.run.dir`` of ``conf/evaluate.yaml`` is ``${facrnn.evaluate_run_dir:}``, a resolver
(:func:`resolve_run_dir`, registered when this module is imported) that checks ``run_dir``
with :func:`check_run_dir`, so ``python evaluate.py`` without it, or with a path that is no
run directory, ends with one ``error:`` line and creates nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from facrnn.cli.errors import exit_on_error
from facrnn.cli.report import evaluation_title, format_metrics
from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings, require_positive_integer
from facrnn.runs.run_dir import RunDir

if TYPE_CHECKING:
    from facrnn.evaluation.scoring import Evaluation


#: the resolver of ``hydra.run.dir`` in conf/evaluate.yaml: ``${facrnn.evaluate_run_dir:}``
RUN_DIR_RESOLVER = "facrnn.evaluate_run_dir"
#: what every problem with ``run_dir`` expects
EXPECTED_RUN_DIR = "expected a run directory written by train.py"


def check_run_dir(run_dir: Any) -> Path:
    """``run_dir`` as a path, checked: set, an existing directory holding ``config.yaml``.

    Parameters
    ----------
    run_dir : str, os.PathLike or None
        The ``run_dir`` of the config (None, ``""`` or ``???``: not set).

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    ConfigError
        ``run_dir is not set: ...``; ``run_dir=PATH: no such directory, so no config.yaml; ...``;
        ``run_dir=PATH: not a directory; ...``.
    CheckpointNotFoundError
        ``run_dir=PATH: no config.yaml; expected a run directory written by train.py`` (from
        :meth:`~facrnn.runs.run_dir.RunDir`'s own check).
    """
    if run_dir is None or str(run_dir) in ("", "???"):
        raise ConfigError("run_dir is not set: expected run_dir=RUN, a directory written by train.py")
    path = Path(str(run_dir))
    if not path.exists():
        raise ConfigError(f"run_dir={path}: no such directory, so no {RunDir.CONFIG}; {EXPECTED_RUN_DIR}")
    if not path.is_dir():
        raise ConfigError(f"run_dir={path}: not a directory; {EXPECTED_RUN_DIR}")
    RunDir(path).load_config()  # its own message when config.yaml is missing
    return path


def resolve_run_dir(*, _root_: Any) -> str:
    """``hydra.run.dir`` of ``python evaluate.py``: the checked ``run_dir`` (:func:`check_run_dir`).

    Hydra resolves ``hydra.run.dir`` before it creates that directory and before the task
    function runs, and prints any exception raised here with a traceback; so a problem ends the
    process here, as ``error: <message>`` on stderr with exit status 1
    (:func:`~facrnn.cli.errors.exit_on_error`), before anything is created.

    Parameters
    ----------
    _root_ : DictConfig
        The composed config (OmegaConf passes it to resolvers that ask for it).

    Raises
    ------
    SystemExit
        With status 1, after the one-line message of :func:`check_run_dir`.
    """
    with exit_on_error():
        return str(check_run_dir(OmegaConf.select(_root_, "run_dir", default=None, throw_on_missing=False)))


def register_run_dir_resolver() -> None:
    """Register :func:`resolve_run_dir` as ``${facrnn.evaluate_run_dir:}`` (done on import)."""
    OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, resolve_run_dir, replace=True)


register_run_dir_resolver()


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

    Writes ``RUN/metrics.json`` (or ``RUN/posthoc_<kind>/metrics.json``; ``metrics_<split>_<checkpoint>.json``
    for another split or checkpoint than test and best, :meth:`~facrnn.runs.run_dir.RunDir.metrics_path`) and figures.
    """
    import torch

    from facrnn.runs.pipeline import evaluate_posthoc, evaluate_run

    command = EvaluateCommand.from_config(cfg)
    if command.threads is not None:
        torch.set_num_threads(command.threads)
    split = command.settings.split
    method = str(OmegaConf.select(RunDir(command.run_dir).load_config(), "model.name", default="model"))
    if command.posthoc:
        evaluation, _ = evaluate_posthoc(command.run_dir, command.posthoc, command.settings)
        written = RunDir(command.run_dir).posthoc(command.posthoc).metrics_path(split, command.settings.checkpoint)
        method = f"{method}, post-hoc {command.posthoc}"
    else:
        evaluation = evaluate_run(command.run_dir, command.settings)
        written = RunDir(command.run_dir).metrics_path(split, command.settings.checkpoint)
    title = evaluation_title(method, evaluation.provenance)
    sys.stdout.write(format_metrics(evaluation.metrics, title=title) + "\n")
    sys.stdout.write(f"written: {written}\n")
    return evaluation


__all__ = ["EvaluateCommand", "check_run_dir", "evaluate", "register_run_dir_resolver", "resolve_run_dir"]
