"""Evaluate a training run: ``python evaluate.py run_dir=RUN [checkpoint=best|last|PATH]``.

Writes ``RUN/metrics.json`` and ``RUN/figures/*.png``. See ``conf/evaluate.yaml``.
"""

import hydra
import torch
from omegaconf import DictConfig

from facrnn.pipeline import evaluate_run
from facrnn.report import format_metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads))
    evaluation = evaluate_run(cfg.run_dir, cfg.checkpoint, cfg.split, cfg.n_mc, cfg.eval_seed, cfg.figures)
    print(format_metrics(evaluation.metrics, title=f"{cfg.split} metrics"))
    print(f"written: {cfg.run_dir}/metrics.json")


if __name__ == "__main__":
    main()
