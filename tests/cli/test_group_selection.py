"""facrnn.cli.group_selection: a run's partial correlation under its own grouping."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from facrnn.cli.group_selection import own_partial_corr
from facrnn.core.partial_correlation import partial_correlation_eval
from facrnn.runs.checkpoints import load_checkpoint
from facrnn.runs.pipeline import instantiate_datamodule, train
from facrnn.runs.run_dir import RunDir
from tests.helpers import TINY_DATA, compose_config


def test_own_partial_corr_is_the_exact_estimate_on_short_recordings_and_cached(tmp_path: Path) -> None:
    cfg = compose_config("train", [*TINY_DATA, "threads=1", "logger=none", "trainer.max_epochs=2", "evaluate=false"], tmp_path)
    run_dir = Path(train(cfg)["run_dir"])
    value = own_partial_corr(run_dir, n_mc=3, seed=1)
    module = load_checkpoint(RunDir(run_dir).find_checkpoint("best"))
    datamodule = instantiate_datamodule(cfg.datamodule)
    with torch.no_grad():
        means = module.model.encode(datamodule.split_tensors("test")["encoder_input"]).double()
    assert len(means) <= 4000  # below the budget's threshold: the exact estimator, bit for bit
    assert value == partial_correlation_eval(means, module.model.width, module.group_sizes, 3, 1)
    cached = json.loads(RunDir(run_dir).own_partial_corr_file.read_text())["partial_corr_own"]
    assert cached == value and own_partial_corr(run_dir, n_mc=3, seed=1) == value
