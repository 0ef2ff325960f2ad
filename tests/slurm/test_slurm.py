"""Sweeps on a real one-node SLURM (``tests/slurm/start_cluster.sh``; docs/scale.md): a job
array, a task that fails, pre-emption (USR2) with requeue and bitwise resume, time limits
with requeues, and DDP as two srun tasks. Skipped when no cluster answers. CPU only, W&B offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from facrnn.runs.pipeline import train
from tests.helpers import ROOT, TINY_DATA, compose_config
from tests.runs.test_scale import _gathered_gradient_problem, final_state

QUICK = [*TINY_DATA, "threads=1", "logger=none"]
# what a task may take on this cluster: one CPU and 1 GB, no GPU
SLURM = [
    "launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
RESUME_LINE = re.compile(r"resuming from (\S+/checkpoints/last\.ckpt) at epoch (\d+)")


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One generated tiny data set shared by the runs of this module (``paths.cache_dir``)."""
    return str(tmp_path_factory.mktemp("slurm_data_cache"))


def start_sweep(args: list[str], root: Path, slurm_env: dict[str, str]) -> subprocess.Popen:
    """``train.py -m ARGS`` in ``root``; the array tasks import ``tests.*`` (PYTHONPATH) and log to W&B offline."""
    env = {
        **os.environ,
        **slurm_env,
        "FACRNN_ROOT": str(root),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(root / "sweep.out", "w") as out, open(root / "sweep.err", "w") as err:  # the child keeps its own copies
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "-m", *args], cwd=root, env=env, stdout=out, stderr=err
        )


