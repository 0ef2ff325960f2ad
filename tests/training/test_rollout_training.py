"""Multi-step training (``model.rollout_window``): windows, held-out bins, reduction to
one-step training, batched copies and the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.base import BatchIndexSampler
from datamodules.sampling import CopyIndexSampler
from datamodules.windows import WindowDataset
from facrnn.core.losses import gaussian_kl
from facrnn.core.partial_correlation import partial_correlation_minibatch
from facrnn.errors import ConfigError, DataError
from facrnn.runs.pipeline import instantiate_datamodule, train
from facrnn.training.module import FacRNNModule
from facrnn.training.settings import ModelSettings
from tests.helpers import TINY_DATA, compose_config

QUICK = [*TINY_DATA, "threads=1", "logger=csv", "trainer.check_val_every_n_epoch=2"]


def timeline(n_trials: int = 2, n_bins: int = 12, n_neurons: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_trials, n_bins, n_neurons, generator=generator)
    return {"x": x, "encoder_input": torch.tanh(torch.roll(x, 1, dims=1))}


def one_step_reference(module: FacRNNModule, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The one-step loss of the module as it was written before the rollout option (autograd)."""
    model = module.model
    means = model.encode(batch["encoder_input"])
    samples = model.sample(means)
    reconstruction = model.decode(samples, batch.get("external_input"))
    nll = model.observation.nll(batch["x"], reconstruction, model.log_noise_std)
    kl = gaussian_kl(means, module.width)
    partial_corr = partial_correlation_minibatch(
        samples, means, module.width, module.group_sizes, module.hparams.n_train, model.group_index
    )
    return {"loss": nll + kl + module.hparams.beta * partial_corr, "nll": nll, "kl": kl, "partial_corr": partial_corr}


def test_window_dataset_starts_at_training_bins_and_masks_the_rest() -> None:
    tensors = timeline()
    train_mask = torch.zeros(2, 12, dtype=torch.bool)
    train_mask[:, ::2] = True  # even bins train (even_odd)
    train_mask[1, 4] = False  # a validation bin
    windows = WindowDataset(tensors, train_mask, 4, "test.h5")
    # every training bin whose window fits inside its trial starts one
    assert len(windows) == int(train_mask[:, :9].sum())
    batch = windows[torch.arange(len(windows))]
    assert batch["x"].shape == (len(windows), 4, 4) and batch["target_mask"].shape == (len(windows), 4)
    for index in range(len(windows)):
        trial, time = int(windows.start_trial[index]), int(windows.start_time[index])
        assert train_mask[trial, time]
        torch.testing.assert_close(batch["x"][index], tensors["x"][trial, time : time + 4])
        assert batch["target_mask"][index].tolist() == train_mask[trial, time : time + 4].tolist()
    copies = windows[torch.tensor([[0, 1], [2, 3]])]
    assert copies["x"].shape == (2, 2, 4, 4)
    with pytest.raises(DataError, match=r"model.rollout_window=13: test.h5 has 12 bins per trial"):
        WindowDataset(tensors, train_mask, 13, "test.h5")


def window_batch(module: FacRNNModule, window: int, seed: int = 1) -> dict[str, torch.Tensor]:
    tensors = timeline(3, 20, module.hparams.n_neurons, seed)
    return WindowDataset(tensors, torch.ones(3, 20, dtype=torch.bool), window, "t")[torch.arange(0, 36, 3)]


def module(**overrides: object) -> FacRNNModule:
    torch.manual_seed(0)
    settings = {"n_neurons": 4, "n_train": 200, "latent_dim": 4, "n_groups": 2, **overrides}
    return FacRNNModule(**settings).double()


def test_one_bin_windows_are_one_step_training() -> None:
    rollout = module(rollout_window=1)
    batch = {key: value.double() if value.is_floating_point() else value for key, value in window_batch(rollout, 1).items()}
    torch.manual_seed(5)
    terms = rollout.loss_terms(batch)
    bins = {key: batch[key][:, 0] for key in ("x", "encoder_input")}
    torch.manual_seed(5)
    reference = one_step_reference(rollout, bins)
    for name, value in reference.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-6, atol=1e-6)


