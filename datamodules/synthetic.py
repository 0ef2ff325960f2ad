"""Synthetic benchmark of the paper (DESIGN §4): Lorenz + Thomas latents driving a
teacher low-rank RNN of N neurons. Generated deterministically from ``data_seed`` and
cached, so the teacher fit runs once per setting."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datamodules.base import RecordingDataModule
from datamodules.recording import Recording, simulated_recording

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def lorenz(state: np.ndarray, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> np.ndarray:
    """Lorenz vector field, ``(3,) -> (3,)``."""
    x, y, z = state
    return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])


def thomas(state: np.ndarray) -> np.ndarray:
    """Thomas-type vector field of the paper: ``dx = -sin y, dy = sin z, dz = sin x``."""
    x, y, z = state
    return np.array([-np.sin(y), np.sin(z), np.sin(x)])


def integrate_rk4(field: Callable[[np.ndarray], np.ndarray], start: np.ndarray, n_steps: int, dt: float) -> np.ndarray:
    """Classical Runge-Kutta integration; returns ``(n_steps, dim)`` including the start."""
    states = np.empty((n_steps, len(start)))
    state = np.asarray(start, dtype=np.float64)
    for step in range(n_steps):
        states[step] = state
        k1 = field(state)
        k2 = field(state + 0.5 * dt * k1)
        k3 = field(state + 0.5 * dt * k2)
        k4 = field(state + dt * k3)
        state = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return states


def zscore(values: np.ndarray) -> np.ndarray:
    """Z-score each column of ``(T, d)``."""
    return (values - values.mean(0)) / values.std(0)


def fit_teacher(
    latents: np.ndarray,
    n_neurons: int,
    inputs: np.ndarray,
    n_steps: int,
    lr: float,
    generator: torch.Generator,
) -> dict[str, np.ndarray]:
    """Fit ``z_{t+1} ≈ B (tanh(A z_t + a) + e_t) + b`` by full-batch MSE with AdamW.

    Parameters
    ----------
    latents : (T, K) array
    n_neurons : int
    inputs : (T, N) array
        External input ``e_t``.

    Returns
    -------
    dict with ``A`` (N, K), ``B`` (K, N), ``a`` (N,), ``b`` (K,), ``mse`` final loss.
    """
    z = torch.as_tensor(latents, dtype=torch.float32)
    e = torch.as_tensor(inputs, dtype=torch.float32)
    latent_dim = z.shape[1]
    A = (torch.randn((n_neurons, latent_dim), generator=generator) / latent_dim**0.5).requires_grad_()
    B = (torch.randn((latent_dim, n_neurons), generator=generator) / n_neurons**0.5).requires_grad_()
    a = torch.zeros(n_neurons, requires_grad=True)
    b = torch.zeros(latent_dim, requires_grad=True)
    optimizer = torch.optim.AdamW([A, B, a, b], lr=lr)
    for _ in range(n_steps):
        optimizer.zero_grad(set_to_none=True)
        prediction = (torch.tanh(z[:-1] @ A.T + a) + e[:-1]) @ B.T + b
        loss = torch.mean((prediction - z[1:]) ** 2)
        loss.backward()
        optimizer.step()
    return {
        "A": A.detach().numpy(),
        "B": B.detach().numpy(),
        "a": a.detach().numpy(),
        "b": b.detach().numpy(),
        "mse": np.array(float(loss.detach())),
    }


def generate_paper_benchmark(
    data_seed: int = 0,
    n_steps: int = 2000,
    dt: float = 0.1,
    n_neurons: int = 20,
    teacher_steps: int = 10_000,
    teacher_lr: float = 1e-3,
    observation_noise: float = 0.1,
    input_noise: float = 0.005,
) -> dict[str, np.ndarray]:
    """The paper's synthetic data set.

    Returns
    -------
    dict with ``x`` (T, N), ``latents`` (T, 6) z-scored Lorenz then Thomas coordinates,
    ``A`` (N, 6), ``B`` (6, N), ``a``, ``b``, ``inputs`` (T, N) teacher input ``e``,
    ``group_sizes`` [3, 3].
    """
    generator = torch.Generator().manual_seed(int(data_seed))
    lorenz_latents = zscore(integrate_rk4(lorenz, np.array([1.0, 1.0, 1.0]), n_steps, dt))
    thomas_latents = zscore(integrate_rk4(thomas, np.array([0.1, 1.0, 1.0]), n_steps, dt))
    latents = np.concatenate([lorenz_latents, thomas_latents], axis=1).astype(np.float32)
    inputs = input_noise * torch.randn((n_steps, n_neurons), generator=generator).numpy()
    teacher = fit_teacher(latents, n_neurons, inputs, teacher_steps, teacher_lr, generator)
    noise = torch.randn((n_steps, n_neurons), generator=generator).numpy()
    x = latents @ teacher["A"].T + teacher["a"] + observation_noise * noise
    return {
        "x": x.astype(np.float32),
        "latents": latents,
        "inputs": inputs.astype(np.float32),
        "group_sizes": np.array([3, 3]),
        **teacher,
    }


def cached(cache_dir: str | os.PathLike | None, name: str, settings: dict, build: Callable[[], dict]) -> dict[str, np.ndarray]:
    """Return ``build()``, cached as ``cache_dir/name-<hash of settings>.npz`` (no pickle)."""
    if cache_dir is None:
        return build()
    key = hashlib.sha1(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            log.info("synthetic data: loaded cached %s", path)
            return {k: stored[k] for k in stored.files}
    log.info("synthetic data: generating %s (runs once, then cached at %s)", name, path)
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)  # atomic: parallel jobs never read a half-written file
    return arrays


class SyntheticDataModule(RecordingDataModule):
    """The paper's synthetic benchmark; see :func:`generate_paper_benchmark`.

    The recording is one long sequence, split into even (train) and odd (held-out) bins
    by default.
    """

    def __init__(
        self,
        data_seed: int = 0,
        n_steps: int = 2000,
        dt: float = 0.1,
        n_neurons: int = 20,
        teacher_steps: int = 10_000,
        teacher_lr: float = 1e-3,
        observation_noise: float = 0.1,
        input_noise: float = 0.005,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = {
            "data_seed": int(data_seed),
            "n_steps": int(n_steps),
            "dt": float(dt),
            "n_neurons": int(n_neurons),
            "teacher_steps": int(teacher_steps),
            "teacher_lr": float(teacher_lr),
            "observation_noise": float(observation_noise),
            "input_noise": float(input_noise),
        }
        self.cache_dir = cache_dir

    def load_recording(self) -> Recording:
        arrays = cached(self.cache_dir, "synthetic_paper", self.settings, lambda: generate_paper_benchmark(**self.settings))
        return simulated_recording(arrays, f"synthetic benchmark (data_seed={self.settings['data_seed']})")
