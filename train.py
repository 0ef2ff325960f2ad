"""Train a model: ``python train.py [experiment=...] [model=...] [key=value ...]``.

See README.md, docs/scale.md and ``conf/train.yaml``.
"""

import gc

if __name__ == "__main__":
    # no cyclic collections while the modules below load: ~0.8 s of full collections over their
    # ~400,000 objects (benchmarks/README.md); frozen_garbage_collection() turns them back on
    gc.disable()

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from facrnn.cli.errors import check_command_line, check_composition, exit_on_error
from facrnn.cli.process import frozen_garbage_collection
from facrnn.cli.report import evaluation_title, format_metrics
from facrnn.runs.pipeline import train
from facrnn.runs.sweeps import objective_value, run_job_isolated


def train_and_report(cfg: DictConfig) -> float | None:
    """Train (and evaluate), print the metrics table, return ``cfg.optimized_metric``'s value."""
    result = train(cfg)
    metrics = result.get("metrics")
    if metrics:
        title = evaluation_title(result["method"], result.get("provenance") or {})
        if result.get("replica_metrics"):  # model.replicas: the mean; each replica's own in its metrics.json
            title += f"; mean of {len(result['replica_metrics'])} replicas"
        print(format_metrics(metrics, title=title))
    print(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")
    return objective_value(cfg.get("optimized_metric"), result)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # in a multirun a failing job is recorded and the sweep goes on (facrnn/runs/sweeps.py);
    # otherwise the project's own errors end the run as `error: <message>`, exit status 1
    with exit_on_error():
        return run_job_isolated(train_and_report, cfg)


if __name__ == "__main__":
    # the imported modules (and, at exit, everything) out of the garbage collector's walks
    with frozen_garbage_collection():
        with exit_on_error():  # an override Hydra cannot parse, or a value a schema refuses: one line
            check_command_line(sys.argv[1:])
            check_composition(sys.argv[1:], "train", Path(__file__).parent / "conf")
        main()
