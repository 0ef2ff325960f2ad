"""The checks of ``python evaluate.py`` (conf/evaluate.yaml), before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from facrnn.cli.evaluate import EvaluateCommand
from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings
from tests.helpers import compose_config


def test_evaluate_config_checks(tmp_path: Path) -> None:
    command = EvaluateCommand.from_config(compose_config("evaluate", [f"run_dir={tmp_path}"], tmp_path))
    assert command == EvaluateCommand(tmp_path, EvalSettings(), None, 1)
    for override, message in [
        ("split=valid", "split='valid': expected one of train, val, test"),
        ("n_mc=0", "n_mc=0: expected the number of posterior samples per point (a positive integer)"),
        ("rollout_steps=0", "rollout_steps=0: expected the longest rollout horizon k (a positive integer)"),
        ("posthoc=pca", "posthoc='pca': expected one of ica, svd"),
        ("threads=0", "threads=0: expected the number of torch threads, or null (a positive integer)"),
        ("checkpoint=''", "checkpoint='': expected best, last or a .ckpt path"),
    ]:
        with pytest.raises(ConfigError) as error:
            EvaluateCommand.from_config(compose_config("evaluate", [f"run_dir={tmp_path}", override], tmp_path))
        assert str(error.value) == message


def test_evaluate_needs_a_run_dir(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", [f"run_dir={tmp_path}", "posthoc=svd", "threads=null"], tmp_path)
    assert EvaluateCommand.from_config(cfg).posthoc == "svd"
    with open_dict(cfg):
        cfg.run_dir = ""
    with pytest.raises(ConfigError, match=r"^run_dir is not set: expected run_dir=RUN, a directory written by train.py$"):
        EvaluateCommand.from_config(cfg)
