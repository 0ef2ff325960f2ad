"""Evaluate a training run: ``python evaluate.py run_dir=RUN [checkpoint=best|last|PATH] [posthoc=ica|svd]``.

Writes ``RUN/metrics.json`` and ``RUN/figures/*.png``. See ``conf/evaluate.yaml``.
"""

import hydra
import torch
from omegaconf import DictConfig

from facrnn.cli.errors import exit_on_error
from facrnn.training.settings import check_evaluate_config
from facrnn.runs.pipeline import evaluate_run
from facrnn.cli.report import format_metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    # the project's own errors end the run as `error: <message>`, exit status 1
    with exit_on_error():
        evaluate(cfg)


def evaluate(cfg: DictConfig) -> None:
    """Score a run (or its post-hoc variant) and print the metrics table."""
    check_evaluate_config(cfg)
    torch.set_num_threads(int(cfg.threads))
    if cfg.get("posthoc"):
        from facrnn.evaluation.posthoc import POSTHOC_DIR
        from facrnn.runs.pipeline import evaluate_posthoc

        evaluation, _ = evaluate_posthoc(
            cfg.run_dir, str(cfg.posthoc), cfg.checkpoint, cfg.split, cfg.n_mc, cfg.eval_seed, cfg.figures,
            rollout_steps=int(cfg.get("rollout_steps", 20)), dynamics=bool(cfg.get("dynamics", True)),
        )
        print(format_metrics(evaluation.metrics, title=f"{cfg.split} metrics, post-hoc {cfg.posthoc}"))
        print(f"written: {cfg.run_dir}/{POSTHOC_DIR.format(kind=cfg.posthoc)}/metrics.json")
        return
    evaluation = evaluate_run(
        cfg.run_dir, cfg.checkpoint, cfg.split, cfg.n_mc, cfg.eval_seed, cfg.figures,
        rollout_steps=int(cfg.get("rollout_steps", 20)), dynamics=bool(cfg.get("dynamics", True)),
    )
    print(format_metrics(evaluation.metrics, title=f"{cfg.split} metrics"))
    print(f"written: {cfg.run_dir}/metrics.json")


if __name__ == "__main__":
    main()
