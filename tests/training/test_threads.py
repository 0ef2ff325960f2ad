"""``threads: null``: the torch threads a run gets never oversubscribe the cores it may use
(``choose_threads`` is pure; the readers of the environment, ``/proc/stat`` and the cgroup
are tested on fakes)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

from facrnn.training import runtime
from facrnn.training.runtime import (
    ThreadBudget,
    choose_threads,
    concurrent_hydra_jobs,
    cpu_times,
    idle_cores,
    read_thread_budget,
    slurm_task_cpus,
    training_threads,
)
from tests.helpers import compose_config


def test_one_model_gets_one_thread_whatever_is_free() -> None:
    choice = choose_threads(None, 1, ThreadBudget(cores=16, idle_cores=16.0))
    assert choice.threads == 1
    assert "one model" in choice.reason


def test_batched_copies_on_an_idle_machine_get_every_core() -> None:
    choice = choose_threads(None, 4, ThreadBudget(cores=2, idle_cores=1.97))
    assert (choice.threads, choice.reason) == (
        2,
        "4 batched copies; 2 cores in the affinity mask, 2.0 of them idle over the sample",
    )
    assert choose_threads(None, 4, ThreadBudget(cores=2)).threads == 2  # not measured: the mask


def test_a_busy_neighbour_leaves_one_core() -> None:
    """Two cores, one of them taken by another process: one thread, not two spinning against it."""
    choice = choose_threads(None, 4, ThreadBudget(cores=2, idle_cores=1.02))
    assert choice.threads == 1
    assert "1.0 of them idle" in choice.reason


@pytest.mark.parametrize(("idle", "threads"), [(0.0, 1), (0.6, 1), (1.75, 1), (1.85, 2), (7.3, 7)])
def test_a_core_is_free_when_it_is_mostly_idle(idle: float, threads: int) -> None:
    assert choose_threads(None, 10, ThreadBudget(cores=8, idle_cores=idle)).threads == threads


def test_explicit_threads_win_even_on_a_busy_machine() -> None:
    choice = choose_threads(3, 4, ThreadBudget(cores=2, idle_cores=0.0, omp_threads=1, slurm_cpus=1))
    assert (choice.threads, choice.reason) == (3, "threads=3 configured")
    assert choose_threads(2, 1, ThreadBudget(cores=2)).threads == 2


def test_slurm_allocation_caps_the_threads() -> None:
    choice = choose_threads(None, 4, ThreadBudget(cores=64, idle_cores=60.0, slurm_cpus=4))
    assert choice.threads == 4
    assert "SLURM allocates 4 CPUs" in choice.reason


@pytest.mark.parametrize(
    ("environ", "cpus"),
    [
        ({}, None),
        ({"SLURM_CPUS_PER_TASK": "6", "SLURM_CPUS_ON_NODE": "32"}, 6),
        ({"SLURM_CPUS_ON_NODE": "16", "SLURM_NTASKS_PER_NODE": "4"}, 4),
        ({"SLURM_CPUS_ON_NODE": "8"}, 8),
        ({"SLURM_CPUS_PER_TASK": "junk"}, None),
    ],
)
def test_slurm_task_cpus(environ: dict[str, str], cpus: int | None) -> None:
    assert slurm_task_cpus(environ) == cpus


def test_omp_num_threads_caps_the_threads() -> None:
    assert choose_threads(None, 4, ThreadBudget(cores=16, idle_cores=16.0, omp_threads=2)).threads == 2
    # a cap, not a request: one model still gets one thread
    assert choose_threads(None, 1, ThreadBudget(cores=16, omp_threads=8)).threads == 1


@pytest.mark.parametrize(("value", "threads"), [("2", 2), ("4,2", 4), ("0", None), ("many", None), (None, None)])
def test_omp_num_threads_is_read_from_the_environment(value: str | None, threads: int | None) -> None:
    environ = {} if value is None else {"OMP_NUM_THREADS": value}
    assert read_thread_budget(environ, sample_s=None).omp_threads == threads


def test_joblib_jobs_at_once_share_the_cores() -> None:
    assert choose_threads(None, 4, ThreadBudget(cores=2, concurrent_jobs=2)).threads == 1
    assert choose_threads(None, 4, ThreadBudget(cores=8, concurrent_jobs=2)).threads == 4
    assert choose_threads(None, 4, ThreadBudget(cores=8, loky_max_cpus=4, concurrent_jobs=2)).threads == 2


def test_cgroup_quota_caps_the_threads(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert runtime.cgroup_cpu_quota(cpu_max, (tmp_path / "no", tmp_path / "no")) == 1.5
    cpu_max.write_text("max 100000\n")
    assert runtime.cgroup_cpu_quota(cpu_max, (tmp_path / "no", tmp_path / "no")) is None
    assert choose_threads(None, 4, ThreadBudget(cores=8, cgroup_cpus=1.5)).threads == 1


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "affinity_cpus", lambda: {0, 1, 2, 3})
    environ = {"SLURM_CPUS_PER_TASK": "3", "LOKY_MAX_CPU_COUNT": "2", "OMP_NUM_THREADS": "1"}
    budget = read_thread_budget(environ, sample_s=None)
    assert (budget.cores, budget.idle_cores, budget.slurm_cpus, budget.loky_max_cpus, budget.omp_threads) == (
        4,
        None,
        3,
        2,
        1,
    )


STAT_BEFORE = """cpu  300 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 1 2 3
"""
# over the sample: cpu0 100 jiffies all busy (a neighbour), cpu1 100 jiffies of which 90 idle + 5 iowait
STAT_AFTER = """cpu  405 0 100 1095 5 0 0 0 0 0
cpu0 200 0 50 500 0 0 0 0 0 0
cpu1 205 0 50 590 5 0 0 0 0 0
intr 1 2 3
"""


def test_cpu_times_sums_the_cpus_of_the_mask() -> None:
    assert cpu_times(STAT_BEFORE, {0, 1}) == (1000.0, 1400.0)
    assert cpu_times(STAT_BEFORE, {1}) == (500.0, 750.0)
    assert cpu_times(STAT_BEFORE, {5}) == (0.0, 0.0)


class FakeStat:
    """A /proc/stat whose successive reads return successive texts."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)

    def read_text(self) -> str:
        return self.texts.pop(0)


