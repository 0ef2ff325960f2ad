"""Train a model: ``python train.py [experiment=...] [model=...] [key=value ...]``.

See README.md and ``conf/train.yaml``.
"""

import hydra
from omegaconf import DictConfig

from facrnn.pipeline import train
from facrnn.report import format_metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    metrics = result.get("metrics")
    if metrics:
        print(format_metrics(metrics, title=f"{cfg.model.name} held-out metrics"))
    print(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")
    return metrics.get("group_latent_r2") if metrics else None


if __name__ == "__main__":
    main()