def finish_sweep(process: subprocess.Popen, root: Path, timeout: float) -> tuple[int, str]:
    """Wait for the sweep (killing it after ``timeout`` s); its exit status and stderr."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the sweep did not end within {timeout} s; stderr tail: {(root / 'sweep.err').read_text()[-3000:]}")
    return process.returncode, (root / "sweep.err").read_text()


def run_sweep(args: list[str], root: Path, slurm_env: dict[str, str], timeout: float = 240) -> tuple[int, str]:
    return finish_sweep(start_sweep(args, root, slurm_env), root, timeout)


def task_logs(sweep_dir: Path) -> str:
    """Everything the array tasks wrote (submitit's stdout and stderr of every attempt)."""
    return "".join(path.read_text(errors="replace") for path in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear (sweep status {process.poll()})")
        time.sleep(0.2)


def submitted_job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the sweep's tasks (``JOB`` or ``ARRAY_TASK``): submitit's folders that hold task logs.

    An array also has a folder named after the array itself, with only its submission script.
    """
    folders = (path for path in (sweep_dir / ".submitit").iterdir() if path.is_dir())
    return sorted(folder.name for folder in folders if any(folder.glob("*_log.out")))


# ------------------------------------------------------------------------ job array
@pytest.fixture(scope="module")
def two_by_two(
    tmp_path_factory: pytest.TempPathFactory, slurm_env: dict[str, str], data_cache: str
) -> tuple[Path, int, str, float]:
    root = tmp_path_factory.mktemp("two_by_two")
    sweep_dir = root / "sweep"
    start = time.monotonic()
    status, stderr = run_sweep(
        [
            *QUICK,
            "debug=fdr",
            f"paths.cache_dir={data_cache}",
            "model=lrrnn,facrnn",
            "seed=0,1",
            *SLURM,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        root,
        slurm_env,
    )
    return sweep_dir, status, stderr, time.monotonic() - start


def test_two_by_two_sweep_runs_as_a_job_array(two_by_two: tuple[Path, int, str, float]) -> None:
    sweep_dir, status, stderr, _ = two_by_two
    assert status == 0, stderr[-3000:]
    assert sorted(path.parent.name for path in sweep_dir.glob("*/config.yaml")) == ["0", "1", "2", "3"]
    assert not (sweep_dir / "failures.yaml").exists() and not list(sweep_dir.glob("*/failure.yaml"))
    task_ids = submitted_job_ids(sweep_dir)
    assert len(task_ids) == 4 and len({task_id.split("_")[0] for task_id in task_ids}) == 1  # one array, four tasks
    assert "Traceback" not in stderr


def test_sacct_without_accounting_is_one_line(two_by_two: tuple[Path, int, str, float]) -> None:
    _, _, stderr, _ = two_by_two
    sacct_lines = [line for line in stderr.splitlines() if "sacct" in line or "accounting storage is disabled" in line]
    assert len(sacct_lines) <= 1, "\n".join(sacct_lines[:10])


def test_task_with_a_bad_data_path_is_reported_failed(tmp_path: Path, slurm_env: dict[str, str]) -> None:
    sweep_dir, missing = tmp_path / "sweep", tmp_path / "no_such_recording.npz"
    status, stderr = run_sweep(
        [
            "datamodule=from_file",
            f"datamodule.path={missing}",
            "threads=1",
            "logger=none",
            "seed=0,1",
            *SLURM,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
        slurm_env,
    )
    assert status == 1, stderr[-3000:]
    assert "2 of 2 jobs failed" in stderr and str(missing) in stderr
    summary = yaml.safe_load((sweep_dir / "failures.yaml").read_text())
    assert summary["n_jobs"] == 2 and summary["n_failed"] == 2
    assert all(str(missing) in record["error"] for record in summary["failed"])


# ------------------------------------------------------------------------ pre-emption
PREEMPTED = [
    *TINY_DATA,
    "threads=1",
    "trainer.max_epochs=160",
    "trainer.check_val_every_n_epoch=50",
    "evaluate=false",
    "seed=5",
]
SIGNAL_AFTER_EPOCH = 60  # the last validation before it is at epoch 49


def test_preempted_task_resumes_from_its_signal_time_checkpoint_bitwise(
    tmp_path: Path, slurm_env: dict[str, str], data_cache: str, release_requeued: object
) -> None:
    sweep_dir, mark = tmp_path / "sweep", tmp_path / "epoch_mark"
    settings = [*PREEMPTED, f"paths.cache_dir={data_cache}"]
    sweep = start_sweep(
        [
            *settings,
            "logger=default",
            "+callbacks.mark._target_=tests.helpers.callbacks.MarkEpoch",
            f"+callbacks.mark.path={mark}",
            f"+callbacks.mark.epoch={SIGNAL_AFTER_EPOCH}",
            *SLURM,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
        slurm_env,
    )
    wait_for(mark, sweep, timeout=120)
    (job_id,) = submitted_job_ids(sweep_dir)
    subprocess.run(["scancel", "--signal=USR2", "--full", job_id], env={**os.environ, **slurm_env}, check=True)
    status, stderr = finish_sweep(sweep, tmp_path, timeout=240)
    logs = task_logs(sweep_dir)
    assert status == 0, stderr[-3000:] + logs[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in logs, logs[-5000:]
    assert not (sweep_dir / "failures.yaml").exists()

    saved = re.findall(r"SIGUSR2 at epoch (\d+) \(step \d+\): saved (\S+)", logs)
    (resumed,) = RESUME_LINE.findall(logs)  # one resume, named with its checkpoint and epoch
    assert len(saved) == 1 and saved[0][1] == resumed[0] == str(sweep_dir / "0" / "checkpoints" / "last.ckpt")
    assert int(resumed[1]) == int(saved[0][0]) + 1 > SIGNAL_AFTER_EPOCH + 1  # not the last validation's checkpoint
    assert "SLURM auto-requeueing enabled" not in logs  # one requeue mechanism: submitit's

    # W&B: one run id, continued by the requeued attempt
    run_id = (sweep_dir / "0" / "wandb_id.txt").read_text().strip()
    offline_runs = sorted((sweep_dir / "0" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(path.name.endswith(run_id) for path in offline_runs)

    train(compose_config("train", [*settings, "logger=csv"], tmp_path, run_name="uninterrupted"))
    resumed_state, uninterrupted = final_state(sweep_dir / "0"), final_state(tmp_path / "uninterrupted")
    assert int(resumed_state["epoch"]) == 159 and resumed_state.keys() == uninterrupted.keys()
    for name in uninterrupted:  # bitwise: weights, Adam moments and step counts
        torch.testing.assert_close(resumed_state[name], uninterrupted[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------ time limits
# One-minute attempts; SLURM sends USR2 about 20-40 s after a task starts (signal_delay_s=20 and
# slurmctld's time-limit check every ~30 s), and a task spends ~10 s starting up, so an attempt
# trains for 10-30 s. 0.5 s per epoch makes the length of a task its epoch count.
TIME_LIMITED = [
    *QUICK,
    "trainer.check_val_every_n_epoch=10",
    "evaluate=false",
    "+callbacks.slow._target_=tests.slurm.callbacks.SleepPerEpoch",
    "+callbacks.slow.seconds=0.5",
    *SLURM,
    "hydra.launcher.timeout_min=1",
    "hydra.launcher.signal_delay_s=20",
]


def test_time_limit_requeues_until_done_and_reports_when_exhausted(
    tmp_path: Path, slurm_env: dict[str, str], data_cache: str, release_requeued: object
) -> None:
    """Two sweeps at once: one task needing ~40 s of training (more than one attempt gives)
    finishes through requeues (max_num_timeout=3); one that cannot finish with
    max_num_timeout=0 fails after its first time-out with a message naming the limit."""
    finishing, exhausted = tmp_path / "finishing", tmp_path / "exhausted"
    finishing.mkdir(), exhausted.mkdir()
    sweeps = [
        start_sweep(
            [
                *TIME_LIMITED,
                f"paths.cache_dir={data_cache}",
                "trainer.max_epochs=80",
                "seed=0",
                "hydra.launcher.max_num_timeout=3",
                f"hydra.sweep.dir={finishing / 'sweep'}",
            ],
            finishing,
            slurm_env,
        ),
        start_sweep(
            [
                *TIME_LIMITED,
                f"paths.cache_dir={data_cache}",
                "trainer.max_epochs=2000",
                "seed=0",
                "hydra.launcher.max_num_timeout=0",
                f"hydra.sweep.dir={exhausted / 'sweep'}",
            ],
            exhausted,
            slurm_env,
        ),
    ]
    (status_finishing, stderr_finishing), (status_exhausted, stderr_exhausted) = (
        finish_sweep(sweep, root, timeout=300) for sweep, root in zip(sweeps, (finishing, exhausted))
    )
    logs = task_logs(finishing / "sweep")
    assert status_finishing == 0, stderr_finishing[-3000:] + logs[-3000:]
    assert torch.load(finishing / "sweep" / "0" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 79
    assert len(RESUME_LINE.findall(logs)) >= 1 and "Traceback" not in stderr_finishing + logs

    assert status_exhausted == 1, stderr_exhausted[-3000:]
    (failed,) = yaml.safe_load((exhausted / "sweep" / "failures.yaml").read_text())["failed"]
    assert "max_num_timeout=0" in failed["error"] and "last.ckpt" in failed["error"], failed["error"]


# ------------------------------------------------------------------------------ DDP
def test_ddp_as_two_srun_tasks_matches_single_device(tmp_path: Path, slurm_env: dict[str, str], data_cache: str) -> None:
    sweep_dir, probe, dump_dir = tmp_path / "sweep", tmp_path / "probe.pt", tmp_path / "ranks"
    status, stderr = run_sweep(
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
            "seed=0",
            "+callbacks.probe._target_=tests.slurm.callbacks.DistributedPCProbe",
            f"+callbacks.probe.path={probe}",
            "+callbacks.dump._target_=tests.helpers.callbacks.SaveParametersPerRank",
            f"+callbacks.dump.directory={dump_dir}",
            *SLURM,
            "hydra.launcher.tasks_per_node=2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
        slurm_env,
    )
    assert status == 0, stderr[-3000:] + task_logs(sweep_dir)[-3000:]
    distributed = torch.load(probe, weights_only=True)
    assert distributed["world_size"] == 2
    module, batch, noise = _gathered_gradient_problem()
    module.model.sample = lambda means: means + module.width * noise
    terms = module.loss_terms(batch)
    terms["loss"].backward()
    torch.testing.assert_close(distributed["partial_corr"], terms["partial_corr"].detach(), rtol=1e-5, atol=1e-6)
    for name, parameter in module.named_parameters():
        torch.testing.assert_close(distributed["gradients"][name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the fit itself: two ranks (one per srun task), identical parameters, disjoint halves of every batch
    ranks = [torch.load(dump_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    torch.testing.assert_close(ranks[0]["parameters"], ranks[1]["parameters"], rtol=0, atol=0)
    for part0, part1 in zip(ranks[0]["samples"], ranks[1]["samples"]):
        assert not {tuple(row) for row in part0.tolist()} & {tuple(row) for row in part1.tolist()}
    assert len(list((sweep_dir / ".submitit").glob("*/*_1_log.out"))) == 1  # submitit's log of the second srun task
