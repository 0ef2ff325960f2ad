"""Batched training beside a busy neighbour: wall time of ``python train.py`` with each
``threads`` setting, alone and next to a process that spins on one core.

Torch's intra-op threads spin-wait for each other: on a 2-core machine two threads beside
one busy process run many times slower than one thread. ``threads: null`` gives batched
copies only the cores that are free (facrnn/training/runtime.py ``choose_threads``). Each
repeat runs every setting alone and beside the neighbour, interleaved (the order alternates
from repeat to repeat), each a fresh ``train.py`` process (start-up included):

    python -m benchmarks.neighbour                                  # restarts=4, 300 epochs, threads 2 vs null
    python -m benchmarks.neighbour --repeats 3 --settings 1 2 null
    python -m benchmarks.neighbour --neighbour "python train.py experiment=synthetic_paper"  # a real neighbour

The chosen thread count is read from the run's ``train.log`` (``torch threads: N (why)``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_description, median, print_table

ROOT = Path(__file__).resolve().parents[1]
SPIN = f"{shlex.quote(sys.executable)} -c 'while True: pass'"
THREADS_LINE = re.compile(r"torch threads: (\d+) \((.*)\)")


def train_once(overrides: list[str], run_dir: Path, timeout: float) -> tuple[float, str]:
    """Wall seconds of one ``train.py`` process and the thread choice its log reports."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr[-2000:]}")
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else process.stderr
    match = THREADS_LINE.search(log)
    return wall, f"{match.group(1)} ({match.group(2)})" if match else "?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=4, help="model.restarts (batched copies)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["2", "null"], help="threads= values compared")
    parser.add_argument("--neighbour", default=SPIN, help="shell command of the busy neighbour")
    parser.add_argument("--experiment", default="synthetic_paper")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per training process")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="facrnn_neighbour_"))
    base = [
        f"experiment={args.experiment}",
        f"model.restarts={args.restarts}",
        f"trainer.max_epochs={args.epochs}",
        "evaluate=false",
        "logger=csv",
        *args.override,
    ]
    print(f"machine: {machine_description()}")
    print(f"config: {' '.join(base)}; neighbour: {args.neighbour}; runs in {workdir}", flush=True)
    train_once([*base, "trainer.max_epochs=1"], workdir / "warm", args.timeout)  # the data cache
    walls: dict[tuple[str, str], list[float]] = {}
    rows = []
    for repeat in range(args.repeats):
        for condition in ("alone", "beside neighbour"):
            neighbour = None
            if condition != "alone":
                neighbour = subprocess.Popen(args.neighbour, shell=True, cwd=ROOT, start_new_session=True)
                time.sleep(2.0)  # running (a real training neighbour: past its imports)
            try:
                settings = args.settings if repeat % 2 == 0 else args.settings[::-1]
                for setting in settings:
                    run_dir = workdir / f"r{repeat}_{condition.replace(' ', '_')}_threads{setting}"
                    load = os.getloadavg()[0]
                    wall, chosen = train_once([*base, f"threads={setting}"], run_dir, args.timeout)
                    walls.setdefault((condition, setting), []).append(wall)
                    rows.append([repeat, condition, f"threads={setting}", chosen, wall, load])
                    print(f"repeat {repeat}, {condition}, threads={setting}: {wall:.1f} s, threads {chosen}", flush=True)
            finally:
                if neighbour is not None:
                    os.killpg(neighbour.pid, 15)
                    neighbour.wait()
    print_table(["repeat", "condition", "setting", "torch threads (why)", "wall s", "load 1 min before"], rows)
    reference = args.settings[0]
    summary = []
    for condition in ("alone", "beside neighbour"):
        for setting in args.settings:
            wall = median(walls[(condition, setting)])
            ratios = [w / r for w, r in zip(walls[(condition, setting)], walls[(condition, reference)])]
            summary.append([condition, f"threads={setting}", wall, median(ratios)])
    print_table(
        ["condition", "setting", "median wall s", f"wall / threads={reference} (median of repeats)"],
        summary,
        title=f"neighbour: model.restarts={args.restarts}, {args.epochs} epochs, median of {args.repeats}",
    )


if __name__ == "__main__":
    main()
