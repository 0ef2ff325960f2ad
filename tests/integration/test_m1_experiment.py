"""experiment=monkey_m1: the paper's settings, the (G, H) configurations, any unit count,
and the real entry points on the bundled session."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import numpy as np
import pytest

from facrnn.core.grouping import resolve_group_sizes
from facrnn.evaluation import scoring
from facrnn.runs.pipeline import train
from tests.datamodules.test_monkey_m1 import reach_arrays
from tests.helpers import compose_config, run_script


def test_paper_settings(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=monkey_m1"], tmp_path)
    model = cfg.model
    assert model.name == "facrnn" and model.beta == 2.0 and model.alpha == 0.0
    assert resolve_group_sizes(model.latent_dim, model.n_groups, model.group_sizes, model.group_rank) == [1, 1]
    assert (model.link, model.optimizer, model.lr, model.weight_decay, model.width_samples) == ("relu", "adam", 1e-3, 0.0, 512)
    assert (cfg.datamodule.batch_size, cfg.datamodule.split, cfg.datamodule.path) == (128, "trials", None)
    assert cfg.trainer.max_epochs == 1000


def test_command_line_lrrnn_keeps_its_penalty_off(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=monkey_m1", "model=lrrnn"], tmp_path)
    assert cfg.model.name == "lrrnn" and cfg.model.beta == 0.0 and cfg.model.n_groups == 1
    assert (cfg.model.latent_dim, cfg.model.link, cfg.model.optimizer) == (2, "relu", "adam")
    assert cfg.trainer.max_epochs == 1000


@pytest.mark.parametrize(
    ("overrides", "sizes", "beta"),
    [
        (["model=lrrnn"], [2], 0.0),  # (G, H) = (1, 2)
        ([], [1, 1], 2.0),  # (2, 1)
        (["model=lrrnn", "model.latent_dim=4"], [4], 0.0),  # (1, 4)
        (["model.latent_dim=4"], [2, 2], 2.0),  # (2, 2)
        (["model.latent_dim=4", "model.n_groups=4"], [1, 1, 1, 1], 2.0),  # (4, 1)
    ],
)
def test_group_configurations_of_the_paper(overrides: list[str], sizes: list[int], beta: float, tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=monkey_m1", *overrides], tmp_path)
    module = hydra.utils.instantiate(cfg.model, n_neurons=154, n_train=2352)
    assert module.group_sizes == sizes and module.hparams.beta == beta
    assert module.width == pytest.approx(512 ** (-1 / (sum(sizes) + 4)))


def test_another_unit_count_needs_only_the_path(tmp_path: Path) -> None:
    path = tmp_path / "other_session.npz"
    arrays = reach_arrays(n_trials=40, n_bins=10, n_units=37)
    np.savez(path, neural=arrays["neural"], vel=arrays["vel"])
    cfg = compose_config(
        "train",
        ["experiment=monkey_m1", f"datamodule.path={path}", "debug=short", "trainer.max_epochs=3", "logger=csv"],
        tmp_path,
    )
    result = train(cfg)
    metrics, run_dir = result["metrics"], Path(result["run_dir"])
    assert {
        "latent_r2",
        "rotation_r2_min",
        "rotation_r2_max",
        "rotation_best_deg",
        "recon_r2",
        "partial_corr",
        "total_corr",
    } <= set(metrics)
    # held out (maps from the training trials) it can be negative; never above the refitted value
    assert 0.0 <= metrics["latent_r2_refit"] <= 1.0 and metrics["latent_r2"] <= metrics["latent_r2_refit"] + 1e-12
    assert "W" not in metrics and "group_latent_r2" not in metrics  # no ground truth
    with open(run_dir / "rotation_sweep.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 13
    for name in ("reach_trajectories.png", "rotation_sweep.png", "connectivity_sorted.png"):
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_train_and_evaluate_the_bundled_session_from_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "m1_run"
    trained = run_script("train.py", ["experiment=monkey_m1", "debug=short", f"hydra.run.dir={run_dir}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "latent_r2" in trained.stdout and "rotation_r2_max" in trained.stdout
    (run_dir / "metrics.json").unlink()
    (run_dir / "rotation_sweep.csv").unlink()
    evaluated = run_script("evaluate.py", [f"run_dir={run_dir}", "checkpoint=last", "n_mc=2"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "latent_r2" in evaluated.stdout
    assert not (run_dir / "metrics.json").exists()  # checkpoint=last writes beside it
    metrics = json.loads((run_dir / "metrics_test_last.json").read_text())
    assert metrics.pop("provenance")["checkpoint"]["file"] == "checkpoints/last.ckpt"
    assert 0.0 <= metrics["latent_r2_refit"] <= 1.0 and metrics["latent_r2"] <= metrics["latent_r2_refit"] + 1e-12
    assert (run_dir / "rotation_sweep.csv").is_file()


GRID = {"g1h2": [2], "g2h1": [1, 1], "g1h4": [4], "g2h2": [2, 2], "g4h1": [1, 1, 1, 1], "g2h1_mlp": [1, 1]}


@pytest.mark.parametrize("variant", sorted(GRID))
def test_the_grid_sweep_composes(variant: str, tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=monkey_m1_grid", f"grouping={variant}"], tmp_path)
    module = hydra.utils.instantiate(cfg.model, n_neurons=154, n_train=1904)
    assert module.group_sizes == GRID[variant]
    assert module.hparams.beta == (0.0 if len(GRID[variant]) == 1 else 2.0)
    assert cfg.datamodule.split == "trials" and cfg.trainer.max_epochs == 1000
    assert cfg.model.replicas == (1 if variant.endswith("mlp") else 10)
    assert (cfg.model.encoder, cfg.model.decoder) == (("mlp", "mlp") if variant.endswith("mlp") else ("linear", "linear"))


def test_behaviour_maps_are_fitted_on_the_training_trials_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []
    original = scoring.evaluate_behaviour

    def recording_call(latents, velocity, trial, time, sizes, direction=None, fit_on=None):  # noqa: ANN001, ANN202
        seen.append({"scored": np.unique(trial), "fitted": None if fit_on is None else np.unique(fit_on.trial)})
        return original(latents, velocity, trial, time, sizes, direction, fit_on=fit_on)

    monkeypatch.setattr(scoring, "evaluate_behaviour", recording_call)
    cfg = compose_config("train", ["experiment=monkey_m1", "debug=short", "threads=1"], tmp_path)
    result = train(cfg)

    datamodule = hydra.utils.instantiate(cfg.datamodule)
    datamodule.setup()
    train_trials = np.unique(datamodule.split_tensors("train")["trial"].numpy())
    test_trials = np.unique(datamodule.split_tensors("test")["trial"].numpy())
    assert seen and all(call["fitted"] is not None for call in seen)
    np.testing.assert_array_equal(seen[0]["fitted"], train_trials)  # fitted on exactly the training trials
    np.testing.assert_array_equal(seen[0]["scored"], test_trials)  # scored on the held-out ones
    assert not set(train_trials) & set(test_trials)
    metrics = result["metrics"]
    assert metrics["latent_r2"] <= metrics["latent_r2_refit"] + 1e-12


@pytest.mark.parametrize("session", ["bundled", "generated"])
def test_the_grid_runs_on_another_session_by_its_path_alone(session: str, tmp_path: Path) -> None:
    overrides = ["experiment=monkey_m1_grid", "grouping=g2h1", "debug=short", "model.replicas=2", "threads=1"]
    if session == "generated":
        path = tmp_path / "session_40_units.npz"
        arrays = reach_arrays(n_trials=48, n_bins=12, n_units=40)
        np.savez(path, neural=arrays["neural"], vel=arrays["vel"])
        overrides.append(f"datamodule.path={path}")
    result = train(compose_config("train", overrides, tmp_path))
    assert len(result["replica_metrics"]) == 2
    for metrics in result["replica_metrics"].values():
        assert {"latent_r2", "latent_r2_refit", "rotation_r2_max", "partial_corr"} <= set(metrics)
        assert np.isfinite(metrics["latent_r2"]) and metrics["latent_r2"] <= metrics["latent_r2_refit"] + 1e-12