def test_idle_cores_over_a_sample() -> None:
    idle = idle_cores({0, 1}, 0.0, FakeStat(STAT_BEFORE, STAT_AFTER))  # type: ignore[arg-type]
    assert idle == pytest.approx(2 * 95 / 200)  # 95 idle jiffies of 200 on 2 CPUs: 0.95 cores
    assert choose_threads(None, 4, ThreadBudget(cores=2, idle_cores=idle)).threads == 1
    assert idle_cores({0}, 0.0, FakeStat(STAT_BEFORE, STAT_BEFORE)) is None  # type: ignore[arg-type]
    assert idle_cores({0}, 0.0, Path("/nonexistent/stat")) is None


def test_joblib_multirun_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    instance = HydraConfig.instance()
    monkeypatch.setattr(instance, "cfg", instance.cfg)  # restored after the test
    cfg = compose_config("train", ["launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    assert concurrent_hydra_jobs(8) == 1  # composed, not a multirun
    with read_write(cfg.hydra), open_dict(cfg.hydra):  # set_config made it read-only
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    assert concurrent_hydra_jobs(8) == 2
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.launcher.n_jobs = -1
    HydraConfig().set_config(cfg)
    assert concurrent_hydra_jobs(8) == 8


def test_training_threads_logs_the_choice(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "read_thread_budget", lambda: ThreadBudget(cores=2, idle_cores=0.9))
    with caplog.at_level(logging.INFO, logger="facrnn.training.runtime"):
        assert training_threads(None, 4) == 1
        assert training_threads(None, 1) == 1
        assert training_threads(2, 4) == 2
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "torch threads: 1 (4 batched copies; 2 cores in the affinity mask, 0.9 of them idle over the sample "
        "(other processes are busy))",
        "torch threads: 1 (one model: its tensors are too small to split (threads=N overrides))",
        "torch threads: 2 (threads=2 configured)",
    ]
