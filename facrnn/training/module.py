"""One LightningModule for every trained variant (facrnn, lrrnn, bdrnn, facrnn_full):
they differ only in grouping, ``beta`` and ``alpha`` (see ``conf/model/``)."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from facrnn.core.copies import ReplicatedLowRankRNN, build_copies
from facrnn.core.fused_step import fused_batch_unsupported_reason, fused_loss_and_backward, fused_model_unsupported_reason
from facrnn.core.grouping import block_mask
from facrnn.core.losses import LOSS_TERMS, gaussian_kl, overlap_penalty
from facrnn.core.model import LowRankRNN
from facrnn.core.partial_correlation import partial_correlation_minibatch
from facrnn.core.rollout import forced_rollout, forcing_pattern
from facrnn.errors import ConfigError
from facrnn.training.adam_step import fused_adam_step, fused_adam_unsupported_reason
from facrnn.training.compiled_step import CompiledFusedStep, compile_decision
from facrnn.training.copies import CHECKPOINT_KEY, CopyTracker
from facrnn.training.fast_loop import (
    EpochMeans,
    EpochPublisher,
    batch_on_device,
    direct_step_is_equivalent,
    plain_backward_is_equivalent,
)
from facrnn.training.nonfinite import NonfiniteLossPolicy
from facrnn.training.settings import OPTIMIZERS, validate_model_settings

logger = logging.getLogger(__name__)


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

    gathered = torch.cat(distributed_functional.all_gather(tensor.contiguous()), dim=0)
    return with_contiguous_gradient(gathered)


def with_contiguous_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, its gradient made contiguous on the way back into its ``grad_fn``.

    The backward of ``all_gather`` hands the rows of each rank (slices of the incoming
    gradient) to an all-to-all, and gloo sums non-contiguous tensors wrongly; a gradient that
    arrives as a transposed view (the PC term's backward) must be made dense first.
    """
    if tensor.requires_grad:
        tensor.register_hook(torch.Tensor.contiguous)
    return tensor


