"""How ``train.py`` and ``evaluate.py`` end on an anticipated failure: one line on stderr, no
traceback, a non-zero exit status (docs/errors.md).

* a :class:`~facrnn.errors.FacRNNError` (also when Hydra's ``instantiate`` wrapped it):
  ``error: <message>``, exit status 1;
* :class:`~facrnn.training.faults.TrainingInterrupted` (SIGTERM, Ctrl-C; ``last.ckpt`` saved):
  ``interrupted: <message>``, exit status 143 (SIGTERM) or 130 (Ctrl-C).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facrnn.errors import FacRNNError
from facrnn.training.faults import TrainingInterrupted


def project_error(error: BaseException) -> FacRNNError | None:
    """``error`` itself or the first :class:`FacRNNError` among its causes (Hydra wraps errors of ``instantiate``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, FacRNNError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn the project's own errors into ``error: <message>`` on stderr and exit status 1.

    Raises
    ------
    SystemExit
        With status 1 after a :class:`FacRNNError`, or the signal's status after
        :class:`TrainingInterrupted`.
    """
    try:
        yield
    except TrainingInterrupted as interrupted:
        sys.stderr.write(f"interrupted: {interrupted.message}\n")
        sys.stderr.flush()
        raise SystemExit(interrupted.code) from None
    except Exception as error:
        cause = project_error(error)
        if cause is None:
            raise
        sys.stderr.write(f"error: {cause}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


#: Hydra flags followed by a value that is no override (``-cn train``, ``--config-dir DIR``)
FLAGS_WITH_VALUES = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg", "-p", "--package")


def check_command_line(argv: list[str]) -> None:
    """Parse every override of the command line as Hydra will, and report the first one it
    cannot parse in one line with the quoting that fixes it (a path holding ``=``, spaces,
    non-ASCII letters or brackets: ``datamodule.path='/data/a=b.npz'``).

    Raises
    ------
    ConfigError
        ``datamodule.path=/data/a=b.npz: Hydra cannot parse this override (...); expected the
        value quoted: "datamodule.path='/data/a=b.npz'" (the outer quotes for the shell)``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from facrnn.errors import ConfigError, first_line

    parser = OverridesParser.create()
    skip_next = False
    for argument in argv:
        if skip_next or argument.startswith("-"):
            skip_next = argument in FLAGS_WITH_VALUES
            continue
        try:
            parser.parse_override(argument)
        except HydraException as error:
            key, _, value = argument.partition("=")
            reason = first_line(error, "a syntax error")
            quoted = value.replace("'", "\\'")
            raise ConfigError(
                f"{argument}: Hydra cannot parse this override ({reason}); expected the value quoted: "
                f"\"{key}='{quoted}'\" (the outer quotes for the shell)"
            ) from None


#: Hydra flags after which it composes no config, or another one than the script's: no check
FLAGS_WITHOUT_CHECK = (
    "-h",
    "--help",
    "--hydra-help",
    "--version",
    "-i",
    "--info",
    "-sc",
    "--shell-completion",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
)


def check_composition(argv: list[str], config_name: str, config_dir: str | Path) -> None:
    """Compose ``config_dir/config_name.yaml`` with the command line's overrides, as
    ``@hydra.main`` is about to, and report a value a settings schema refuses in one line
    (:func:`facrnn.training.settings.composition_error`) instead of OmegaConf's report of
    several lines: ``model.group_sizes=[3.9,3.1]`` gives ``model.group_sizes[0]=3.9: expected a
    value of type int (an element of ModelSettings.group_sizes)``.

    With ``-m`` / ``--multirun`` the config is composed as Hydra composes a sweep's (its sweep
    overrides apply per job). Any other failure is left to Hydra, which reports it as usual
    (``model=foo`` lists the available models); so is a command line with one of
    :data:`FLAGS_WITHOUT_CHECK`.

    Raises
    ------
    ConfigError
        The schema's one-line message, naming the key.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from facrnn.training.settings import composition_error

    if any(argument.split("=", 1)[0] in FLAGS_WITHOUT_CHECK for argument in argv) or GlobalHydra.instance().is_initialized():
        return
    overrides, skip_next = [], False
    for argument in argv:
        if skip_next or argument.startswith("-"):
            skip_next = argument in FLAGS_WITH_VALUES
            continue
        overrides.append(argument)
    mode = RunMode.MULTIRUN if {"-m", "--multirun"} & set(argv) else RunMode.RUN
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            GlobalHydra.instance().hydra.compose_config(config_name, overrides, run_mode=mode, from_shell=True)
    except Exception as error:  # noqa: BLE001 - only the schema's refusals are reported here
        refused = composition_error(error)
        if refused is not None:
            raise refused from None


__all__ = ["check_command_line", "check_composition", "exit_on_error", "project_error"]