def test_forcing_every_bin_gives_the_one_step_terms_of_the_window_bins() -> None:
    rollout = module(rollout_window=8, rollout_interval=1)
    batch = {key: value.double() if value.is_floating_point() else value for key, value in window_batch(rollout, 8).items()}
    torch.manual_seed(7)
    terms = rollout.loss_terms(batch)
    flat = {key: batch[key].reshape(-1, 4) for key in ("x", "encoder_input")}
    torch.manual_seed(7)  # the same posterior noise, drawn for the same bins in the same order
    model = rollout.model
    means = model.encode(flat["encoder_input"])
    samples = model.sample(means)
    nll = model.observation.nll(flat["x"], model.decode(samples), model.log_noise_std)
    kl = gaussian_kl(means, rollout.width)
    starts = slice(None, None, 8)
    partial_corr = partial_correlation_minibatch(
        samples[starts], means[starts], rollout.width, rollout.group_sizes, 200, model.group_index
    )
    torch.testing.assert_close(terms["nll"], nll, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["kl"], kl, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["partial_corr"], partial_corr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loss"], nll + kl + 20.0 * partial_corr, rtol=1e-6, atol=1e-6)
    # free running changes the NLL (the test has teeth)
    free = module(rollout_window=8)
    torch.manual_seed(7)
    assert abs(float(free.loss_terms(batch)["nll"].detach()) - float(nll.detach())) > 1e-3


def test_held_out_bins_of_a_window_never_enter_the_loss() -> None:
    rollout = module(rollout_window=6)
    tensors = timeline(2, 16, 4, 3)
    train_mask = torch.zeros(2, 16, dtype=torch.bool)
    train_mask[:, ::2] = True
    batch = WindowDataset(tensors, train_mask, 6, "t")[torch.arange(8)]
    batch = {key: value.double() if value.is_floating_point() else value for key, value in batch.items()}
    torch.manual_seed(3)
    terms = rollout.loss_terms(batch)
    changed = dict(batch)
    changed["x"] = torch.where(batch["target_mask"].unsqueeze(-1), batch["x"], torch.full_like(batch["x"], 1e3))
    torch.manual_seed(3)
    again = rollout.loss_terms(changed)
    for name in ("loss", "nll", "kl", "partial_corr"):
        assert torch.equal(terms[name], again[name]), name


def test_batched_copies_compute_each_copys_rollout_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    copies = module(rollout_window=5, rollout_interval=2, rollout_forcing=0.2, replicas=2, seed=4)
    batch = {key: value.double() if value.is_floating_point() else value for key, value in window_batch(copies, 5).items()}
    monkeypatch.setattr(type(copies.model), "sample", lambda self, means: means)  # no noise: comparable
    terms = copies.loss_terms(batch)
    for index in range(2):
        alone = module(rollout_window=5, rollout_interval=2, rollout_forcing=0.2)
        alone.model.load_state_dict(copies.model.copy_state(index))
        monkeypatch.setattr(type(alone.model), "sample", lambda self, means: means)
        expected = alone.loss_terms(batch)
        for name in ("loss", "nll", "kl", "partial_corr"):
            torch.testing.assert_close(terms[name][index], expected[name], rtol=1e-8, atol=1e-8)


def test_one_step_loss_is_unchanged_by_the_rollout_option() -> None:
    plain = module()
    bins = {"x": torch.randn(64, 4, dtype=torch.float64), "encoder_input": torch.randn(64, 4, dtype=torch.float64)}
    torch.manual_seed(11)
    terms = plain.loss_terms(bins)
    torch.manual_seed(11)
    reference = one_step_reference(plain, bins)
    for name, value in reference.items():
        assert torch.equal(terms[name], value), name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rollout_window": 0}, r"model.rollout_window=0: expected the bins per training window"),
        ({"rollout_interval": 0}, r"model.rollout_interval=0: expected the bins between forced states"),
        ({"rollout_forcing": 1.5}, r"model.rollout_forcing=1.5: expected a generalized teacher forcing weight in \[0, 1\]"),
        ({"rollout_window_fraction": 0.0}, r"model.rollout_window_fraction=0: expected the share of the rollout windows"),
    ],
)
def test_bad_rollout_settings_are_one_line_errors(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelSettings(**override)


def test_samplers_draw_a_fresh_random_subset_per_epoch() -> None:
    torch.manual_seed(0)
    sampler = BatchIndexSampler(50, 8, shuffle=True, per_epoch=10)
    epochs = [torch.cat(list(sampler)) for _ in range(2)]
    assert len(sampler) == 2 and [len(list(sampler)[0]), len(list(sampler)[1])] == [8, 2]
    for drawn in epochs:
        assert len(drawn) == 10 and len(set(drawn.tolist())) == 10 and 0 <= drawn.min() and drawn.max() < 50
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())
    copies = CopyIndexSampler(50, 8, seeds=[1, 2], per_epoch=10)
    first = torch.cat(list(copies), dim=1)
    copies.set_epoch(1)
    second = torch.cat(list(copies), dim=1)
    assert first.shape == second.shape == (2, 10) and len(copies) == 2
    assert all(len(set(row.tolist())) == 10 for row in (*first, *second))
    assert set(first[0].tolist()) != set(first[1].tolist()) and set(first[0].tolist()) != set(second[0].tolist())
    # the full epoch is unchanged by the option
    torch.manual_seed(3)
    full = torch.cat(list(BatchIndexSampler(50, 8, shuffle=True)))
    torch.manual_seed(3)
    assert torch.equal(full, torch.cat(list(BatchIndexSampler(50, 8, shuffle=True, per_epoch=None))))


