"""Fixtures for the tests against a real one-node SLURM (``tests/slurm/start_cluster.sh``).

Every test here is marked ``slurm`` and skips, with the reason shown by ``-ra``, when no
cluster answers: ``sinfo`` missing, or no node idle. ``SLURM_CONF`` is taken from the
environment, else ``$FACRNN_SLURM_DIR/slurm.conf`` (``/tmp/facrnn-slurm/slurm.conf``), the file
the start script writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

STATE_DIR = Path(os.environ.get("FACRNN_SLURM_DIR", "/tmp/facrnn-slurm"))
START_HINT = "start one with tests/slurm/start_cluster.sh (root, apt-get)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs a running SLURM cluster (tests/slurm/start_cluster.sh; skipped without one)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.slurm)


def slurm_conf() -> str | None:
    """The ``slurm.conf`` the client commands should read (None: let SLURM find its own)."""
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    candidate = STATE_DIR / "slurm.conf"
    return str(candidate) if candidate.is_file() else None


def cluster_unavailable_reason() -> str | None:
    """Why no SLURM cluster can run jobs here, or None when a node is idle."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"no SLURM cluster: sinfo/sbatch not on PATH; {START_HINT}"
    conf = slurm_conf()
    if conf is None and not Path("/etc/slurm/slurm.conf").is_file():
        return (
            f"no SLURM cluster: no slurm.conf (SLURM_CONF unset, no {STATE_DIR / 'slurm.conf'} "
            f"or /etc/slurm/slurm.conf); {START_HINT}"
        )
    if conf is not None and not Path(conf).is_file():
        return f"no SLURM cluster: SLURM_CONF={conf} is not a file; {START_HINT}"
    env = {**os.environ, **({"SLURM_CONF": conf} if conf else {})}
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], check=False, env=env, capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return f"no SLURM cluster: sinfo did not answer in 20 s; {START_HINT}"
    if states.returncode != 0:
        return f"no SLURM cluster: sinfo failed ({states.stderr.strip().splitlines()[-1:] or ''}); {START_HINT}"
    if not any(state.strip().rstrip("*~#") in ("idle", "mixed") for state in states.stdout.splitlines()):
        return f"no SLURM cluster: no idle node (sinfo: {states.stdout.split()}); {START_HINT}"
    return None


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """Environment for commands that talk to the cluster (``SLURM_CONF`` set); skips without one."""
    reason = cluster_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    conf = slurm_conf()
    return {"SLURM_CONF": conf} if conf else {}


class RequeueReleaser:
    """Makes requeued jobs eligible at once while a test runs.

    slurmctld gives a requeued job a begin time about two minutes ahead (``squeue`` reason
    ``BeginTime``); on a real cluster that is part of the cost of a pre-emption, here it would
    only make the tests slow. Every half second the pending jobs waiting for their begin time
    get ``scontrol update JobId=ID StartTime=now``.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.released: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pending = subprocess.run(
                ["squeue", "-h", "-r", "-t", "PD", "-o", "%i|%r"], check=False, env=self.env, capture_output=True, text=True
            )
            for line in pending.stdout.splitlines():
                job_id, _, reason = line.partition("|")
                if reason.strip() == "BeginTime":
                    subprocess.run(
                        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                        check=False,
                        env=self.env,
                        capture_output=True,
                    )
                    self.released.append(job_id)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def release_requeued(slurm_env: dict[str, str]) -> Iterator[RequeueReleaser]:
    """A :class:`RequeueReleaser` running for the duration of the test."""
    with RequeueReleaser(slurm_env) as releaser:
        yield releaser
