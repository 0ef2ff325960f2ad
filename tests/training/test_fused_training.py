"""``model.gradients``: the pipeline trains with the hand-derived step where it applies, and
that training agrees with the autograd reference path to round-off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facrnn.runs.pipeline import train
from tests.helpers import TINY_DATA, compose_config

QUICK = [*TINY_DATA, "threads=1", "logger=csv", "evaluate=false", "trainer.max_epochs=3", "seed=2"]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def trained_weights(tmp_path: Path, data_cache: str, name: str, *overrides: str) -> dict[str, torch.Tensor]:
    cfg = compose_config("train", [*QUICK, f"paths.cache_dir={data_cache}", *overrides], tmp_path, name)
    train(cfg)
    checkpoints = tmp_path / name / "checkpoints"
    path = checkpoints / "copies" / "last.ckpt" if (checkpoints / "copies").is_dir() else checkpoints / "last.ckpt"
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "overrides",
    [(), ("model.replicas=2",), ("model.likelihood=poisson", "model.link=softplus", "model.alpha=0.5")],
    ids=["plain", "replicas", "poisson-overlap"],
)
def test_fused_training_is_used_and_agrees_with_autograd(tmp_path: Path, data_cache: str, overrides: tuple) -> None:
    fused = trained_weights(tmp_path, data_cache, "fused", *overrides)
    reference = trained_weights(tmp_path, data_cache, "autograd", *overrides, "model.gradients=autograd")
    assert fused.keys() == reference.keys()
    # other summation orders: the trajectories part by round-off only, so the fused path ran
    assert any(not torch.equal(fused[name], reference[name]) for name in fused)
    for name in fused:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)


def test_mlp_falls_back_to_autograd_bitwise(tmp_path: Path, data_cache: str) -> None:
    fused = trained_weights(tmp_path, data_cache, "fused", "model.encoder=mlp")
    reference = trained_weights(tmp_path, data_cache, "autograd", "model.encoder=mlp", "model.gradients=autograd")
    for name in fused:
        assert torch.equal(fused[name], reference[name]), name
