"""The checks of ``python evaluate.py`` (conf/evaluate.yaml), before anything is loaded or created."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from facrnn.cli.evaluate import EXPECTED_RUN_DIR, EvaluateCommand, check_run_dir
from facrnn.errors import ConfigError, FacRNNError
from facrnn.evaluation.settings import EvalSettings
from tests.helpers import compose_config, run_script


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


def test_check_run_dir_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    assert check_run_dir(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "a_file").write_text("")
    for run_dir, message in [
        (None, "run_dir is not set: expected run_dir=RUN, a directory written by train.py"),
        ("???", "run_dir is not set: expected run_dir=RUN, a directory written by train.py"),
        (tmp_path / "nope", f"run_dir={tmp_path / 'nope'}: no such directory, so no config.yaml; {EXPECTED_RUN_DIR}"),
        (tmp_path / "a_file", f"run_dir={tmp_path / 'a_file'}: not a directory; {EXPECTED_RUN_DIR}"),
        (tmp_path, f"run_dir={tmp_path}: no config.yaml; {EXPECTED_RUN_DIR}"),
    ]:
        with pytest.raises(FacRNNError) as error:
            check_run_dir(run_dir)
        assert str(error.value) == message


def test_hydra_run_dir_resolver_checks_before_anything_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "hydra": {"run": {"dir": "${facrnn.evaluate_run_dir:}"}}})
    assert OmegaConf.select(cfg, "hydra.run.dir") == str(tmp_path / "run")
    for run_dir in ("???", str(tmp_path / "nope")):
        cfg.run_dir = run_dir
        with pytest.raises(SystemExit) as stop:
            OmegaConf.select(cfg, "hydra.run.dir")
        assert stop.value.code == 1
        assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "nope").exists()


def test_cli_evaluate_without_a_usable_run_dir_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    for args, message in [
        ([], "error: run_dir is not set: expected run_dir=RUN, a directory written by train.py\n"),
        (["run_dir=logs/nope"], f"error: run_dir=logs/nope: no such directory, so no config.yaml; {EXPECTED_RUN_DIR}\n"),
        (["run_dir=a_file"], f"error: run_dir=a_file: not a directory; {EXPECTED_RUN_DIR}\n"),
    ]:
        result = run_script("evaluate.py", args, tmp_path)
        assert (result.returncode, result.stderr) == (1, message), result.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]  # no logs/nope, no logs/