def test_window_fraction_trains_on_that_share_of_the_windows(tmp_path: Path) -> None:
    cfg = compose_config("train", [*QUICK, f"paths.cache_dir={tmp_path}"], tmp_path, "run")
    datamodule = instantiate_datamodule(cfg.datamodule)
    datamodule.setup()
    datamodule.configure_training(batches_per_call=1, window=4, window_fraction=0.25)
    windows = datamodule.training_windows()
    batches = list(datamodule.train_dataloader())
    drawn = sum(len(batch["x"]) for batch in batches)
    assert drawn == round(len(windows) * 0.25) and all(batch["x"].shape[1] == 4 for batch in batches)
    assert all(bool(batch["target_mask"][:, 0].all()) for batch in batches)  # each starts at a training bin
    datamodule.configure_training(batches_per_call=1, window=4, window_fraction=1.0)
    assert sum(len(batch["x"]) for batch in datamodule.train_dataloader()) == len(windows)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def run(tmp_path: Path, data_cache: str, *overrides: str, run_name: str = "run") -> dict:
    cfg = compose_config("train", [*QUICK, f"paths.cache_dir={data_cache}", *overrides], tmp_path, run_name)
    return train(cfg)


def test_default_equals_an_explicit_window_of_one_bitwise(tmp_path: Path, data_cache: str) -> None:
    common = ("trainer.max_epochs=3", "seed=3", "evaluate=false")
    run(tmp_path, data_cache, *common, run_name="default")
    run(tmp_path, data_cache, *common, "model.rollout_window=1", "model.rollout_interval=5", run_name="one")
    default = torch.load(tmp_path / "default" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in default.items():
        assert torch.equal(one[name], value), name


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.rollout_window=6", "model.history=2"),
        ("model.rollout_window=4", "model.rollout_interval=2", "model.replicas=2"),
        ("model.rollout_window=4", "model.rollout_window_fraction=0.25", "model.replicas=2"),
        ("model.rollout_window=4", "model.likelihood=poisson", "model.link=softplus", "model.rollout_forcing=0.1"),
    ],
)
def test_rollout_training_runs_through_the_pipeline(tmp_path: Path, data_cache: str, overrides: tuple[str, ...]) -> None:
    result = run(tmp_path, data_cache, "trainer.max_epochs=4", *overrides)
    run_dirs = [Path(path) for path in result.get("replica_run_dirs") or [tmp_path / "run"]]
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert "rollout_r2_auc" in metrics and torch.isfinite(torch.tensor(metrics["rollout_r2_auc"]))
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["hyper_parameters"]["rollout_window"] == int(overrides[0].split("=")[1])
