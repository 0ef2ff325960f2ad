"""Issue 14: held-out numbers that are held out, runs that keep their identity on resume,
metrics that say what they measured, curves that survive an interruption, sweeps whose jobs
never share a directory, an Optuna objective free of beta."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules.base import even_odd_split
from datamodules.monkey_m1 import MonkeyM1DataModule, preprocess
from datamodules.settings import check_split_fractions
from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs import pipeline
from facrnn.runs.provenance import evaluation_key
from facrnn.runs.resume import override_keys
from facrnn.runs.run_dir import RunDir
from facrnn.runs.sweeps import objective_value
from tests.helpers import CONFIG_DIR, ROOT, compose_config

ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def bins(tensors: dict[str, torch.Tensor]) -> set[tuple[int, int]]:
    """The (trial, time) of every sample of a split."""
    return set(zip(tensors["trial"].tolist(), tensors["time"].tolist()))


# ------------------------------------------------------------------------------ splits
def test_even_odd_validation_is_carved_from_the_training_bins() -> None:
    masks = even_odd_split((2, 2000), val_fraction=0.1)
    train, val, test = masks["train"], masks["val"], masks["test"]
    assert not (val & test).any() and not (train & test).any() and not (train & val).any()
    assert test[:, 1::2].all() and not test[:, 0::2].any()  # the paper's test set: every odd bin
    assert val[:, 1::2].sum() == 0 and val.sum(axis=1).tolist() == [100, 100]
    assert train.sum(axis=1).tolist() == [900, 900]
    gaps = np.diff(np.flatnonzero(val[0]))
    assert gaps.min() >= 18 and gaps.max() <= 22  # evenly spaced in time


def test_synthetic_default_never_selects_on_test_bins(tiny_train_cfg) -> None:
    cfg = tiny_train_cfg("trainer.max_epochs=1")
    datamodule = pipeline.instantiate_datamodule(cfg.datamodule)
    train, val, test = (bins(datamodule.split_tensors(split)) for split in ("train", "val", "test"))
    assert val and test and not (val & test) and not (train & test) and not (train & val)
    # what the trainer validates on (checkpoint selection, early stopping) is the val split
    (val_batch,) = [batch for batch in datamodule.val_dataloader()][:1] or [None]
    served = set()
    for batch in datamodule.val_dataloader():
        served |= bins(batch)
    assert served == val
    assert val_batch is not None


def test_m1_default_holds_out_trials_stratified_by_direction() -> None:
    datamodule = MonkeyM1DataModule()
    datamodule.setup()
    assert datamodule.split == "trials"
    trials = {split: set(datamodule.split_tensors(split)["trial"].tolist()) for split in ("train", "val", "test")}
    assert not (trials["train"] & trials["test"]) and not (trials["val"] & trials["test"])
    assert not (trials["train"] & trials["val"])
    direction = datamodule.recording.extras["direction"]
    assert set(direction[sorted(trials["test"])]) == set(direction)  # every direction is held out


def test_m1_scaling_statistics_come_from_training_trials_only() -> None:
    rng = np.random.default_rng(0)
    neural = rng.poisson(2.0, size=(10, 6, 4)).astype(float)
    train = np.zeros((10, 6), dtype=bool)
    train[:7] = True
    changed = neural.copy()
    changed[7:] *= 100.0  # a huge held-out trial must not change how training trials are scaled
    for scaling in ("max", "zscore"):
        x, _ = preprocess(neural, True, scaling, "m1", train_mask=train)
        y, _ = preprocess(changed, True, scaling, "m1", train_mask=train)
        np.testing.assert_array_equal(x[:7], y[:7])
    x, _ = preprocess(neural, True, "max", "m1", train_mask=train)
    assert np.abs(x[:7]).max() == 1.0  # the maximum of the training bins


def test_split_fractions_are_checked() -> None:
    for bad in (-0.1, 0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="datamodule.val_fraction"):
            check_split_fractions(bad, 0.1)
    with pytest.raises(ConfigError, match="expected below 1"):
        check_split_fractions(0.6, 0.5)


# --------------------------------------------------------------- metrics and provenance
def test_metrics_name_split_and_checkpoint_and_other_splits_write_beside(tiny_train_cfg) -> None:
    cfg = tiny_train_cfg("trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2")
    result = pipeline.train(cfg)
    run = RunDir(result["run_dir"])
    metrics, provenance = run.read_metrics()
    assert provenance["split"] == "test" and provenance["split_protocol"] == "even_odd" and not provenance["in_sample"]
    assert provenance["checkpoint"]["file"] == "checkpoints/best.ckpt" and provenance["checkpoint"]["epoch"] >= 0
    assert provenance["n_mc"] == 10 and provenance["seed"] == 0 and len(provenance["config_hash"]) == 16
    assert provenance["facrnn_version"]
    assert result["provenance"]["split"] == "test"
    before = run.metrics_file.read_bytes()
    settings = EvalSettings(split="train", checkpoint="last", figures=False, dynamics=False)
    pipeline.evaluate_run(run.path, settings)
    assert run.metrics_file.read_bytes() == before  # the test metrics stay
    other, other_provenance = run.read_metrics("train", "last")
    assert run.metrics_path("train", "last").name == "metrics_train_last.json"
    assert other_provenance["split"] == "train" and other_provenance["in_sample"]
    assert other_provenance["checkpoint"]["file"] == "checkpoints/last.ckpt"
    assert evaluation_key(pipeline.expected_provenance(run.path, settings)) == evaluation_key(other_provenance)
    assert evaluation_key(pipeline.expected_provenance(run.path, settings.with_changes(n_mc=3))) != evaluation_key(
        other_provenance
    )
    assert metrics.keys() >= {"partial_corr", "recon_r2"} and "provenance" not in metrics


# ------------------------------------------------------------------------------ resume
def test_resume_keeps_the_runs_own_model(tiny_train_cfg) -> None:
    first = pipeline.train(tiny_train_cfg("model=lrrnn", "trainer.max_epochs=2", "evaluate=false"))
    last = RunDir(first["run_dir"]).checkpoint("last")
    first_step = torch.load(last, weights_only=True)["global_step"]
    # the hint printed after an interruption: no model= on the command line
    resumed_cfg = tiny_train_cfg("ckpt_path=last", "trainer.max_epochs=3", "evaluate=false")
    assert resumed_cfg.model.name == "facrnn"  # what the command line alone composes
    result = pipeline.train(resumed_cfg)
    assert result["method"] == "lrrnn" and result["run_dir"] == first["run_dir"]
    saved = OmegaConf.load(RunDir(first["run_dir"]).config_file)
    assert saved.model.name == "lrrnn" and saved.model.beta == 0 and saved.trainer.max_epochs == 3
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] > first_step  # it trained on, from the lrRNN checkpoint
    assert resumed["hyper_parameters"]["beta"] == 0 and resumed["hyper_parameters"]["latent_dim"] == 6


def test_resume_refuses_to_change_model_or_data(tiny_train_cfg) -> None:
    pipeline.train(tiny_train_cfg("model=lrrnn", "trainer.max_epochs=1", "evaluate=false"))
    config = RunDir(tiny_train_cfg().paths.output_dir).config_file
    saved = config.read_bytes()
    for override, key in (("model=facrnn", "model."), ("model.lr=0.5", "model.lr"), ("datamodule.n_steps=500", "n_steps")):
        with pytest.raises(ConfigError, match=rf"ckpt_path=last into .*{key}.*differs from the run's own config.yaml"):
            pipeline.train(tiny_train_cfg(override, "ckpt_path=last", "evaluate=false"))
    assert config.read_bytes() == saved  # a refused resume leaves the run's config as it was


def test_training_into_a_directory_that_holds_a_run_is_refused(tiny_train_cfg) -> None:
    pipeline.train(tiny_train_cfg("trainer.max_epochs=1", "evaluate=false"))
    with pytest.raises(ConfigError, match=r"already holds a trained run \(checkpoints\).*ckpt_path=last"):
        pipeline.train(tiny_train_cfg("trainer.max_epochs=1", "evaluate=false"))


def test_override_keys() -> None:
    keys = override_keys(["model=lrrnn", "+trainer.x=1", "~callbacks.a", "hydra.run.dir=R", "seed=3", "++a.b=2"])
    assert keys == ["model", "trainer.x", "callbacks.a", "seed", "a.b"]


def test_sigterm_keeps_every_logged_epoch_and_resume_appends(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "training"
    args = [
        "datamodule.n_steps=400",
        "datamodule.teacher_steps=300",
        "datamodule.batch_size=64",
        "logger=csv",
        "threads=1",
        "evaluate=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_epochs=100000",
        "trainer.check_val_every_n_epoch=100000",
    ]
    mark = ["+callbacks.mark._target_=tests.helpers.callbacks.MarkEpoch", f"+callbacks.mark.path={marker}"]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args, *mark, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env={**ENV, "FACRNN_ROOT": str(tmp_path)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "stderr").read_text()[-3000:]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 143, (tmp_path / "stderr").read_text()[-3000:]
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    curves = run_dir / "csv" / "metrics.csv"
    epochs = [int(row["epoch"]) for row in csv.DictReader(curves.open())]
    assert epochs and epochs == list(range(len(epochs))) and epochs[-1] >= min(stopped, 2)

    resume = [arg for arg in args if not arg.startswith("trainer.max_epochs")]
    cfg = compose_config("train", [*resume, "ckpt_path=last", f"trainer.max_epochs={stopped + 4}"], tmp_path, "run")
    pipeline.train(cfg)
    resumed = [int(row["epoch"]) for row in csv.DictReader(curves.open())]
    assert resumed[: len(epochs)] == epochs[: len(resumed)] or resumed[0] == 0
    assert sorted(set(resumed)) == list(range(stopped + 4)) and resumed[-1] == stopped + 3


# ------------------------------------------------------------------------------ sweeps
def test_every_experiment_gives_each_sweep_job_its_own_directory(tmp_path: Path) -> None:
    # job directories carry Hydra's job number, unique within a sweep whatever is swept
    for experiment in sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml")):
        cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
        subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
        assert "${hydra.job.num}" in subdir, (experiment, subdir)


def test_optuna_objective_leaves_out_beta() -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "hparams_search" / "facrnn_optuna.yaml")
    assert cfg.optimized_metric == "val/neg_elbo"
    logged = {"val/loss": 30.0, "val/nll": 4.0, "val/kl": 1.5, "val/partial_corr": 0.4}
    assert objective_value("val/neg_elbo", {"callback_metrics": logged}) == pytest.approx(5.5)
    heavier = {**logged, "val/loss": 4.0 + 1.5 + 100 * 0.4}  # another beta: same nll and kl
    assert objective_value("val/neg_elbo", {"callback_metrics": heavier}) == pytest.approx(5.5)


def test_wandb_summary_holds_the_held_out_metrics(tiny_train_cfg, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen: dict[str, object] = {}
    finish = pipeline.finish_wandb

    def record_then_finish(loggers: list) -> None:  # what the W&B run holds when it is closed
        for logger in loggers:
            if type(logger).__name__ == "WandbLogger":
                seen.update(dict(logger.experiment.summary))
        finish(loggers)

    monkeypatch.setattr(pipeline, "finish_wandb", record_then_finish)
    cfg = tiny_train_cfg("logger=default", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1")
    result = pipeline.train(cfg)
    assert seen["test/partial_corr"] == pytest.approx(result["metrics"]["partial_corr"])
    assert seen["evaluation"]["split"] == "test" and seen["evaluation"]["checkpoint"]["file"] == "checkpoints/best.ckpt"
    assert {"figures/latents", "figures/connectivity"} <= set(seen)
    assert cfg.logger.wandb.group and cfg.logger.wandb.name != f"{cfg.model.name}-seed{cfg.seed}"


def test_last_checkpoint_is_the_latest_state_even_when_validation_got_worse(tiny_train_cfg) -> None:
    worse = "+callbacks.worse._target_=tests.helpers.callbacks.WorseningValidation"
    result = pipeline.train(
        tiny_train_cfg("trainer.max_epochs=4", "trainer.check_val_every_n_epoch=1", "evaluate=false", worse)
    )
    run = RunDir(result["run_dir"])
    best = torch.load(run.checkpoint("best"), weights_only=True)
    last = torch.load(run.checkpoint("last"), weights_only=True)
    assert best["epoch"] == 0  # the first validation was the best
    assert last["epoch"] == 3 and last["global_step"] > best["global_step"]  # last.ckpt: the end of training


def test_the_estimator_settings_are_part_of_what_was_measured(tmp_path: Path) -> None:
    """Metrics scored with other estimator settings (exact vs subsampled) are not reused as the same measurement."""
    from facrnn.evaluation.settings import EvalSettings
    from facrnn.runs.provenance import evaluation_key, evaluation_provenance
    from facrnn.runs.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text("seed: 3\ndatamodule:\n  split: even_odd\nmodel:\n  name: facrnn\n")
    checkpoint = {"file": "checkpoints/best.ckpt", "epoch": 4, "global_step": 20}
    default = evaluation_provenance(run, checkpoint, EvalSettings())
    assert default["estimators"] == {"exact_max_points": 4000, "query_samples": 10_000, "max_centres": None, "kl_n_mc": 4}
    assert default["behaviour_alignment"] == "train"
    for changes in ({"exact_max_points": 0}, {"query_samples": 500}, {"max_centres": 100}, {"kl_n_mc": 2}):
        other = evaluation_provenance(run, checkpoint, EvalSettings(**changes))
        assert evaluation_key(other) != evaluation_key(default), changes
    assert evaluation_key(evaluation_provenance(run, checkpoint, EvalSettings(chunk_mb=1.0))) == evaluation_key(default)
