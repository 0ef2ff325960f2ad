"""One LightningModule for every trained variant (facrnn, lrrnn, bdrnn, facrnn_full):
they differ only in grouping, ``beta`` and ``alpha`` (see ``conf/model/``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch

from facrnn.grouping import block_mask, resolve_group_sizes
from facrnn.losses import gaussian_kl, gaussian_nll, overlap_penalty
from facrnn.model import LowRankRNN
from facrnn.partial_correlation import partial_correlation_minibatch

LOSS_TERMS = ("loss", "nll", "kl", "partial_corr", "overlap")
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
    link : {"identity", "relu"}
        Decoder link.
    history : int
        Encoder history lags ``L`` (used by the data pipeline to build encoder inputs).
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
    ) -> None:
        super().__init__()
        sizes = resolve_group_sizes(latent_dim, n_groups, group_sizes, group_rank)
        if beta < 0 or alpha < 0:
            raise ValueError(f"model.beta={beta}, model.alpha={alpha}: expected non-negative penalty weights")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={optimizer!r}: expected one of {sorted(OPTIMIZERS)}")
        if n_train < 2:
            raise ValueError(f"n_train={n_train}: expected at least 2 training samples")
        self.save_hyperparameters()
        self.group_sizes = sizes
        self.model = LowRankRNN(n_neurons, sizes, width_samples or n_train, link=link)
        self.register_buffer("block_mask", block_mask(sizes), persistent=False)
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_batches = 0

    @property
    def width(self) -> float:
        """Posterior width ``h``."""
        return self.model.width

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All loss terms of one batch, ``loss`` first; penalties with zero weight are 0."""
        means = self.model.encode(batch["encoder_input"])
        samples = self.model.sample(means)
        reconstruction = self.model.decode(samples, batch.get("external_input"))
        nll = gaussian_nll(batch["x"], reconstruction, self.model.log_noise_std)
        kl = gaussian_kl(means, self.width)
        zero = nll.new_zeros(())
        partial_corr = (
            partial_correlation_minibatch(
                samples, means, self.width, self.group_sizes, self.hparams.n_train, self.model.group_index
            )
            if self.hparams.beta > 0
            else zero
        )
        overlap = overlap_penalty(self.model.overlap(), self.block_mask) if self.hparams.alpha > 0 else zero
        loss = nll + kl + self.hparams.beta * partial_corr + self.hparams.alpha * overlap
        return {"loss": loss, "nll": nll, "kl": kl, "partial_corr": partial_corr, "overlap": overlap}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        # Accumulate on device; logged once per epoch (no host synchronisation per step).
        stacked = torch.stack([terms[name].detach() for name in LOSS_TERMS])
        self._epoch_sums = stacked if self._epoch_sums is None else self._epoch_sums + stacked
        self._epoch_batches += 1
        return terms["loss"]

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is None:
            return
        means = self._epoch_sums / self._epoch_batches
        self.log_dict({f"train/{name}": means[i] for i, name in enumerate(LOSS_TERMS)}, on_epoch=True)
        self._epoch_sums, self._epoch_batches = None, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms = self.loss_terms(batch)
        self.log_dict(
            {f"val/{name}": terms[name] for name in LOSS_TERMS},
            on_epoch=True,
            batch_size=batch["x"].shape[0],
            prog_bar=False,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer_class = OPTIMIZERS[self.hparams.optimizer]
        return optimizer_class(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @classmethod
    def load(cls, checkpoint_path: str, map_location: str = "cpu") -> "FacRNNModule":
        """Load a checkpoint safely (``weights_only=True``); needs no other argument."""
        return cls.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)


__all__ = ["FacRNNModule", "LOSS_TERMS"]