def stack_terms(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss terms of :data:`LOSS_TERMS` stacked, detached: ``(terms,)`` or ``(terms, C)``."""
    return torch.stack([terms[name].detach() for name in LOSS_TERMS])


class FacRNNModule(pl.LightningModule):
    """Trains a :class:`~facrnn.core.model.LowRankRNN` VAE with the FacRNN loss.

    The module is the loss, the steps and the optimizer; the batched copies' bookkeeping is
    :class:`~facrnn.training.copies.CopyTracker` (``self.copies``), the non-finite-loss policy
    :class:`~facrnn.training.nonfinite.NonfiniteLossPolicy` (``self.nonfinite``) and the
    one-process logging shortcuts :mod:`facrnn.training.fast_loop`.

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
    rollout_window : int
        1 (default): one-step training, every bin decoded from its own encoded state. ``W > 1``:
        multi-step training on windows of ``W`` consecutive bins (docs/generative.md): the
        state of a window's first bin is its encoded sample, later states are the latent map's
        own predictions, the NLL is taken over the window's training bins; KL over them, the
        PC term on the windows' first bins (a minibatch of training bins as in one-step
        training). ``datamodule.batch_size`` then counts windows.
    rollout_interval : int, optional
        Sparse teacher forcing: force the state to the encoded sample every ``tau`` bins of a
        window (at training bins); None: only the first bin (free running over the window);
        1: every training bin (the one-step terms of those bins).
    rollout_forcing : float
        Generalized teacher forcing ``alpha`` in [0, 1]: at the other training bins the state
        is ``(1 - alpha) s + alpha z``; 0 (default) is sparse teacher forcing.
    rollout_window_fraction : float
        Share of the windows trained on per epoch, a fresh random subset each epoch (read by
        the datamodule, :meth:`~datamodules.base.RecordingDataModule.configure_training`): 1
        (default) = a window at every training bin, so each bin is decoded about ``W`` times
        per epoch; ``1 / W`` = about once, the cost of one-step training per epoch, for long
        recordings.
    gradients : {"fused", "autograd"}
        ``fused`` (default): one-step batches of the linear model (plain or batched copies,
        one process) get their loss and gradients from the hand-derived forward and backward
        of :mod:`facrnn.core.fused_step` (the same terms bit for bit, gradients to round-off)
        and AdamW's kernel is called directly (:mod:`facrnn.training.adam_step`); everything
        else (MLP variants, rollout windows, DDP, hooks on the backward or optimizer step)
        uses autograd. ``autograd``: autograd everywhere (the reference path).
    compile_step : {"auto", "always", "never"}
        Whether the fused step is compiled by ``torch.compile``
        (:mod:`facrnn.training.compiled_step`, with the AdamW update; ~2x faster per step on
        CPU, after a one-off compilation of ~30-45 s, ~2.5 s from torch's cache): ``auto`` (default) for runs of at
        least :data:`~facrnn.training.compiled_step.AUTO_MIN_STEPS` optimizer steps on CPU
        with a C++ compiler, ``always``, ``never``. Terms and gradients agree with the eager
        step to round-off.
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
        rollout_window: int = 1,
        rollout_interval: int | None = None,
        rollout_forcing: float = 0.0,
        rollout_window_fraction: float = 1.0,
        gradients: str = "fused",
        compile_step: str = "auto",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if n_train < 2:
            raise ValueError(f"n_train={n_train}: expected at least 2 training samples")
        if seed is None:
            seed = int(torch.initial_seed() % 2**31)
        self.save_hyperparameters()
        # every rule of a model config (facrnn.training.settings.ModelSettings), as train.py checks it
        sizes = validate_model_settings(self.hparams)
        self.group_sizes = sizes

        def make_model() -> LowRankRNN:
            return LowRankRNN(
                n_neurons,
                sizes,
                width_samples or n_train,
                link=link,
                encoder=encoder,
                decoder=decoder,
                hidden_dim=hidden_dim,
                likelihood=likelihood,
                history=history,
            )

        self.model: LowRankRNN | ReplicatedLowRankRNN
        if replicas * restarts == 1:
            self.model = make_model()
        else:
            self.model = build_copies(make_model, seed, replicas, restarts)
        self.copies = CopyTracker(self)  # batched copies' bookkeeping, saved in checkpoints
        self.nonfinite = NonfiniteLossPolicy(LOSS_TERMS, nonfinite_skip_limit)
        self._publisher = EpochPublisher(LOSS_TERMS)
        self._plain_backward = False  # decided in on_fit_start
        self._fused_gradients = self._direct_step = False  # decided in on_fit_start
        self._compiled_step: CompiledFusedStep | None = None  # decided at the first fused step
        self._compile_decided = False
        self.register_buffer("block_mask", block_mask(sizes), persistent=False)
        self._train_means = EpochMeans()  # per training epoch, over optimizer steps
        self._val_means = EpochMeans()  # per validation, over samples
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
        ``beta`` overrides ``model.beta`` in ``loss`` (the warm-up ramp). A batch of rollout
        windows (it has ``target_mask``) goes to :meth:`rollout_loss_terms`.
        """
        windows = "target_mask" in batch
        sample_ndim = 3 if windows else 2  # (n, W, N) windows or (n, N) bins, per copy
        if self.is_replicated and batch["x"].ndim == sample_ndim:
            batch = {key: value.expand(self.n_copies, *value.shape) for key, value in batch.items()}
        elif self.is_replicated and batch["x"].shape[0] != self.n_copies:
            # a sampler still drawing for every initial copy (not the datamodule's): keep the kept ones' rows
            batch = {key: value[self.copies.kept_copies] for key, value in batch.items()}
        beta = float(self.hparams.beta) if beta is None else beta
        if windows:
            return self.rollout_loss_terms(batch, beta)
        means = self.model.encode(batch["encoder_input"])
        samples = self.model.sample(means)
        reconstruction = self.model.decode(samples, batch.get("external_input"))
        nll = self.model.observation.nll(batch["x"], reconstruction, self.model.log_noise_std)
        kl = gaussian_kl(means, self.width)
        return self._combine(nll, kl, samples, means, beta)

    def _combine(
        self, nll: torch.Tensor, kl: torch.Tensor, samples: torch.Tensor, means: torch.Tensor, beta: float
    ) -> dict[str, torch.Tensor]:
        """The loss terms from ``nll``, ``kl`` and the PC term of ``samples``/``means`` ``(..., n, K)``."""
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

    def rollout_loss_terms(self, batch: dict[str, torch.Tensor], beta: float) -> dict[str, torch.Tensor]:
        """Loss terms of a batch of rollout windows (``model.rollout_window > 1``).

        ``batch``: ``x``, ``encoder_input`` (and ``external_input``) ``(..., n, W, N)``,
        ``target_mask`` ``(..., n, W)`` (training bins), ``past`` ``(..., n, W, L, N)`` for
        ``L > 1``. States from :func:`facrnn.core.rollout.forced_rollout`; NLL and KL averaged
        over the training bins, the PC term on the windows' first bins.
        """
        mask = batch["target_mask"]
        *lead, n_windows, window, n_neurons = batch["x"].shape

        def bins(tensor: torch.Tensor) -> torch.Tensor:  # (..., n, W, D) -> (..., n W, D)
            return tensor.reshape(*lead, n_windows * window, tensor.shape[-1])

        means = self.model.encode(bins(batch["encoder_input"]))  # (..., n W, K)
        samples = self.model.sample(means)
        samples_windows = samples.reshape(*lead, n_windows, window, -1)
        forced = forcing_pattern(window, self.hparams.rollout_interval, mask)
        forcing = float(self.hparams.rollout_forcing)
        mix = mask.to(samples.dtype) * forcing if forcing > 0 else 0.0
        states = forced_rollout(self.model, samples_windows, forced, mix, batch.get("past"), batch.get("external_input"))
        external_input = batch.get("external_input")
        reconstruction = self.model.decode(bins(states), None if external_input is None else bins(external_input))
        weights = mask.reshape(*lead, n_windows * window)
        nll = self.model.observation.nll(bins(batch["x"]), reconstruction, self.model.log_noise_std, weights=weights)
        kl = gaussian_kl(means, self.width, weights=weights)
        starts = slice(None, None, window)  # the first bin of every window
        return self._combine(nll, kl, samples[..., starts, :], means[..., starts, :], beta)

    # ------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], batch_idx: int) -> None:
        # Manual optimization (set in __init__): one zero_grad/backward/step per batch, without
        # the closure and hook chain of automatic optimization; by default the datamodule hands
        # a whole epoch of batches to one call (GroupedBatchSampler), which saves Lightning's
        # per-call overhead on every other step (benchmarks/README.md).
        batches = batch if isinstance(batch, list) else [batch]
        optimizer = self.optimizers()
        beta = self.training_beta()
        skips_batches = self.nonfinite.skip_limit > 0 and not self.is_replicated
        step_terms: list[torch.Tensor] = []  # each step's LOSS_TERMS, one after the other, detached
        direct_step = self._direct_step and fused_adam_unsupported_reason(optimizer.optimizer) is None
        # the batches of one call come from one loader: alike in keys, shapes, dtype and device
        fused = self._fused_gradients and fused_batch_unsupported_reason(self.model, batches[0]) is None
        if fused and not self._compile_decided:
            self._decide_compilation(len(batches))
        fused_step = self._compiled_step or fused_loss_and_backward
        # the compiled step can apply the AdamW update in its own kernels too
        compiled_update = (
            fused
            and self._compiled_step is not None
            and direct_step
            and not skips_batches
            and len(optimizer.optimizer.param_groups) == 1
        )
        # beta, alpha, n_train and block mask of the fused step
        step_settings = (beta, float(self.hparams.alpha), int(self.hparams.n_train), self.block_mask)
        partial_corr = self.hparams.beta > 0
        for one_batch in batches:
            if compiled_update:
                # Lightning's step counters kept, as around fused_adam_step below
                optimizer._on_before_step()
                terms = self._compiled_step.step_and_update(
                    self.model, one_batch, *step_settings, optimizer.optimizer, partial_corr=partial_corr
                )
                optimizer._on_after_step()
                # computed without autograd: no detach; stacked once per call, below
                step_terms.extend([terms[name] for name in LOSS_TERMS])
                continue
            if fused:
                # the same terms as loss_terms, gradients set in .grad by hand (no zero_grad needed)
                terms = fused_step(self.model, one_batch, *step_settings, partial_corr=partial_corr)
            else:
                terms = self.loss_terms(one_batch, beta=beta)
                optimizer.zero_grad()
                total = terms["loss"].sum()  # copies: the sum gives each its own gradient
                if self._plain_backward:
                    total.backward()
                else:
                    self.manual_backward(total)
            if skips_batches and not bool(torch.isfinite(terms["loss"])):
                optimizer.zero_grad()
                # the step this batch would have been
                self.nonfinite.skip_batch(stack_terms(terms), self.global_step + 1, self.current_epoch, self._trainer)
                continue
            if direct_step:  # Lightning's step counters kept, its strategy/precision wrappers skipped
                optimizer._on_before_step()
                fused_adam_step(optimizer.optimizer, checked=True)
                optimizer._on_after_step()
            else:
                optimizer.step()
            step_terms.extend([terms[name].detach() for name in LOSS_TERMS])
        if not step_terms:
            return
        # (steps, terms) or (steps, terms, C)
        call_terms = torch.stack(step_terms).unflatten(0, (-1, len(LOSS_TERMS)))
        # One host synchronisation per call (per epoch by default), not per step.
        if not self.is_replicated and not bool(torch.isfinite(call_terms).all()):
            raise self.nonfinite.error(call_terms, self.global_step, self.current_epoch, self._trainer)
        # Accumulate on device; logged once per epoch.
        self._train_means.add(call_terms.sum(0), call_terms.shape[0])

    def _decide_compilation(self, batches_per_call: int) -> None:
        """Choose the compiled or the eager fused step (``model.compile_step``), once per fit."""
        self._compile_decided = True
        trainer = self.trainer
        # optimizer steps still to come: global_step counts them, a call makes batches_per_call
        planned = math.inf
        if trainer.max_steps not in (None, -1):
            planned = float(trainer.max_steps - self.global_step)
        if trainer.max_epochs not in (None, -1):
            epochs_left = max(int(trainer.max_epochs) - self.current_epoch, 0)
            planned = min(planned, epochs_left * float(trainer.num_training_batches) * batches_per_call)
        device = next(self.model.parameters()).device
        setting = self.hparams.get("compile_step", "auto")
        compile_it, why = compile_decision(setting, device, planned)
        if compile_it:
            self._compiled_step = CompiledFusedStep(fallback_on_error=setting != "always")
        logger.info("training step: %s (%s)", "compiled by torch.compile" if compile_it else "eager", why)

    def on_train_start(self) -> None:
        self.copies.restrict_sampler()  # a run resumed after the restarts' selection

    def on_train_epoch_end(self) -> None:
        means = self._train_means.pop()
        if means is None:
            return
        if self.is_replicated:
            means = self.copies.end_train_epoch(means)
        self._publisher.publish(self, "train", means)

    # ------------------------------------------------------------ validation
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
        self._val_means.add(stack_terms(terms) * batch_size, batch_size)

    def on_validation_epoch_end(self) -> None:
        means = self._val_means.pop()
        if means is None:
            return
        if self.is_replicated:
            means = self.copies.end_validation(means)
        self._publisher.publish(self, "val", means)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.is_replicated:
            checkpoint[CHECKPOINT_KEY] = self.copies.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None and self.is_replicated:
            self.copies.load_state(state)

    @classmethod
    def load(cls, checkpoint_path: str, map_location: str = "cpu") -> FacRNNModule:
        """Load a checkpoint safely; needs no other argument.

        The file is read by :func:`facrnn.training.checkpoint_files.read_checkpoint` (weights only, whatever
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; sizes bounded by the stored weights), then
        built by :meth:`from_checkpoint`.

        Raises
        ------
        CheckpointError
            The file is unusable (see :func:`~facrnn.training.checkpoint_files.read_checkpoint`).
        """
        from facrnn.training.checkpoint_files import read_checkpoint

        return cls.from_checkpoint(read_checkpoint(checkpoint_path, map_location=map_location))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> FacRNNModule:
        """Build the module a checkpoint dict (already read and checked) describes, with its weights.

        What ``load_from_checkpoint`` does, without reading any file: the module is built from
        ``hyper_parameters`` (keys that are no argument ignored), ``on_load_checkpoint`` restores the
        copies' bookkeeping, and the weights are loaded strictly.
        """
        arguments = inspect.signature(cls.__init__).parameters
        hyper_parameters = {key: value for key, value in checkpoint["hyper_parameters"].items() if key in arguments}
        module = cls(**hyper_parameters)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=True)
        tensors = [tensor for tensor in checkpoint["state_dict"].values() if isinstance(tensor, torch.Tensor)]
        device = tensors[0].device if tensors else None
        return module.to(device) if device is not None else module

    # ------------------------------------------------------------ set-up
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if batch_on_device(batch, device):  # in-memory tensors already there: no per-step traversal
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_fit_start(self) -> None:
        self._plain_backward = plain_backward_is_equivalent(self, FacRNNModule)
        # model.gradients=fused: hand-derived gradients and a direct AdamW step where they change
        # nothing but round-off (the loss terms are the same bit for bit, tests/core/test_fused_step.py)
        fused = self.hparams.get("gradients", "fused") == "fused"
        self._direct_step = fused and direct_step_is_equivalent(self, FacRNNModule)
        self._fused_gradients = (
            self._direct_step and self._plain_backward and fused_model_unsupported_reason(self.model) is None
        )
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


__all__ = ["FacRNNModule", "gather_across_ranks"]
