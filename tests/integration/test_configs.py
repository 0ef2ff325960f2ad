"""Every config composes and instantiates; experiment files keep command-line model choices."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest

from tests.helpers import CONFIG_DIR, compose_config

EXPERIMENTS = sorted(path.stem for path in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
MODELS = sorted(path.stem for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
DEBUGS = sorted(path.stem for path in (Path(CONFIG_DIR) / "debug").glob("*.yaml"))


def test_config_groups_are_found() -> None:
    assert "synthetic_paper" in EXPERIMENTS
    assert {"facrnn", "lrrnn", "bdrnn", "facrnn_full"} <= set(MODELS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.model._target_ == "facrnn.training.module.FacRNNModule"
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    callbacks = [hydra.utils.instantiate(entry) for entry in cfg.callbacks.values()]
    assert callbacks


@pytest.mark.parametrize("debug", DEBUGS)
def test_debug_configs_compose(debug: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"debug={debug}"], tmp_path)
    assert cfg.trainer.max_epochs >= 1


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
