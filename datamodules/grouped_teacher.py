"""A grouped low-rank RNN teacher with known structure (DESIGN §4, second generator).

G groups of H latent dimensions each own a disjoint set of neurons: ``A`` (N, K) and ``B``
(K, N) are block-diagonal in (neurons, latents), so the overlap ``B A`` is block-diagonal and
the groups evolve exactly independently. Each group's map

``z_{g,t+1} = B_g phi(A_g z_{g,t} + a_g) + b_g + sigma_z eps``

is built so that its origin is an unstable fixed point with linearisation
``gain x R_g`` (``R_g`` an orthogonal matrix: rotations by incommensurate angles), so the
saturating nonlinearity turns it into a self-sustained oscillation. ``phi`` is the same map
the student model implies (:meth:`facrnn.core.model.LowRankRNN.latent_step`): ``tanh`` for
Gaussian observations ``x_t = A z_t + a + sigma_x eps``, ``tanh(softplus(.))`` for Poisson
counts ``x_t ~ Poisson(softplus(A z_t + a))``.
"""

from __future__ import annotations

import logging

import numpy as np

from datamodules.base import RecordingDataModule
from datamodules.recording import Recording, simulated_recording

log = logging.getLogger(__name__)

LIKELIHOODS = ("gaussian", "poisson")


def _softplus(values: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, values)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _rotation_like(size: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Orthogonal ``(size, size)``: a rotation by ``angle`` for size 2, random otherwise."""
    if size == 1:
        return -np.ones((1, 1))  # period-2 flip, the only bounded 1-D oscillation
    if size == 2:
        return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    blocks = np.zeros((size, size))
    for start in range(0, size - 1, 2):
        theta = angle * (1.0 + 0.37 * start)
        blocks[start : start + 2, start : start + 2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    if size % 2:
        blocks[-1, -1] = -1.0
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    return basis @ blocks @ basis.T


def generate_grouped_teacher(
    n_groups: int = 2,
    group_rank: int = 2,
    neurons_per_group: int = 40,
    n_steps: int = 2000,
    likelihood: str = "poisson",
    gain: float = 1.3,
    loading_scale: float = 1.0,
    bias: float = 0.0,
    process_noise: float = 0.01,
    observation_noise: float = 0.1,
    burn_in: int = 200,
    seed: int = 0,
    dynamics: str = "oscillator",
    dt: float = 0.1,
) -> dict[str, np.ndarray]:
    """Sample a neuron-disjoint grouped lrRNN teacher and a recording from it.

    Parameters
    ----------
    n_groups, group_rank : int
        ``G`` groups of ``H`` latent dimensions (``K = G H``).
    neurons_per_group : int
        Neurons owned by each group (``N = G x neurons_per_group``).
    n_steps : int
        Recorded bins ``T`` (after ``burn_in`` discarded ones).
    likelihood : {"gaussian", "poisson"}
    gain : float
        Magnitude of the eigenvalues of each group's linearisation at the origin (> 1 for a
        self-sustained oscillation).
    loading_scale : float
        Scale of the entries of ``A`` (so of the pre-activations).
    bias : float
        Mean of the per-neuron offsets ``a`` (Poisson: sets the base rate ``softplus(a)``).
    process_noise, observation_noise : float
        ``sigma_z`` of the latent dynamics, ``sigma_x`` of Gaussian observations.
    burn_in : int
    seed : int
    dynamics : {"oscillator", "chaotic"}
        ``oscillator``: every group runs its own lrRNN map (above). ``chaotic``: the groups'
        latents are the z-scored Lorenz and Thomas attractors of the paper's benchmark
        (alternating, ``group_rank`` must be 3, RK4 step ``dt``); each group's ``B_g, b_g``
        is then the least-squares fit of ``z_{g,t+1} ≈ B_g phi(A_g z_{g,t} + a_g) + b_g``.

    Returns
    -------
    dict with ``x`` (T, N) (counts for Poisson), ``latents`` (T, K), ``rates`` (T, N) (the
    noiseless observation mean), ``A`` (N, K), ``B`` (K, N), ``a`` (N,), ``b`` (K,),
    ``group_sizes`` (G,).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"datamodule.likelihood={likelihood!r}: expected one of {LIKELIHOODS}")
    if n_groups < 1 or group_rank < 1 or neurons_per_group < group_rank:
        raise ValueError(
            f"datamodule.n_groups={n_groups}, group_rank={group_rank}, neurons_per_group={neurons_per_group}: "
            "expected positive sizes with at least group_rank neurons per group"
        )
    if dynamics not in ("oscillator", "chaotic") or (dynamics == "chaotic" and group_rank != 3):
        raise ValueError(
            f"datamodule.dynamics={dynamics!r} with group_rank={group_rank}: expected 'oscillator', "
            "or 'chaotic' with group_rank=3"
        )
    rng = np.random.default_rng(seed)
    latent_dim, n_neurons = n_groups * group_rank, n_groups * neurons_per_group
    A = np.zeros((n_neurons, latent_dim))
    B = np.zeros((latent_dim, n_neurons))
    a = bias + 0.3 * rng.standard_normal(n_neurons)
    b = np.zeros(latent_dim)
    # phi(v) = tanh(v) (Gaussian) or tanh(softplus(v)) (Poisson); slope at the offsets a:
    if likelihood == "poisson":
        slope = (1.0 - np.tanh(_softplus(a)) ** 2) * _sigmoid(a)
        squash = lambda v: np.tanh(_softplus(v))  # noqa: E731
    else:
        slope = 1.0 - np.tanh(a) ** 2
        squash = np.tanh
    for group in range(n_groups):
        neurons = slice(group * neurons_per_group, (group + 1) * neurons_per_group)
        dims = slice(group * group_rank, (group + 1) * group_rank)
        loadings = loading_scale * rng.standard_normal((neurons_per_group, group_rank))
        angle = 2.0 * np.pi / (11.0 + 7.3 * group)  # incommensurate periods per group
        linear = gain * _rotation_like(group_rank, angle, rng)
        # B_g diag(phi'(a_g)) A_g = gain R_g (minimum-norm B_g), and the origin is a fixed point.
        A[neurons, dims] = loadings
        B[dims, neurons] = linear @ np.linalg.pinv(slope[neurons, None] * loadings)
        b[dims] = -B[dims, neurons] @ squash(a[neurons])
    if dynamics == "chaotic":
        latents = _chaotic_latents(n_groups, n_steps, dt)
        for group in range(n_groups):
            neurons = slice(group * neurons_per_group, (group + 1) * neurons_per_group)
            dims = slice(group * group_rank, (group + 1) * group_rank)
            features = squash(latents[:-1, dims] @ A[neurons, dims].T + a[neurons])
            design = np.concatenate([features, np.ones((n_steps - 1, 1))], axis=1)
            coefficients, *_ = np.linalg.lstsq(design, latents[1:, dims], rcond=None)
            B[dims, neurons], b[dims] = coefficients[:-1].T, coefficients[-1]
    else:
        state = 0.5 * rng.standard_normal(latent_dim)
        latents = np.empty((burn_in + n_steps, latent_dim))
        for step in range(burn_in + n_steps):
            latents[step] = state
            state = B @ squash(A @ state + a) + b + process_noise * rng.standard_normal(latent_dim)
        latents = latents[burn_in:]
    pre_activation = latents @ A.T + a
    if likelihood == "poisson":
        rates = _softplus(pre_activation)
        x = rng.poisson(rates).astype(np.float64)
    else:
        rates = pre_activation
        x = rates + observation_noise * rng.standard_normal(rates.shape)
    return {
        "x": x.astype(np.float32),
        "latents": latents.astype(np.float32),
        "rates": rates.astype(np.float32),
        "A": A,
        "B": B,
        "a": a,
        "b": b,
        "group_sizes": np.full(n_groups, group_rank),
    }


