"""Sweeps, clusters, multi-GPU and resume (docs/scale.md): launchers, Optuna search with a
resumable study, collision-free run directories, kill-and-resume equivalence, DDP on two
CPU processes (gloo) and fault isolation. CPU only, offline."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from datamodules.base import BatchIndexSampler
from facrnn.errors import CheckpointError
from facrnn.runs import sweeps
from facrnn.runs.pipeline import train
from facrnn.runs.resume import prepare_resume, resolve_checkpoint
from facrnn.training.module import FacRNNModule
from tests.helpers import ROOT, TINY_DATA, compose_config

# Quick jobs: tiny data, one thread, no W&B.
QUICK = [*TINY_DATA, "threads=1", "logger=none"]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One generated tiny data set shared by every run of this module (``paths.cache_dir``)."""
    return str(tmp_path_factory.mktemp("data_cache"))


def run_train(args: list[str], root: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACRNN_ROOT": str(root), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- launchers
# A 2x2 grid in which exactly one job fails (6 latents do not split into 4 equal groups).
GRID = ["model.latent_dim=6,8", "model.n_groups=2,4"]
LAUNCHER_ARGS = {
    "local": ["launcher=local"],
    "joblib": ["launcher=joblib", "hydra.launcher.n_jobs=2"],
    # submitit starts every job of a batch at once: two at a time on this 2-core machine
    "submitit_local": ["launcher=submitit_local", "hydra.sweeper.max_batch_size=2"],
}


@pytest.mark.parametrize(
    "launcher",
    [
        "local",
        # ~25 s of CPU for three interpreters; slow to keep the default suite in its time budget
        pytest.param("joblib", marks=pytest.mark.slow),
        "submitit_local",
    ],
)
def test_two_by_two_multirun_isolates_the_failing_job(launcher: str, tmp_path: Path, data_cache: str) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_train(
        [
            "-m",
            *QUICK,
            "debug=fdr",
            f"paths.cache_dir={data_cache}",
            *GRID,
            *LAUNCHER_ARGS[launcher],
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep's exit status reports the failure
    assert "1 of 4 jobs failed" in result.stderr
    summary = yaml.safe_load((sweep_dir / "failures.yaml").read_text())
    assert summary["n_jobs"] == 4 and summary["n_failed"] == 1
    (failed,) = summary["failed"]
    assert {"model.latent_dim=6", "model.n_groups=4"} <= set(failed["overrides"])
    assert "model.n_groups" in failed["error"] or "latent_dim" in failed["error"]
    # the other three jobs ran to the end, each in its own directory
    finished = sorted(
        path.parent.name for path in sweep_dir.glob("*/config.yaml") if not (path.parent / "failure.yaml").exists()
    )
    assert len(finished) == 3
    assert (sweep_dir / failed["dir"].split("/")[-1] / "failure.yaml").is_file()
    if launcher == "submitit_local":
        assert any((sweep_dir / ".submitit").iterdir())  # each job was its own submitit job


def test_failed_job_is_recorded_and_its_wandb_run_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config("train", QUICK, tmp_path, run_name="job")

    def set_mode(mode: RunMode) -> None:
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.overrides.task = ["model.beta=3"]
        HydraConfig().set_config(cfg)

    set_mode(RunMode.MULTIRUN)
    finished: list[int] = []
    fake_wandb = types.SimpleNamespace(run=object(), finish=lambda exit_code=0: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)

    def failing_task(_cfg: object) -> float:
        raise RuntimeError("diverged")

    assert sweeps.run_job_isolated(failing_task, cfg) is None  # a marker, not an exception
    assert finished == [1]  # the W&B run is finished as failed
    record = yaml.safe_load((tmp_path / "job" / "failure.yaml").read_text())
    assert record["overrides"] == ["model.beta=3"] and record["error"] == "RuntimeError: diverged"
    assert "failing_task" in record["traceback"]
    # a rerun (requeue) that succeeds removes the stale record
    assert sweeps.run_job_isolated(lambda _cfg: 1.5, cfg) == 1.5
    assert not (tmp_path / "job" / "failure.yaml").exists()
    # outside a multirun the error propagates
    set_mode(RunMode.RUN)
    with pytest.raises(RuntimeError, match="diverged"):
        sweeps.run_job_isolated(failing_task, cfg)


def test_objective_is_the_configured_metric() -> None:
    result = {"callback_metrics": {"val/loss": 2.5, "train/loss": 3.0}, "metrics": {"group_latent_r2": 0.9}}
    assert sweeps.objective_value("val/loss", result) == 2.5
    assert sweeps.objective_value("group_latent_r2", result) == 0.9
    assert sweeps.objective_value(None, result) is None
    with pytest.raises(KeyError, match="optimized_metric=val/nll: not among"):
        sweeps.objective_value("val/nll", result)
    with pytest.raises(ValueError, match="expected a finite value"):
        sweeps.objective_value("val/loss", {"callback_metrics": {"val/loss": float("nan")}})


# ------------------------------------------------------------------------------ Optuna
def test_optuna_search_interrupted_after_three_trials_resumes_to_five(tmp_path: Path, data_cache: str) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [
        "-m",
        "hparams_search=facrnn_optuna",
        *QUICK,
        "debug=fdr",
        f"paths.cache_dir={data_cache}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=resume_test",
    ]
    # Asked for 5 trials, the search is killed (SIGKILL) when the 4th trial starts training.
    killed = run_train(
        [
            *common,
            "hydra.sweeper.n_trials=5",
            f"hydra.sweep.dir={tmp_path / 'first'}",
            "+callbacks.kill._target_=tests.helpers.callbacks.KillProcess",
            "+callbacks.kill.job_num=3",
        ],
        tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    study = optuna.load_study(study_name="resume_test", storage=storage)
    assert [trial.state for trial in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    # The same command with the trials still missing continues the same study; one of its
    # trials crashes, is marked FAIL, and the search goes on (3 trials for the 2 missing).
    resumed = run_train(
        [
            *common,
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={tmp_path / 'second'}",
            "+callbacks.crash._target_=tests.helpers.callbacks.RaiseInJob",
            "+callbacks.crash.job_num=1",
        ],
        tmp_path,
    )
    assert resumed.returncode == 1 and "1 of 3 jobs failed" in resumed.stderr, resumed.stderr[-3000:]
    assert "deliberate failure of job 1" in (tmp_path / "second" / "failures.yaml").read_text()
    study = optuna.load_study(study_name="resume_test", storage=storage)
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    failed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 5 and len(failed) == 1
    assert all(set(trial.params) == {"model.beta", "model.lr"} for trial in complete)
    assert all(0.5 <= trial.params["model.beta"] <= 100 and 1e-4 <= trial.params["model.lr"] <= 1e-2 for trial in complete)
    assert all(math.isfinite(trial.value) for trial in complete)  # val/loss of each trial
    results = yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(trial.value for trial in complete))


# ------------------------------------------------------------------- run directories
def test_run_directories_started_in_the_same_second_differ(tmp_path: Path) -> None:
    def directories() -> tuple[str, str]:
        cfg = compose_config("train", QUICK, tmp_path)
        return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)

    first, second = directories(), directories()  # well within one second
    assert first[0] != second[0] and first[1] != second[1]
    assert Path(first[0]).parent == Path(second[0]).parent  # both under logs/train/runs/


def test_checkpoint_resolution(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_checkpoint(None, False, tmp_path) is None
    assert resolve_checkpoint("last", False, tmp_path) is None  # first attempt of a requeueable job: fresh start
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):  # read by the safe reader first
        resolve_checkpoint("last", False, tmp_path)
    torch.save({"state_dict": {}, "hyper_parameters": {"n_neurons": 2, "n_train": 3}, "epoch": 612, "global_step": 9}, last)
    with caplog.at_level(logging.INFO, logger="facrnn.runs.resume"):
        assert resolve_checkpoint("last", False, tmp_path) == str(last)
    assert f"resuming from {last} at epoch 612 (global step 9)" in caplog.text
    assert resolve_checkpoint(None, True, tmp_path) == str(last)
    assert resolve_checkpoint(str(last), False, tmp_path) == str(last)
    copies_last = tmp_path / "checkpoints" / "copies" / "last.ckpt"
    assert resolve_checkpoint("last", False, tmp_path, copies_last) is None  # batched copies resume from their own
    # a missing ckpt_path file and resume=true with another ckpt_path are config errors, reported by
    # check_train_config before this runs (tests/training/test_robustness_training.py)


def test_resumed_run_reuses_the_wandb_run_id(tmp_path: Path) -> None:
    cfg = compose_config("train", [*TINY_DATA, "logger=default", "resume=true"], tmp_path)
    assert prepare_resume(cfg, tmp_path) is None
    run_id = cfg.logger.wandb.id
    assert cfg.logger.wandb.resume == "allow" and (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    again = compose_config("train", [*TINY_DATA, "logger=default", "resume=true"], tmp_path)
    prepare_resume(again, tmp_path)
    assert again.logger.wandb.id == run_id


# -------------------------------------------------------------------- kill and resume
def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = dict(checkpoint["state_dict"])
    for index, entry in checkpoint["optimizer_states"][0]["state"].items():
        state.update({f"optimizer.{index}.{key}": value for key, value in entry.items()})
    state["epoch"] = torch.tensor(checkpoint["epoch"])
    return state


@pytest.mark.parametrize("batches_per_call, kill_batch", [(1, 2), (0, 0)], ids=["per-batch", "whole-epoch"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path, data_cache: str, batches_per_call: int, kill_batch: int
) -> None:
    # 6 epochs of 4 batches (one training_step per batch, or one per epoch), last.ckpt
    # written at every 2nd epoch's validation.
    settings = [
        *QUICK,
        "logger=csv",
        f"paths.cache_dir={data_cache}",
        "trainer.max_epochs=6",
        "trainer.check_val_every_n_epoch=2",
        "evaluate=false",
        "seed=5",
        f"batches_per_call={batches_per_call}",
    ]
    killed_dir = tmp_path / "killed"
    killed = run_train(
        [
            *settings,
            f"hydra.run.dir={killed_dir}",
            "+callbacks.kill._target_=tests.helpers.callbacks.KillProcess",
            "+callbacks.kill.epoch=4",
            f"+callbacks.kill.batch={kill_batch}",
        ],
        tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # killed mid-way through epoch 5
    assert torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3

    train(compose_config("train", [*settings, "resume=true"], tmp_path, run_name="killed"))
    train(compose_config("train", settings, tmp_path, run_name="uninterrupted"))
    resumed, uninterrupted = final_state(killed_dir), final_state(tmp_path / "uninterrupted")
    assert int(resumed["epoch"]) == 5
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:  # bitwise: weights, Adam moments and step counts
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------ DDP
def test_ddp_sampler_shards_each_global_batch() -> None:
    single = BatchIndexSampler(10, 4, shuffle=True, seed=7, rank=0, world_size=1)
    shards = [BatchIndexSampler(10, 4, shuffle=True, seed=7, rank=rank, world_size=2) for rank in range(2)]
    for epoch in (0, 1):
        for sampler in shards:
            sampler.set_epoch(epoch)
        batches = [list(sampler) for sampler in shards]
        assert [len(batch) for batch in batches[0]] == [2, 2, 1] == [len(batch) for batch in batches[1]]
        for part0, part1 in zip(*batches):
            assert not set(part0.tolist()) & set(part1.tolist())
        seen = torch.cat([torch.cat(parts) for parts in batches])
        assert sorted(seen.tolist()) == list(range(10))  # 10 = 5 batches of 2 per rank: nothing dropped
        generator = torch.Generator().manual_seed(7 + epoch)
        expected = torch.randperm(10, generator=generator).split(4)
        for index, global_batch in enumerate(expected):
            share = len(global_batch) // 2
            assert torch.equal(batches[0][index], global_batch[:share]) and torch.equal(
                batches[1][index], global_batch[share : 2 * share]
            )
    assert list(single)  # one process: unchanged behaviour (global RNG)
    with pytest.raises(ValueError, match="datamodule.batch_size=3: under distributed training"):
        list(BatchIndexSampler(10, 3, shuffle=False, rank=0, world_size=2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gathered_gradient_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One DDP rank: half of the batch, PC over the gathered batch, gradients averaged like DDP."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        module, batch, noise = _gathered_gradient_problem()
        share = batch["x"].shape[0] // world_size
        rows = slice(rank * share, (rank + 1) * share)
        module.model.sample = lambda means: means + module.width * noise[rows]
        terms = module.loss_terms({key: value[rows] for key, value in batch.items()})
        terms["loss"].backward()
        for parameter in module.parameters():
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size
        if rank == 0:
            gradients = {name: parameter.grad for name, parameter in module.named_parameters()}
            torch.save({"partial_corr": terms["partial_corr"].detach(), "gradients": gradients}, Path(out_dir) / "ddp.pt")
    finally:
        torch.distributed.destroy_process_group()


def _gathered_gradient_problem() -> tuple[FacRNNModule, dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    module = FacRNNModule(n_neurons=5, n_train=500, latent_dim=4, n_groups=2, beta=20.0)
    x = torch.randn(16, 5)
    batch = {"x": x, "encoder_input": x.clone()}
    noise = torch.randn(16, 4)
    return module, batch, noise


def test_ddp_partial_correlation_sees_the_global_batch(tmp_path: Path) -> None:
    """Two gloo processes with half a batch each give the single-device PC value and gradient."""
    # fork: the workers need no fresh interpreter (nothing distributed is set up in this one)
    mp.start_processes(
        _gathered_gradient_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)

    module, batch, noise = _gathered_gradient_problem()
    module.model.sample = lambda means: means + module.width * noise
    terms = module.loss_terms(batch)
    terms["loss"].backward()
    torch.testing.assert_close(distributed["partial_corr"], terms["partial_corr"].detach(), rtol=1e-5, atol=1e-6)
    assert float(terms["partial_corr"].detach()) != 0.0
    for name, parameter in module.named_parameters():
        torch.testing.assert_close(distributed["gradients"][name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_fit_on_two_cpu_processes(tmp_path: Path, data_cache: str) -> None:
    run_dir, dump_dir = tmp_path / "ddp_run", tmp_path / "ranks"
    result = run_train(
        [
            *QUICK,
            "logger=csv",
            f"paths.cache_dir={data_cache}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=1",
            "evaluate=false",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.callbacks.SaveParametersPerRank",
            f"+callbacks.dump.directory={dump_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(dump_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    torch.testing.assert_close(ranks[0]["parameters"], ranks[1]["parameters"], rtol=0, atol=0)  # consistent across ranks
    # every step the two ranks trained on disjoint halves of one global batch of 64
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == 2 * 3  # 180 training bins: 3 global batches
    for part0, part1 in zip(ranks[0]["samples"], ranks[1]["samples"]):
        assert part0.shape[0] == part1.shape[0] and part0.shape[0] <= 32
        assert not {tuple(row) for row in part0.tolist()} & {tuple(row) for row in part1.tolist()}
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1
    trained = torch.cat([value.flatten() for key, value in checkpoint["state_dict"].items() if key.startswith("model.")])
    torch.testing.assert_close(trained, ranks[0]["parameters"], rtol=0, atol=0)
    assert OmegaConf.load(run_dir / "config.yaml").trainer.strategy == "ddp"


# ------------------------------------------------------------------- documented commands
@pytest.mark.parametrize(
    "overrides",
    [
        [
            "launcher=slurm",
            "trainer=gpu",
            "experiment=synthetic_paper",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=120",
            "+hydra.launcher.additional_parameters.account=my_lab",
        ],
        [
            "hparams_search=facrnn_optuna",
            "experiment=synthetic_paper",
            "hydra.sweeper.n_trials=40",
            "hydra.sweeper.n_jobs=8",
            "launcher=slurm",
            "trainer=gpu",
            "hydra.launcher.partition=gpu",
        ],
        [
            "launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "experiment=synthetic_paper",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.partition=gpu",
        ],
    ],
    ids=["slurm_array", "beta_search", "ddp_4_gpus"],
)
def test_documented_cluster_commands_compose(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_config("train", overrides, tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0 and cfg.resume is True
    assert str(launcher.submitit_folder).startswith(str(cfg.hydra.sweep.dir))
    if "hparams_search=facrnn_optuna" in overrides:
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.n_jobs == 8
        assert cfg.optimized_metric == "val/neg_elbo" and set(cfg.hydra.sweeper.params) == {"model.beta", "model.lr"}
    if "trainer=ddp" in overrides:
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == launcher.tasks_per_node == 4
        assert cfg.trainer.use_distributed_sampler is False
    if "trainer=gpu" in overrides and "hparams_search=facrnn_optuna" not in overrides:
        assert dict(launcher.additional_parameters) == {"account": "my_lab"}
