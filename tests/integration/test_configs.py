"""Every config composes and instantiates; experiment files keep command-line model choices."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR, compose_config

EXPERIMENTS = sorted(path.stem for path in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
MODELS = sorted(path.stem for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
DEBUGS = sorted(path.stem for path in (Path(CONFIG_DIR) / "debug").glob("*.yaml"))


GROUP_OPTIONS = sorted(
    (path.parent.name, path.stem) for path in Path(CONFIG_DIR).glob("*/*.yaml") if path.parent.name != "schema"
)


def targets(node: object) -> list[str]:
    """Every ``_target_`` string anywhere in a plain container (a config's ``to_container``)."""
    if isinstance(node, dict):
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [target for value in node.values() for target in targets(value)]
    if isinstance(node, list):
        return [target for value in node for target in targets(value)]
    return []


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_option_composes_resolves_and_its_targets_import(group: str, option: str, tmp_path: Path) -> None:
    """``GROUP=OPTION`` for every conf/GROUP/OPTION.yaml: composes, is the choice Hydra records,
    every interpolation resolves (``???`` values stay missing), every ``_target_`` imports."""
    cfg = compose_config("train", [f"{group}={option}"], tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    found = targets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    assert "facrnn.training.module.FacRNNModule" in found
    for target in found:
        assert callable(get_object(target)), f"{group}={option}: _target_ {target} is not callable"


def test_config_groups_hold_the_documented_options() -> None:
    """The parametrized tests above have their cases (CONFIG_DIR is the repository's conf/)."""
    assert {"synthetic_paper", "synthetic_benchmark", "monkey_m1", "mouse_voltage"} <= set(EXPERIMENTS)
    assert {"facrnn", "lrrnn", "bdrnn", "facrnn_full"} <= set(MODELS)
    assert {"fdr", "short"} <= set(DEBUGS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.model._target_ == "facrnn.training.module.FacRNNModule"
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    callbacks = [hydra.utils.instantiate(entry) for entry in cfg.callbacks.values()]
    assert callbacks


def test_debug_configs_shrink_a_run_and_win_over_the_experiment(tmp_path: Path) -> None:
    """debug comes after experiment in train.yaml's defaults, so ``experiment=X debug=Y`` is X shrunk."""
    fdr = compose_config("train", ["experiment=synthetic_paper", "debug=fdr"], tmp_path)
    assert fdr.trainer.fast_dev_run is True
    assert (fdr.hydra.runtime.choices.logger, dict(fdr.logger), fdr.evaluate) == ("none", {}, False)
    short = compose_config("train", ["experiment=synthetic_paper", "debug=short"], tmp_path)
    assert (short.trainer.max_epochs, short.trainer.check_val_every_n_epoch) == (2, 1)  # the experiment's 5000 lost
    assert list(short.logger) == ["csv"] and short.evaluate is True
    assert short.model.beta == 20.0  # the experiment's model settings stay


def test_synthetic_paper_settings(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=synthetic_paper"], tmp_path)
    assert cfg.model.name == "facrnn"
    assert (cfg.model.latent_dim, cfg.model.n_groups, cfg.model.beta) == (6, 2, 20.0)
    assert (cfg.model.optimizer, cfg.model.lr) == ("adamw", 1e-3)
    assert cfg.datamodule.batch_size == 128
    assert cfg.trainer.max_epochs == 5000


@pytest.mark.parametrize(
    ("model", "n_groups", "beta", "alpha"),
    [("lrrnn", 1, 0.0, 0.0), ("bdrnn", 2, 0.0, 1.0), ("facrnn_full", 6, 20.0, 0.0), ("facrnn", 2, 20.0, 0.0)],
)
def test_command_line_model_wins_over_experiment(model: str, n_groups: int, beta: float, alpha: float, tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=synthetic_paper", f"model={model}"], tmp_path)
    assert cfg.model.name == model
    assert (int(cfg.model.n_groups), cfg.model.beta, cfg.model.alpha) == (n_groups, beta, alpha)
    assert cfg.trainer.max_epochs == 5000  # the experiment's training settings stay


def test_evaluate_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", [f"run_dir={tmp_path}"], tmp_path)
    assert cfg.checkpoint == "best"
    assert cfg.n_mc == 10


def test_synthetic_robust_is_the_paper_settings_plus_restarts(tmp_path: Path) -> None:
    paper = compose_config("train", ["experiment=synthetic_paper"], tmp_path)
    robust = compose_config("train", ["experiment=synthetic_robust"], tmp_path)
    assert (robust.model.restarts, robust.model.restart_epochs) == (4, 1000)
    assert (paper.model.restarts, paper.model.replicas) == (1, 1)  # the paper protocol stays one start
    for key in ("restarts", "restart_epochs"):
        robust.model[key] = paper.model[key]
    assert robust.model == paper.model and robust.trainer == paper.trainer and robust.datamodule == paper.datamodule
