"""Batched model copies (``model.replicas``, ``model.restarts``), whole-epoch training calls,
β warm-up and the non-finite-loss stop."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from facrnn.cli.compare import discover_runs
from facrnn.core.copies import ReplicatedLowRankRNN, build_copies, copy_seed, keep_optimizer_state, select_starts
from facrnn.core.losses import gaussian_kl, gaussian_nll, overlap_penalty, poisson_nll
from facrnn.core.model import LowRankRNN
from facrnn.core.partial_correlation import partial_correlation_minibatch, partial_correlation_minibatch_autograd
from facrnn.errors import ConfigError, TrainingFaultError
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.export import validation_step_at
from facrnn.runs.pipeline import evaluate_run, train
from facrnn.training.module import FacRNNModule
from tests.helpers import TINY_DATA, compose_config

QUICK = [*TINY_DATA, "threads=1", "logger=csv", "evaluate=false", "trainer.check_val_every_n_epoch=2"]


# ------------------------------------------------------------------ batched maths
def test_batched_partial_correlation_equals_each_copy_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(3, 40, 5, dtype=torch.float64, generator=generator)
    samples = (means + 0.4 * torch.randn(3, 40, 5, dtype=torch.float64, generator=generator)).requires_grad_()
    means.requires_grad_()
    batched = partial_correlation_minibatch(samples, means, 0.4, [2, 3], 500)
    assert batched.shape == (3,)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    grad_samples, grad_means = torch.autograd.grad((batched * weights).sum(), (samples, means))
    for copy in range(3):
        one_samples = samples[copy].detach().requires_grad_()
        one_means = means[copy].detach().requires_grad_()
        reference = partial_correlation_minibatch_autograd(one_samples, one_means, 0.4, [2, 3], 500)
        torch.testing.assert_close(batched[copy], reference, rtol=1e-10, atol=1e-10)
        reference_grads = torch.autograd.grad(weights[copy] * reference, (one_samples, one_means))
        torch.testing.assert_close(grad_samples[copy], reference_grads[0], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(grad_means[copy], reference_grads[1], rtol=1e-9, atol=1e-10)


def test_batched_loss_terms_equal_each_copy_alone() -> None:
    generator = torch.Generator().manual_seed(1)
    x, mean = torch.rand(4, 30, 7, generator=generator), torch.rand(4, 30, 7, generator=generator)
    log_std = torch.randn(4, 7, generator=generator)
    latents = torch.randn(4, 30, 3, generator=generator)
    overlap = torch.randn(4, 3, 3, generator=generator)
    mask = torch.block_diag(torch.ones(1, 1), torch.ones(2, 2))
    for copy in range(4):
        torch.testing.assert_close(gaussian_nll(x, mean, log_std)[copy], gaussian_nll(x[copy], mean[copy], log_std[copy]))
        torch.testing.assert_close(poisson_nll(x, mean)[copy], poisson_nll(x[copy], mean[copy]))
        torch.testing.assert_close(gaussian_kl(latents, 0.3)[copy], gaussian_kl(latents[copy], 0.3))
        torch.testing.assert_close(overlap_penalty(overlap, mask)[copy], overlap_penalty(overlap[copy], mask))


def make_model() -> LowRankRNN:
    return LowRankRNN(9, [2, 2], 200, link="relu")


def test_copies_start_like_plain_models_with_their_seeds_and_compute_the_same() -> None:
    copies = build_copies(make_model, seed=11, replicas=2, restarts=2)
    assert copies.n_copies == 4
    encoder_input = torch.randn(4, 25, 9)
    latents = torch.randn(4, 25, 4)
    for replica in range(2):
        for start in range(2):
            torch.manual_seed(copy_seed(11, replica, start))
            plain = make_model()
            copy = replica * 2 + start
            torch.testing.assert_close(copies.to_model(copy).state_dict()["encoder.weight"], plain.encoder.weight)
            torch.testing.assert_close(copies.encode(encoder_input)[copy], plain.encode(encoder_input[copy]))
            torch.testing.assert_close(copies.decode(latents)[copy], plain.decode(latents[copy]))
            torch.testing.assert_close(copies.overlap()[copy], plain.overlap())
    assert copy_seed(11, 1, 0) == 12  # replica r starts like a plain run with seed + r
    first, other = copies.to_model(0).encoder.weight, copies.to_model(1).encoder.weight
    assert not torch.allclose(first, other)


def test_one_copys_loss_moves_only_its_own_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    module = FacRNNModule(n_neurons=9, n_train=200, latent_dim=4, n_groups=2, replicas=3, seed=3)
    batch = {"x": torch.randn(3, 32, 9), "encoder_input": torch.randn(3, 32, 9)}
    terms = module.loss_terms(batch)
    assert terms["loss"].shape == (3,)
    grads = torch.autograd.grad(terms["loss"][1], list(module.model.parameters()))
    for grad in grads:
        assert grad[0].abs().max() == 0 and grad[2].abs().max() == 0 and grad[1].abs().max() > 0
    # and each copy's terms are the plain model's on the same batch (posterior noise switched off)
    monkeypatch.setattr(ReplicatedLowRankRNN, "sample", lambda self, means: means)
    monkeypatch.setattr(LowRankRNN, "sample", lambda self, means, generator=None: means)
    terms = module.loss_terms(batch)
    plain = FacRNNModule(n_neurons=9, n_train=200, latent_dim=4, n_groups=2)
    plain.model.load_state_dict(module.model.copy_state(2))
    plain_terms = plain.loss_terms({key: value[2] for key, value in batch.items()})
    for name, value in plain_terms.items():
        torch.testing.assert_close(terms[name][2], value, msg=name)


@pytest.mark.robustness
def test_bad_copy_settings_are_clear_errors() -> None:
    replicas_rule = r"^model.replicas=0: expected the number of seeds trained at once \(a positive integer\)$"
    with pytest.raises(ConfigError, match=replicas_rule):
        FacRNNModule(n_neurons=5, n_train=100, replicas=0)
    # the rule lives in the settings schema (facrnn.training.settings), which the module applies
    with pytest.raises(ValueError, match="MLP encoder.*expected model.encoder=linear model.decoder=linear"):
        FacRNNModule(n_neurons=5, n_train=100, restarts=2, encoder="mlp")
    # the batched model itself only refuses copies it cannot stack
    with pytest.raises(ValueError, match="^ReplicatedLowRankRNN: expected copies of a linear LowRankRNN"):
        ReplicatedLowRankRNN([LowRankRNN(5, [2, 2], 100, encoder="mlp")])


@pytest.mark.robustness
def test_select_starts_keeps_the_lowest_objective_of_each_replica() -> None:
    objectives = torch.tensor([[5.0, 3.0, 4.0], [float("nan"), 9.0, 1.0]])
    assert select_starts(objectives) == [1, 5]
    assert select_starts(torch.tensor([[float("inf"), float("nan")]])) == [0]
    with pytest.raises(ValueError, match="replicas, restarts"):
        select_starts(torch.ones(3))


def test_keeping_copies_reindexes_weights_and_adam_state() -> None:
    copies = build_copies(make_model, seed=0, replicas=1, restarts=3)
    optimizer = torch.optim.AdamW(copies.parameters(), lr=1e-2)
    sum(value.pow(2).sum() * (index + 1) for index, value in enumerate(copies.parameters())).backward()
    optimizer.step()
    before = {name: value.detach().clone() for name, value in copies.named_parameters()}
    moments = {id(p): optimizer.state[p]["exp_avg"].clone() for p in copies.parameters()}
    keep_optimizer_state(optimizer, [2], copies.n_copies)
    copies.keep([2])
    assert copies.n_copies == 1
    for name, value in copies.named_parameters():
        torch.testing.assert_close(value[0], before[name][2])
        torch.testing.assert_close(optimizer.state[value]["exp_avg"][0], moments[id(value)][2])
    copies.overlap().sum().backward()
    optimizer.step()  # the shrunk state still fits


# ------------------------------------------------------------------ through the pipeline
@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def run(tmp_path: Path, data_cache: str, *overrides: str, run_name: str = "run") -> dict:
    cfg = compose_config("train", [*QUICK, f"paths.cache_dir={data_cache}", *overrides], tmp_path, run_name)
    return train(cfg)


def final_val_loss(run_dir: Path) -> float:
    rows = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("val/loss")
    return [float(row[column]) for row in rows[1:] if row[column]][-1]


def test_replicas_write_ordinary_runs_that_match_plain_runs(tmp_path: Path, data_cache: str) -> None:
    result = run(tmp_path, data_cache, "model.replicas=2", "seed=4", "trainer.max_epochs=20", run_name="replicated")
    parent = tmp_path / "replicated"
    replicas = [parent / "replica_00_seed4", parent / "replica_01_seed5"]
    assert result["replica_run_dirs"] == [str(path) for path in replicas]
    assert (parent / "checkpoints" / "copies" / "last.ckpt").is_file()
    for replica, seed in zip(replicas, (4, 5)):
        config = OmegaConf.load(replica / "config.yaml")
        assert config.seed == seed and config.model.replicas == 1 and config.paths.output_dir == str(replica)
        module = FacRNNModule.load(str(replica / "checkpoints" / "best.ckpt"))
        assert isinstance(module.model, LowRankRNN) and module.hparams.seed == seed
        # best.ckpt says where its weights are from: the step count of its own epoch's validation
        best, last = (torch.load(replica / "checkpoints" / f"{name}.ckpt", weights_only=True) for name in ("best", "last"))
        rows = [line.split(",") for line in (replica / "csv" / "metrics.csv").read_text().splitlines()]
        validated = {int(row[0]): int(row[1]) for row in rows[1:] if row[rows[0].index("val/loss")]}
        assert best["global_step"] == validated[best["epoch"]] and last["global_step"] >= best["global_step"]
    # the parent holds no plain checkpoint: compare finds the two replicas only
    assert discover_runs([parent]) == sorted(path.resolve() for path in replicas)
    with pytest.raises(
        ConfigError,
        match=(
            r"a run of model.replicas=2 batched copies; "
            r"expected one of its replica directories \(replica_00_seed4, replica_01_seed5\)"
        ),
    ):
        evaluate_run(parent)
    metrics = evaluate_run(replicas[1], EvalSettings(figures=False, dynamics=False)).metrics
    assert 0.0 < metrics["group_latent_r2"] <= 1.0
    # replica 1 is a run with seed 5: same initial weights, a loss within noise of the plain run
    run(tmp_path, data_cache, "seed=5", "trainer.max_epochs=20", run_name="plain")
    replica_loss, plain_loss = final_val_loss(replicas[1]), final_val_loss(tmp_path / "plain")
    assert abs(replica_loss - plain_loss) < 0.1 * abs(plain_loss), (replica_loss, plain_loss)


class AssertBatchesFitTheCopies(pl.Callback):
    """Fails when the sampler hands a batched model rows for copies it no longer trains."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int) -> None:
        for one_batch in batch if isinstance(batch, list) else [batch]:
            assert one_batch["x"].shape[0] == pl_module.n_copies, (one_batch["x"].shape, pl_module.n_copies)