def _chaotic_latents(n_groups: int, n_steps: int, dt: float) -> np.ndarray:
    """Z-scored Lorenz, Thomas, Lorenz, ... trajectories side by side: ``(n_steps, 3 G)``."""
    from datamodules.synthetic import integrate_rk4, lorenz, thomas, zscore

    systems = []
    for group in range(n_groups):
        field, start = (lorenz, [1.0, 1.0, 1.0]) if group % 2 == 0 else (thomas, [0.1, 1.0, 1.0])
        start = np.asarray(start) + 0.1 * (group // 2)  # later copies start elsewhere
        systems.append(zscore(integrate_rk4(field, start, n_steps, dt)))
    return np.concatenate(systems, axis=1)


class GroupedTeacherDataModule(RecordingDataModule):
    """One long recording of :func:`generate_grouped_teacher` (even bins train, odd bins test).

    Ground truth kept: latents, ``A``, ``B``, group sizes. Use with
    ``model.likelihood=poisson model.link=softplus`` for the Poisson setting.
    """

    def __init__(
        self,
        n_groups: int = 2,
        group_rank: int = 2,
        neurons_per_group: int = 40,
        n_steps: int = 2000,
        likelihood: str = "poisson",
        gain: float = 1.3,
        loading_scale: float = 1.0,
        bias: float = 0.0,
        process_noise: float = 0.01,
        observation_noise: float = 0.1,
        data_seed: int = 0,
        dynamics: str = "oscillator",
        dt: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = {
            "n_groups": int(n_groups),
            "group_rank": int(group_rank),
            "neurons_per_group": int(neurons_per_group),
            "n_steps": int(n_steps),
            "likelihood": likelihood,
            "gain": float(gain),
            "loading_scale": float(loading_scale),
            "bias": float(bias),
            "process_noise": float(process_noise),
            "observation_noise": float(observation_noise),
            "seed": int(data_seed),
            "dynamics": dynamics,
            "dt": float(dt),
        }

    def load_recording(self) -> Recording:
        arrays = generate_grouped_teacher(**self.settings)
        source = f"grouped teacher ({self.settings['likelihood']}, seed={self.settings['seed']})"
        return simulated_recording(arrays, source, rates=arrays["rates"])
