"""One LightningModule for every trained variant (facrnn, lrrnn, bdrnn, facrnn_full):
they differ only in grouping, ``beta`` and ``alpha`` (see ``conf/model/``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from facrnn.errors import ConfigError, TrainingFaultError
from facrnn.core.grouping import block_mask, resolve_group_sizes
from facrnn.core.losses import gaussian_kl, gaussian_nll, overlap_penalty, poisson_nll
from facrnn.core.model import LowRankRNN
from facrnn.core.partial_correlation import partial_correlation_minibatch
from facrnn.core.copies import ReplicatedLowRankRNN, build_copies, keep_optimizer_state, select_starts

log = logging.getLogger(__name__)


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (``(n, K)``) from every process in rank order, keeping gradients.

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
    """Trains a :class:`~facrnn.core.model.LowRankRNN` VAE with the FacRNN loss.

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
    replicas : int
        Train this many independently initialised and shuffled copies at once, with batched
        weights (:mod:`facrnn.core.copies`); replica ``r`` stands for a run with ``seed + r``
        and is written to its own run directory after training (docs/scale.md).
    restarts : int
        Starts per replica; after ``restart_epochs`` epochs the start with the lowest
        training objective (``nll + kl + beta pc + alpha overlap``, averaged over the last
        tenth of that warm phase) is kept and trained on, the others are dropped
        (``restarts.json`` records every start; docs/robust.md).
    restart_epochs : int, optional
        Length of the warm phase; default a fifth of ``trainer.max_epochs``.
    beta_warmup_epochs : int
        Ramp the training ``beta`` linearly from ``beta / E`` to ``beta`` over the first
        ``E`` epochs (0: off). Validation, checkpoint selection and the restart selection
        always use the full ``beta``.
    nonfinite_skip_limit : int
        0 (default): a non-finite loss stops training with a message naming the step, the
        term and the last good checkpoint. ``k > 0``: skip up to ``k`` such batches (checks
        every step, one host synchronisation per step) before stopping. Plain runs only:
        batched copies drop a diverged copy instead and train the others on.
    seed : int, optional
        Base seed of the copies' initialisations; default ``torch.initial_seed()``.
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
        replicas: int = 1,
        restarts: int = 1,
        restart_epochs: int | None = None,
        beta_warmup_epochs: int = 0,
        nonfinite_skip_limit: int = 0,
        seed: int | None = None,
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
        for key, value, minimum in (
            ("replicas", replicas, 1),
            ("restarts", restarts, 1),
            ("beta_warmup_epochs", beta_warmup_epochs, 0),
            ("nonfinite_skip_limit", nonfinite_skip_limit, 0),
        ):
            if int(value) != value or value < minimum:
                raise ConfigError(f"model.{key}={value}: expected an integer >= {minimum}")
        if restart_epochs is not None and restart_epochs < 1:
            raise ConfigError(f"model.restart_epochs={restart_epochs}: expected a positive number of epochs or null")
        if seed is None:
            seed = int(torch.initial_seed() % 2**31)
        self.save_hyperparameters()
        self.group_sizes = sizes

        def make_model() -> LowRankRNN:
            return LowRankRNN(
                n_neurons, sizes, width_samples or n_train, link=link, encoder=encoder, decoder=decoder, hidden_dim=hidden_dim
            )

        self.model: LowRankRNN | ReplicatedLowRankRNN
        if replicas * restarts == 1:
            self.model = make_model()
        else:
            self.model = build_copies(make_model, seed, replicas, restarts)
        # per-copy bookkeeping of batched copies (saved in checkpoints; see on_save_checkpoint)
        self.copy_history: dict[str, list[tuple[int, int, torch.Tensor]]] = {"train": [], "val": []}
        self.best_parameters: dict[str, torch.Tensor] | None = None
        self.best_val: torch.Tensor | None = None
        self.best_epoch: torch.Tensor | None = None
        self.restart_record: dict[str, Any] | None = None
        self._skipped_batches = 0
        self._failed_copies: set[int] = set()
        self._last_logged_step: int | None = None
        self._plain_backward = False  # decided in on_fit_start
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

    @property
    def n_copies(self) -> int:
        """Model copies trained at once (1 for a plain run)."""
        return self.model.n_copies if isinstance(self.model, ReplicatedLowRankRNN) else 1

    @property
    def is_replicated(self) -> bool:
        """Whether the weights are batched copies (``model.replicas`` or ``model.restarts`` > 1)."""
        return isinstance(self.model, ReplicatedLowRankRNN)

    def training_beta(self) -> float:
        """``beta`` of the training loss this epoch (``beta_warmup_epochs`` ramps it up)."""
        beta = float(self.hparams.beta)
        warmup = int(self.hparams.get("beta_warmup_epochs", 0))
        if warmup <= 0 or self._trainer is None:
            return beta
        return beta * min(1.0, (self.current_epoch + 1) / warmup)

    def loss_terms(self, batch: dict[str, torch.Tensor], beta: float | None = None) -> dict[str, torch.Tensor]:
        """All loss terms of one batch, ``loss`` first; penalties with zero weight are 0.

        Scalars for a plain model; ``(C,)`` tensors, one value per copy, for batched copies
        (their batch tensors are ``(C, n, ...)``, or ``(n, ...)``, shared by every copy).
        ``beta`` overrides ``model.beta`` in ``loss`` (the warm-up ramp).
        """
        if self.is_replicated and batch["x"].ndim == 2:
            batch = {key: value.expand(self.n_copies, *value.shape) for key, value in batch.items()}
        elif self.is_replicated and batch["x"].shape[0] != self.n_copies:
            # a sampler still drawing for every initial copy (not the datamodule's): keep the kept ones' rows
            batch = {key: value[self.kept_copies] for key, value in batch.items()}
        beta = float(self.hparams.beta) if beta is None else beta
        means = self.model.encode(batch["encoder_input"])
        samples = self.model.sample(means)
        reconstruction = self.model.decode(samples, batch.get("external_input"))
        if self.hparams.get("likelihood", "gaussian") == "poisson":
            nll = poisson_nll(batch["x"], reconstruction)
        else:
            nll = gaussian_nll(batch["x"], reconstruction, self.model.log_noise_std)
        kl = gaussian_kl(means, self.width)
        zero = torch.zeros_like(nll)
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
        loss = nll + kl + beta * partial_corr + self.hparams.alpha * overlap
        return {"loss": loss, "nll": nll, "kl": kl, "partial_corr": partial_corr, "overlap": overlap}

    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], batch_idx: int) -> None:
        # Manual optimization (set in __init__): one zero_grad/backward/step per batch, without
        # the closure and hook chain of automatic optimization; by default the datamodule hands
        # a whole epoch of batches to one call (GroupedBatchSampler), which saves Lightning's
        # per-call overhead on every other step (benchmarks/README.md).
        batches = batch if isinstance(batch, list) else [batch]
        optimizer = self.optimizers()
        beta = self.training_beta()
        skip_limit = int(self.hparams.get("nonfinite_skip_limit", 0))
        step_terms = []
        for one_batch in batches:
            terms = self.loss_terms(one_batch, beta=beta)
            optimizer.zero_grad()
            total = terms["loss"].sum()  # copies: the sum gives each its own gradient
            if self._plain_backward:
                total.backward()
            else:
                self.manual_backward(total)
            if skip_limit and not self.is_replicated and not bool(torch.isfinite(terms["loss"])):
                self._skip_nonfinite_batch(terms, skip_limit)
                continue
            optimizer.step()
            step_terms.append(torch.stack([terms[name].detach() for name in LOSS_TERMS]))
        if not step_terms:
            return
        call_terms = torch.stack(step_terms)  # (steps, terms) or (steps, terms, C)
        # One host synchronisation per call (per epoch by default), not per step.
        if not self.is_replicated and not bool(torch.isfinite(call_terms).all()):
            raise self._nonfinite_error(call_terms, last_step=self.global_step)
        sums = call_terms.sum(0)
        # Accumulate on device; logged once per epoch.
        self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
        self._epoch_batches += len(step_terms)

    def _last_checkpoint_message(self) -> str:
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            return f"the last good checkpoint is {path} (continue with ckpt_path={path})"
        return "no checkpoint was saved before it"

    def _nonfinite_error(self, call_terms: torch.Tensor, last_step: int) -> TrainingFaultError:
        """The message of a non-finite loss: first bad step and term, last good checkpoint.

        ``call_terms`` ``(steps, terms)`` are the loss terms of consecutive optimizer steps,
        the last of which is step number ``last_step``.
        """
        finite = torch.isfinite(call_terms)
        first = int((~finite.all(-1)).nonzero()[0, 0])
        bad_terms = [name for index, name in enumerate(LOSS_TERMS) if not finite[first, index] and name != "loss"]
        step = last_step - call_terms.shape[0] + first + 1
        values = ", ".join(f"{name}={float(call_terms[first, index]):.4g}" for index, name in enumerate(LOSS_TERMS))
        return TrainingFaultError(
            f"training stopped at step {step} (epoch {self.current_epoch}): the "
            f"{' and '.join(bad_terms) or 'loss'} term is not finite ({values}); {self._last_checkpoint_message()}; "
            "expected finite losses: lower model.lr, check the data for extreme values, or set "
            "model.nonfinite_skip_limit to skip such batches"
        )

    def _skip_nonfinite_batch(self, terms: dict[str, torch.Tensor], skip_limit: int) -> None:
        self.optimizers().zero_grad()
        self._skipped_batches += 1
        stacked = torch.stack([terms[name].detach() for name in LOSS_TERMS]).unsqueeze(0)
        step = self.global_step + 1  # the step this batch would have been
        if self._skipped_batches > skip_limit:
            error = self._nonfinite_error(stacked, last_step=step)
            raise TrainingFaultError(f"{error} (model.nonfinite_skip_limit={skip_limit} batches already skipped)")
        log.warning(
            "step %d: non-finite loss, batch skipped (%d of model.nonfinite_skip_limit=%d)",
            step, self._skipped_batches, skip_limit,
        )

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is None:
            return
        means = self._epoch_sums / self._epoch_batches
        self._epoch_sums, self._epoch_batches = None, 0
        if self.is_replicated:
            self.copy_history["train"].append((self.current_epoch, self.global_step, means.detach().cpu()))
            self._check_copies_finite(means)
            self._maybe_select_restarts()
            means = finite_copy_mean(means)
        self._publish("train", means)

    def _training_row_due(self) -> bool:
        """Whether this epoch's training means go to the loggers: once ``trainer.log_every_n_steps``
        optimizer steps have passed since the last row (epoch means, not single batches), and
        at the last epoch. A W&B row costs about as much as a few optimizer steps."""
        every = int(getattr(self.trainer, "log_every_n_steps", 1) or 1)
        last_epoch = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
        if self._last_logged_step is None or self.global_step - self._last_logged_step >= every or last_epoch:
            self._last_logged_step = self.global_step
            return True
        return False

    def _publish(self, split: str, means: torch.Tensor) -> None:
        """Log one epoch's (or validation's) mean loss terms ``(terms,)`` as ``split/TERM``."""
        metrics = {f"{split}/{name}": means[i] for i, name in enumerate(LOSS_TERMS)}
        if self.trainer.world_size > 1:
            self.log_dict(metrics, on_epoch=True, sync_dist=True)
            return
        # One process: hand the means straight to the callbacks and loggers, at the optimizer
        # step count (a training_step call covers several steps), at a fraction of
        # self.log_dict's cost.
        self.trainer.callback_metrics.update(metrics)
        if self.loggers and (split == "val" or self._training_row_due()):
            row = {name: float(value) for name, value in zip(metrics, means.tolist())}
            row["epoch"] = self.current_epoch
            for logger in self.loggers:
                logger.log_metrics(row, step=self.global_step)

    # ------------------------------------------------------------ batched copies
    def _check_copies_finite(self, means: torch.Tensor) -> None:
        """Stop when every copy's loss is non-finite; one diverged copy only drops out."""
        finite = torch.isfinite(means).all(0)
        if not bool(finite.any()):
            raise TrainingFaultError(
                f"training stopped in epoch {self.current_epoch}: the loss of every one of the {self.n_copies} "
                f"model copies is not finite; {self._last_checkpoint_message()}; expected finite losses: lower model.lr"
            )
        newly_failed = [int(index) for index in (~finite).nonzero().flatten() if int(index) not in self._failed_copies]
        if newly_failed:
            self._failed_copies.update(newly_failed)
            log.warning("epoch %d: model copies %s have a non-finite loss; they are dropped at export", self.current_epoch, newly_failed)

    @property
    def kept_copies(self) -> list[int] | None:
        """Initial copy index of each start still trained (after the restarts' selection), else None."""
        record = self.restart_record
        if record is None:
            return None
        return [replica * int(record["restarts"]) + start for replica, start in enumerate(record["kept_start"])]

    def restart_epochs(self) -> int:
        """Length of the restarts' warm phase in epochs."""
        configured = self.hparams.get("restart_epochs")
        if configured:
            return int(configured)
        max_epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1000
        return max(1, round(0.2 * max_epochs))

    def training_objective(self, means: torch.Tensor) -> torch.Tensor:
        """``nll + kl + beta pc + alpha overlap`` with the full ``beta`` from epoch means of the
        loss terms: ``(..., terms, C) -> (..., C)``."""
        terms = {name: means[..., index, :] for index, name in enumerate(LOSS_TERMS)}
        return terms["nll"] + terms["kl"] + self.hparams.beta * terms["partial_corr"] + self.hparams.alpha * terms["overlap"]

    def _maybe_select_restarts(self) -> None:
        if int(self.hparams.get("restarts", 1)) == 1 or self.restart_record is not None:
            return
        if self.current_epoch + 1 >= self.restart_epochs():
            self.select_restarts()

    def select_restarts(self) -> None:
        """Keep the start of every replica with the lowest training objective (never
        validation or test data), averaged over the last tenth of the warm phase."""
        restarts = int(self.hparams.get("restarts", 1))
        trajectories = self.training_objective(torch.stack([means for _, _, means in self.copy_history["train"]]))  # (E, C)
        window = max(1, min(self.restart_epochs(), trajectories.shape[0]) // 10)
        objectives = trajectories[-window:].mean(0)
        replicas = int(self.hparams.get("replicas", 1))
        kept = select_starts(objectives.view(replicas, restarts))
        self.restart_record = {
            "restarts": restarts,
            "replicas": replicas,
            "selection_epoch": int(self.current_epoch),
            "window_epochs": int(window),
            "objectives": [[float(value) for value in row] for row in objectives.view(replicas, restarts).tolist()],
            "kept_start": [index - replica * restarts for replica, index in enumerate(kept)],
            "epochs": [epoch for epoch, _, _ in self.copy_history["train"]],
            "objective_trajectories": trajectories.T.tolist(),  # (C, E)
        }
        log.info(
            "restarts: epoch %d, kept start(s) %s by training objective %s",
            self.current_epoch, self.restart_record["kept_start"], self.restart_record["objectives"],
        )
        self._keep_copies(kept)

    def _keep_copies(self, kept: list[int]) -> None:
        """Drop every copy but ``kept`` from the weights, optimizer and bookkeeping."""
        n_before = self.n_copies
        self._restrict_sampler()
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                keep_optimizer_state(optimizer, kept, n_before)
        self.model.keep(kept)
        index = torch.as_tensor(kept)
        for split in ("train", "val"):
            self.copy_history[split] = [(epoch, step, means[:, index]) for epoch, step, means in self.copy_history[split]]
        if self.best_parameters is not None:
            self.best_parameters = {name: value[index.to(value.device)] for name, value in self.best_parameters.items()}
            self.best_val, self.best_epoch = self.best_val[index], self.best_epoch[index]

    def _restrict_sampler(self) -> None:
        """Let the datamodule's sampler draw batches for the kept starts only (no gathering
        of batches that would be thrown away; each kept start keeps its own order)."""
        if self.kept_copies is None or self._trainer is None:
            return
        sampler = getattr(getattr(self.trainer, "datamodule", None), "copy_sampler", None)
        if sampler is not None:
            sampler.keep_copies(self.kept_copies)

    def on_train_start(self) -> None:
        self._restrict_sampler()  # a run resumed after the restarts' selection

    @torch.no_grad()
    def _update_best_copies(self, val_loss: torch.Tensor) -> None:
        """Keep each copy's weights at its lowest validation loss so far (its best checkpoint)."""
        parameters = {name: value.detach() for name, value in self.model.named_parameters()}
        if self.best_parameters is None:
            self.best_parameters = {name: value.clone() for name, value in parameters.items()}
            self.best_val = torch.full_like(val_loss.cpu(), float("inf"))
            self.best_epoch = torch.full((self.n_copies,), -1, dtype=torch.long)
        loss = val_loss.detach().cpu()
        improved = torch.isfinite(loss) & (loss < self.best_val)
        if not bool(improved.any()):
            return
        for name, value in parameters.items():
            mask = improved.to(value.device).view(-1, *[1] * (value.ndim - 1))
            self.best_parameters[name] = torch.where(mask, value, self.best_parameters[name])
        self.best_val = torch.where(improved, loss, self.best_val)
        self.best_epoch = torch.where(improved, torch.full_like(self.best_epoch, self.current_epoch), self.best_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.is_replicated:
            return
        checkpoint["facrnn_copies"] = {
            "n_copies": self.n_copies,
            "history": {split: stack_history(entries) for split, entries in self.copy_history.items()},
            "best_parameters": self.best_parameters,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "restart_record": self.restart_record,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("facrnn_copies")
        if state is None or not self.is_replicated:
            return
        self.restart_record = state["restart_record"]
        if self.restart_record is not None and self.n_copies != state["n_copies"]:
            # saved after the restarts' selection: drop the same starts before the weights load
            self.model.keep(self.kept_copies)
        self.copy_history = {split: unstack_history(stacked) for split, stacked in state["history"].items()}
        self.best_parameters, self.best_val, self.best_epoch = state["best_parameters"], state["best_val"], state["best_epoch"]

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
        if self.is_replicated:
            self.copy_history["val"].append((self.current_epoch, self.global_step, means.detach().cpu()))
            self._update_best_copies(means[0])
            means = finite_copy_mean(means)
        self._publish("val", means)

    def _plain_backward_is_equivalent(self) -> bool:
        """Whether ``loss.backward()`` does all that ``manual_backward`` would: one process,
        32-bit precision (no loss scaling) and no callback or hook on the backward pass.
        Skipping Lightning's backward hooks saves ~0.2 ms of a ~2 ms step (benchmarks/README.md)."""
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.utilities.model_helpers import is_overridden

        trainer = self.trainer
        if trainer.world_size > 1 or type(trainer.precision_plugin) is not Precision:
            return False
        hooks = ("on_before_backward", "on_after_backward")
        if any(is_overridden(hook, self, FacRNNModule) for hook in (*hooks, "backward")):
            return False
        return not any(is_overridden(hook, callback, pl.Callback) for callback in trainer.callbacks for hook in hooks)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Batches of in-memory tensors already on the device need no per-step traversal.
        batches = batch if isinstance(batch, list) else [batch]
        if all(
            isinstance(one, dict) and all(isinstance(v, torch.Tensor) and v.device == device for v in one.values())
            for one in batches
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_fit_start(self) -> None:
        self._plain_backward = self._plain_backward_is_equivalent()
        if self.is_replicated and self.trainer.world_size > 1:
            raise ConfigError(
                f"model.replicas={self.hparams.replicas}, model.restarts={self.hparams.restarts} with "
                f"{self.trainer.world_size} processes: batched copies train in one process; expected "
                "trainer=cpu or trainer=gpu (or replicas=1 restarts=1 under DDP)"
            )
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


def stack_history(entries: list[tuple[int, int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-epoch ``(epoch, step, means (terms, C))`` entries as three tensors: one checkpoint
    record instead of thousands (saving a list of 5,000 small tensors takes ~0.2 s)."""
    if not entries:
        return {"epochs": torch.zeros(0, dtype=torch.long), "steps": torch.zeros(0, dtype=torch.long), "means": torch.zeros(0)}
    return {
        "epochs": torch.tensor([epoch for epoch, _, _ in entries]),
        "steps": torch.tensor([step for _, step, _ in entries]),
        "means": torch.stack([means for _, _, means in entries]),
    }


def unstack_history(stacked: dict[str, torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
    """Inverse of :func:`stack_history`."""
    return [
        (int(epoch), int(step), means)
        for epoch, step, means in zip(stacked["epochs"].tolist(), stacked["steps"].tolist(), stacked["means"])
    ]


def finite_copy_mean(means: torch.Tensor) -> torch.Tensor:
    """Mean over the copies (last dimension) with a finite value of every term; ``(terms, C) -> (terms,)``."""
    finite = torch.isfinite(means).all(0)
    return means[:, finite].mean(-1) if bool(finite.any()) else means.mean(-1)


__all__ = ["FacRNNModule", "LIKELIHOODS", "LOSS_TERMS", "finite_copy_mean"]
