"""End to end: train.py's pipeline on tiny data for every model, evaluation, determinism."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.pipeline import evaluate_run, train
from facrnn.training.module import FacRNNModule
from tests.helpers import MODELS_UNDER_TEST


@pytest.mark.parametrize("model", MODELS_UNDER_TEST)
def test_fast_dev_run_every_model(model: str, tiny_train_cfg) -> None:
    cfg = tiny_train_cfg(f"model={model}", "debug=fdr")
    result = train(cfg)
    assert Path(result["run_dir"]).is_dir()
    assert "metrics" not in result  # fast_dev_run skips evaluation


def test_one_epoch_then_evaluate(tiny_train_cfg) -> None:
    cfg = tiny_train_cfg("debug=short", "trainer.max_epochs=1", "evaluate=false")
    run_dir = Path(train(cfg)["run_dir"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()

    evaluation = evaluate_run(run_dir, EvalSettings(checkpoint="last", n_mc=2))
    # checkpoint=last: metrics_test_last.json, beside (never over) the test/best metrics.json
    stored = json.loads((run_dir / "metrics_test_last.json").read_text())
    assert stored.pop("provenance")["checkpoint"]["file"] == "checkpoints/last.ckpt"
    assert stored == pytest.approx(evaluation.metrics)
    expected = {
        "cond_loglik",
        "recon_r2",
        "partial_corr",
        "total_corr",
        "group_latent_r2",
        "component_latent_r2",
        *(f"{prefix}_{name}" for prefix in ("connectivity", "sub_connectivity") for name in ("mae", "rmse", "r2", "pearson")),
    }
    assert expected <= set(stored)
    assert all(math.isfinite(value) for value in stored.values())
    assert all(key == key.lower() and " " not in key for key in stored)
    for figure in ("latents.png", "connectivity.png", "training_curves.png"):
        assert (run_dir / "figures" / figure).read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_loads_alone(tiny_train_cfg) -> None:
    cfg = tiny_train_cfg("model=bdrnn", "model.group_sizes=[2,4]", "debug=short", "evaluate=false")
    run_dir = Path(train(cfg)["run_dir"])
    module = FacRNNModule.load(str(run_dir / "checkpoints" / "last.ckpt"))
    assert module.group_sizes == [2, 4]
    assert module.hparams.alpha == 1.0
    assert module.model.group_connectivity().shape == (2, 20, 20)


def logged_train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_same_seed_same_loss(tiny_train_cfg) -> None:
    def run(seed: int, name: str) -> tuple[list[float], torch.Tensor]:
        cfg = tiny_train_cfg("debug=short", "trainer.max_epochs=3", f"seed={seed}", "evaluate=false", run_name=name)
        run_dir = Path(train(cfg)["run_dir"])
        module = FacRNNModule.load(str(run_dir / "checkpoints" / "last.ckpt"))
        return logged_train_losses(run_dir), module.model.encoder.weight.detach()

    (losses, weights), (losses_again, weights_again), (other_losses, _) = run(3, "a"), run(3, "b"), run(4, "c")
    assert len(losses) == 3
    assert losses == losses_again
    torch.testing.assert_close(weights, weights_again, rtol=0, atol=0)
    assert losses != other_losses
