"""One LightningModule for every trained variant (facrnn, lrrnn, bdrnn, facrnn_full):
they differ only in grouping, ``beta`` and ``alpha`` (see ``conf/model/``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from facrnn.grouping import block_mask, resolve_group_sizes
from facrnn.losses import gaussian_kl, gaussian_nll, overlap_penalty, poisson_nll
from facrnn.model import LowRankRNN
from facrnn.partial_correlation import partial_correlation_minibatch


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (``(n, ...)``) from every process in rank order, keeping gradients.

    The identity outside distributed training. Under DDP the minibatch PC estimator must see
    the *global* batch (every sample as a kernel centre), so that its value and, after DDP
    averages the ranks' gradients, its gradient equal single-device training with the same
    global batch: ``torch.distributed.nn.functional.all_gather`` sums the ranks' gradients
    back onto each rank's own rows, which DDP's averaging turns into the full-batch gradient.
    Every rank's ``n`` must be equal (the sampler guarantees it).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    import torch.distributed.nn.functional as distributed_functional

    return torch.cat(distributed_functional.all_gather(tensor.contiguous()), dim=0)


LOSS_TERMS = ("loss", "nll", "kl", "partial_corr", "overlap")
LIKELIHOODS = ("gaussian", "poisson")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class FacRNNModule(pl.LightningModule):
    """Trains a :class:`~facrnn.model.LowRankRNN` VAE with the FacRNN loss.

    Parameters
    ----------
    n_neurons : int
        Observed channels ``N`` (filled in from the data by the pipeline).
    n_train : int
        Training samples (time bins) ``M``; weights the minibatch PC estimator.
    latent_dim, n_groups : int
        ``K`` split into ``n_groups`` equal groups, unless ``group_sizes`` is given.
    group_sizes : list of int, optional
        Explicit (possibly unequal) latent group sizes; wins over ``n_groups``.
    group_rank : int, optional
        Shorthand: ``n_groups`` groups of ``group_rank`` dimensions each.
    width_samples : int, optional
        ``M`` used in the posterior width ``h = M^(-1/(K+4))``; defaults to ``n_train``.
    beta : float
        Weight of the partial correlation penalty.
    alpha : float
        Weight of the block-diagonal overlap penalty (bdRNN).
    link : {"identity", "relu", "softplus"}
        Decoder link.
    likelihood : {"gaussian", "poisson"}
        Observation model: Gaussian with per-neuron std (DESIGN §1), or Poisson counts with
        rate ``softplus(A z + a)`` (needs ``link=softplus``).
    history : int
        Encoder history lags ``L`` (used by the data pipeline to build encoder inputs).
    encoder, decoder : {"linear", "mlp"}
        Linear projections (the low-rank RNN) or the MLP variant of DESIGN §2 (``*_mlp``).
    hidden_dim : int
        Hidden width of the MLP encoder/decoder.
    optimizer : {"adamw", "adam"}
    lr, weight_decay : float
    name : str
        Method name recorded with the run (``facrnn``, ``lrrnn``, ...).
    """

    def __init__(
        self,
        n_neurons: int,
        n_train: int,
        latent_dim: int | None = 6,
        n_groups: int | None = 2,
        group_sizes: Sequence[int] | None = None,
        group_rank: int | None = None,
        width_samples: int | None = None,
        beta: float = 20.0,
        alpha: float = 0.0,
        link: str = "identity",
        history: int = 1,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        name: str = "facrnn",
        encoder: str = "linear",
        decoder: str = "linear",
        hidden_dim: int = 32,
        likelihood: str = "gaussian",
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"model.likelihood={likelihood!r}: expected one of {LIKELIHOODS}")
        if likelihood == "poisson" and link != "softplus":
            raise ValueError(
                f"model.likelihood=poisson with model.link={link}: expected model.link=softplus (a positive rate)"
            )
        sizes = resolve_group_sizes(latent_dim, n_groups, group_sizes, group_rank)
        if beta < 0 or alpha < 0:
            raise ValueError(f"model.beta={beta}, model.alpha={alpha}: expected non-negative penalty weights")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={optimizer!r}: expected one of {sorted(OPTIMIZERS)}")
        if n_train < 2:
            raise ValueError(f"n_train={n_train}: expected at least 2 training samples")
        self.save_hyperparameters()
        self.group_sizes = sizes
        self.model = LowRankRNN(
            n_neurons, sizes, width_samples or n_train, link=link, encoder=encoder, decoder=decoder, hidden_dim=hidden_dim
        )
        if alpha > 0 and not self.model.is_linear:
            raise ValueError(
                f"model.alpha={alpha} with model.encoder={encoder}, model.decoder={decoder}: the overlap "
                "penalty needs B A; expected model.alpha=0 for an MLP encoder/decoder"
            )
        self.register_buffer("block_mask", block_mask(sizes), persistent=False)
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_batches = 0
        self._val_sums: torch.Tensor | None = None
        self._val_count = 0
        self.automatic_optimization = False  # see training_step

    @property
    def width(self) -> float:
        """Posterior width ``h``."""
        return self.model.width

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All loss terms of one batch, ``loss`` first; penalties with zero weight are 0."""
        means = self.model.encode(batch["encoder_input"])
        samples = self.model.sample(means)
        reconstruction = self.model.decode(samples, batch.get("external_input"))
        if self.hparams.get("likelihood", "gaussian") == "poisson":
            nll = poisson_nll(batch["x"], reconstruction)
        else:
            nll = gaussian_nll(batch["x"], reconstruction, self.model.log_noise_std)
        kl = gaussian_kl(means, self.width)
        zero = nll.new_zeros(())
        partial_corr = (
            partial_correlation_minibatch(
                gather_across_ranks(samples),
                gather_across_ranks(means),
                self.width,
                self.group_sizes,
                self.hparams.n_train,
                self.model.group_index,
            )
            if self.hparams.beta > 0
            else zero
        )
        overlap = overlap_penalty(self.model.overlap(), self.block_mask) if self.hparams.alpha > 0 else zero
        loss = nll + kl + self.hparams.beta * partial_corr + self.hparams.alpha * overlap
        return {"loss": loss, "nll": nll, "kl": kl, "partial_corr": partial_corr, "overlap": overlap}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Manual optimization (set in __init__): one zero_grad/backward/step, without the
        # closure and hook chain of automatic optimization, which costs about as much as the
        # step itself for this small model (benchmarks/README.md).
        terms = self.loss_terms(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(terms["loss"])
        optimizer.step()
        # Accumulate on device; logged once per epoch (no host synchronisation per step).
        stacked = torch.stack([terms[name].detach() for name in LOSS_TERMS])
        self._epoch_sums = stacked if self._epoch_sums is None else self._epoch_sums + stacked
        self._epoch_batches += 1

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is None:
            return
        means = self._epoch_sums / self._epoch_batches
        self._epoch_sums, self._epoch_batches = None, 0
        if self.trainer.world_size > 1:
            self.log_dict({f"train/{name}": means[i] for i, name in enumerate(LOSS_TERMS)}, on_epoch=True, sync_dist=True)
            return
        # One process: hand the epoch means straight to the loggers (and to callbacks); the
        # same rows as self.log_dict at a fraction of its cost per epoch (runs have 8-step epochs).
        metrics = {f"train/{name}": means[i] for i, name in enumerate(LOSS_TERMS)}
        self.trainer.callback_metrics.update(metrics)
        if self.loggers:
            row = {name: float(value) for name, value in zip(metrics, means.tolist())}
            row["epoch"] = self.current_epoch
            for logger in self.loggers:
                logger.log_metrics(row, step=self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms = self.loss_terms(batch)
        batch_size = batch["x"].shape[0]
        if self.trainer.world_size > 1:
            self.log_dict(
                {f"val/{name}": terms[name] for name in LOSS_TERMS},
                on_epoch=True,
                batch_size=batch_size,
                prog_bar=False,
                sync_dist=True,
            )
            return
        # One process: accumulate the batch-size weighted sums and log once per validation
        # (each self.log call costs milliseconds; the same epoch means as on_epoch=True).
        weighted = torch.stack([terms[name].detach() for name in LOSS_TERMS]) * batch_size
        self._val_sums = weighted if self._val_sums is None else self._val_sums + weighted
        self._val_count += batch_size

    def on_validation_epoch_end(self) -> None:
        if self._val_sums is None:
            return
        means = self._val_sums / self._val_count
        self._val_sums, self._val_count = None, 0
        self.log_dict({f"val/{name}": means[i] for i, name in enumerate(LOSS_TERMS)}, prog_bar=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Batches of in-memory tensors already on the device need no per-step traversal.
        if isinstance(batch, dict) and all(isinstance(v, torch.Tensor) and v.device == device for v in batch.values()):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_fit_start(self) -> None:
        # Under DDP every process was seeded alike; give each rank its own posterior noise
        # (a shared draw plus the rank keeps this deterministic, also after a resume).
        if self.trainer.world_size > 1:
            shared_seed = int(torch.randint(0, 2**62, (1,)))
            torch.manual_seed(shared_seed + self.trainer.global_rank)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer_class = OPTIMIZERS[self.hparams.optimizer]
        parameters = list(self.parameters())
        # The fused kernel (one op for all parameters) is ~10% of a step faster on CPU (NOTES).
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters)
        return optimizer_class(parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)

    @classmethod
    def load(cls, checkpoint_path: str, map_location: str = "cpu") -> "FacRNNModule":
        """Load a checkpoint safely (``weights_only=True``); needs no other argument."""
        return cls.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)


__all__ = ["FacRNNModule", "LIKELIHOODS", "LOSS_TERMS"]