def test_exported_best_checkpoint_records_its_own_validation_step() -> None:
    history = {"val": [(1, 6, None), (3, 12, None), (5, 18, None)]}
    module = SimpleNamespace(copies=SimpleNamespace(history=history))
    assert validation_step_at(module, 3) == 12 and validation_step_at(module, 1) == 6
    assert validation_step_at(module, 4) == -1  # no validation ran at that epoch


def test_restarts_keep_the_start_with_the_lowest_training_objective(tmp_path: Path, data_cache: str) -> None:
    check = "+callbacks.check._target_=tests.training.test_replicas.AssertBatchesFitTheCopies"
    run(tmp_path, data_cache, "model.restarts=3", "model.restart_epochs=4", "trainer.max_epochs=8", check, run_name="restarts")
    run_dir = tmp_path / "restarts"
    record = json.loads((run_dir / "restarts.json").read_text())
    assert record["restarts"] == 3 and record["selection_epoch"] == 3 and len(record["objective_trajectories"]) == 3
    # the objectives are the recorded trajectories averaged over the selection window
    window = record["window_epochs"]
    expected = [sum(trajectory[-window:]) / window for trajectory in record["objective_trajectories"]]
    assert record["objectives"] == pytest.approx(expected, rel=1e-5)
    assert record["kept_start"] == min(range(3), key=lambda start: record["objectives"][start])
    assert len(set(round(value, 6) for value in record["objectives"])) == 3  # the starts really differ
    module = FacRNNModule.load(str(run_dir / "checkpoints" / "last.ckpt"))
    assert isinstance(module.model, LowRankRNN)
    # evaluation reports the restarts and the kept start, and draws the starts' objectives
    metrics = evaluate_run(run_dir, EvalSettings(dynamics=False)).metrics
    assert metrics["restarts"] == 3 and metrics["kept_start"] == record["kept_start"]
    assert (run_dir / "figures" / "restarts.png").stat().st_size > 0
    # the kept start was trained on: resume from the batched state, past the selection
    cfg = compose_config(
        "train",
        [
            *QUICK,
            f"paths.cache_dir={data_cache}",
            "model.restarts=3",
            "model.restart_epochs=4",
            "trainer.max_epochs=10",
            "ckpt_path=last",
            check,
        ],
        tmp_path,
        "restarts",
    )
    train(cfg)
    resumed = torch.load(run_dir / "checkpoints" / "copies" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 9 and resumed["state_dict"]["model.encoder_weight"].shape[0] == 1


def test_restarts_one_reproduces_a_plain_run_exactly(tmp_path: Path, data_cache: str) -> None:
    run(tmp_path, data_cache, "trainer.max_epochs=4", "seed=2", run_name="plain")
    run(tmp_path, data_cache, "trainer.max_epochs=4", "seed=2", "model.restarts=1", "model.replicas=1", run_name="one")
    plain = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name in plain:
        torch.testing.assert_close(one[name], plain[name], rtol=0, atol=0)


def test_whole_epoch_calls_train_exactly_like_one_batch_per_call(tmp_path: Path, data_cache: str) -> None:
    run(tmp_path, data_cache, "trainer.max_epochs=3", "batches_per_call=1", run_name="per_batch")
    run(tmp_path, data_cache, "trainer.max_epochs=3", "batches_per_call=0", run_name="per_epoch")
    per_batch = torch.load(tmp_path / "per_batch" / "checkpoints" / "last.ckpt", weights_only=True)
    per_epoch = torch.load(tmp_path / "per_epoch" / "checkpoints" / "last.ckpt", weights_only=True)
    assert per_batch["global_step"] == per_epoch["global_step"] > 3  # optimizer steps, not calls
    for name, value in per_batch["state_dict"].items():
        torch.testing.assert_close(per_epoch["state_dict"][name], value, rtol=0, atol=0)


def test_beta_warmup_ramps_the_training_beta_only() -> None:
    module = FacRNNModule(n_neurons=5, n_train=100, beta=10.0, beta_warmup_epochs=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    ramp = []
    for epoch in range(6):
        trainer.fit_loop.epoch_progress.current.completed = epoch
        ramp.append(module.training_beta())
    assert ramp == pytest.approx([2.5, 5.0, 7.5, 10.0, 10.0, 10.0])


# ------------------------------------------------------------------ non-finite losses
class PoisonWeights(pl.Callback):
    """Sets the decoder bias to NaN when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.model.decoder.bias.fill_(float("nan"))


class PoisonOneBatch(pl.Callback):
    """Puts a NaN into the observations of the first batch of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch:
            first = batch[0] if isinstance(batch, list) else batch
            first["x"][0, 0] = float("nan")


@pytest.mark.robustness
def test_nonfinite_loss_stops_with_step_term_and_intact_checkpoint(tmp_path: Path, data_cache: str) -> None:
    poison = ["+callbacks.poison._target_=tests.training.test_replicas.PoisonWeights", "+callbacks.poison.epoch=3"]
    with pytest.raises(TrainingFaultError) as error:
        run(tmp_path, data_cache, "trainer.max_epochs=6", *poison)
    message = str(error.value)
    steps_per_epoch = 3  # 180 training bins (200 even bins, 20 validate) in batches of 64
    assert f"training stopped at step {3 * steps_per_epoch + 1} (epoch 3)" in message
    assert "nll term is not finite" in message and "last.ckpt" in message and message.endswith("skip such batches")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the validation of epoch 3 never ran
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())


@pytest.mark.robustness
def test_nonfinite_batches_are_skipped_up_to_the_limit(tmp_path: Path, data_cache: str) -> None:
    poison = ["+callbacks.poison._target_=tests.training.test_replicas.PoisonOneBatch", "+callbacks.poison.epoch=2"]
    run(tmp_path, data_cache, "trainer.max_epochs=4", "model.nonfinite_skip_limit=1", *poison)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 4 * 3 - 1  # 4 epochs of 3 batches, one batch skipped
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    # with no skips allowed the same batch stops the run
    with pytest.raises(TrainingFaultError, match="training stopped at step 7 \\(epoch 2\\)"):
        run(tmp_path, data_cache, "trainer.max_epochs=4", *poison, run_name="strict")


def test_restarts_figure_refuses_a_malformed_record(tmp_path: Path) -> None:
    from facrnn.plots.fit import plot_restarts

    record = {
        "epochs": [0, 1, 2],
        "objective_trajectories": [[3.0, 2.0, 1.5], [3.0, 2.5]],
        "kept_start": 0,
        "selection_epoch": 2,
        "window_epochs": 1,
    }
    with pytest.raises(ValueError, match="objective_trajectories"):
        plot_restarts(record, tmp_path / "restarts.png")
    record["objective_trajectories"][1].append(2.4)
    assert plot_restarts(record, tmp_path / "restarts.png").stat().st_size > 0


def test_copy_sampler_gives_each_copy_its_own_reproducible_order() -> None:
    from datamodules.sampling import CopyIndexSampler, GroupedBatchSampler

    sampler = CopyIndexSampler(10, 4, seeds=[3, 4])
    batches = list(sampler)
    assert [tuple(batch.shape) for batch in batches] == [(2, 4), (2, 4), (2, 2)] and len(sampler) == 3
    orders = torch.cat(batches, dim=1)
    for copy, seed in enumerate((3, 4)):
        assert torch.equal(orders[copy], torch.randperm(10, generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(orders[0], orders[1])
    sampler.set_epoch(1)
    assert torch.equal(torch.cat(list(sampler), dim=1)[0], torch.randperm(10, generator=torch.Generator().manual_seed(4)))
    sampler.keep_copies([1])  # after a restarts selection: copy 1 only, still in its own order
    assert torch.equal(
        torch.cat(list(sampler), dim=1), torch.randperm(10, generator=torch.Generator().manual_seed(5)).unsqueeze(0)
    )
    sampler.keep_copies([0, 1])
    grouped = GroupedBatchSampler(sampler, batches_per_call=2)
    assert len(grouped) == 2 and [len(group) for group in grouped] == [2, 1]
    assert len(GroupedBatchSampler(sampler, 0)) == 1 and len(next(iter(GroupedBatchSampler(sampler, 0)))) == 3
    with pytest.raises(ValueError, match="batches_per_call=-1"):
        GroupedBatchSampler(sampler, -1)


def test_copy_history_round_trips_through_one_stacked_record() -> None:
    from facrnn.training.copies import stack_history, unstack_history

    entries = [(epoch, 8 * (epoch + 1), torch.randn(5, 3)) for epoch in range(4)]
    restored = unstack_history(stack_history(entries))
    assert [(epoch, step) for epoch, step, _ in restored] == [(epoch, step) for epoch, step, _ in entries]
    for (_, _, original), (_, _, again) in zip(entries, restored):
        torch.testing.assert_close(again, original, rtol=0, atol=0)
    assert unstack_history(stack_history([])) == []
