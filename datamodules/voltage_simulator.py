"""Simulated widefield voltage imaging of mouse dorsal cortex (DESIGN §4): the built-in
default of ``experiment=mouse_voltage``, since no public recording of the paper exists.

The recipe, with ground truth kept:

- **Mask**: a bilateral dorsal-cortex outline, two hemispheres separated by a midline gap
  (1,608 pixels inside a 50 × 45 frame; anterior at the top, row 0).
- **Latents**: ``G`` independent groups (default 2 of 2 dimensions). Each group is a noisy
  Stuart-Landau (Hopf) oscillator — a limit cycle whose amplitude and phase wander with the
  noise, like cortical slow oscillations (default 2 Hz posterior, 5 Hz anterior) — read out
  in a skewed basis so the group's two dimensions are correlated (``within_corr``). Its
  states lie near a ring: non-Gaussian, which is what lets the groups be identified from
  their independence (Gaussian latents, e.g. linear damped oscillators, are not: any
  rotation of whitened Gaussian latents is independent too). Groups use independent noise,
  so they are exactly independent. Every latent column is z-scored.
- **Loadings** ``A`` (P, K): smooth, non-negative, bilateral Gaussian footprints; the groups
  occupy different cortical regions (default: group 1 posterior — visual and retrosplenial;
  group 2 anterior — motor and somatosensory) whose tails overlap.
- **Observations**: ``x_t = A z_t + noise`` in ΔF/F (%): white pixel noise, optionally
  smoothed in space (``noise_smoothing`` pixels), scaled so that the summed signal
  variance over the mask divided by the summed noise variance equals ``snr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (row, column) centres in normalised coordinates (x: -1 left .. 1 right, y: -1 anterior ..
# 1 posterior), mirrored across the midline with the given right/left weights, and a width.
# Group 1: posterior (visual cortex; retrosplenial, medial). Group 2: anterior (motor;
# somatosensory, lateral, left-weighted).
FOOTPRINTS = (
    ((0.55, 0.50, 0.24, 1.0, 1.0), (0.30, 0.14, 0.18, 1.0, 1.0)),
    ((-0.55, 0.32, 0.24, 1.0, 1.0), (-0.10, 0.68, 0.20, 1.0, 0.6)),
)
FREQUENCIES_HZ = (2.0, 5.0)
RELAXATIONS = (4.0, 4.0)
LATENT_NOISE = (0.6, 0.8)


def cortex_mask(height: int = 50, width: int = 45, gap: float = 0.05) -> np.ndarray:
    """Bilateral dorsal-cortex mask ``(height, width)`` bool, anterior at row 0.

    Each hemisphere is an ellipse that narrows towards the front; ``gap`` (in units of the
    half width) separates them at the midline.
    """
    if height < 8 or width < 8:
        raise ValueError(f"mask size {height}x{width}: expected at least 8x8 pixels")
    y = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    x = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    yy, xx = np.meshgrid(y, x, indexing="ij")
    half_width = 0.5 * (1.0 - 0.3 * np.clip(-yy, 0.0, None) ** 2)
    inside = np.zeros((height, width), dtype=bool)
    for side in (-1.0, 1.0):
        inside |= ((xx - side * 0.5) / half_width) ** 2 + (yy / 0.97) ** 2 <= 1.0
    inside &= np.abs(xx) >= gap
    return inside


def footprint_maps(mask: np.ndarray, footprints: Sequence[Sequence[Sequence[float]]] = FOOTPRINTS) -> np.ndarray:
    """Smooth loading maps ``(K, H, W)`` of every latent dimension (zero outside the mask).

    ``footprints[g][k] = (y, x, width, right_weight, left_weight)``: a Gaussian bump at
    normalised ``(y, ±x)`` in each hemisphere, maximum 1.
    """
    height, width = mask.shape
    y = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    x = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    yy, xx = np.meshgrid(y, x, indexing="ij")
    maps = []
    for group in footprints:
        for centre_y, centre_x, spread, right, left in group:
            bump = sum(
                weight * np.exp(-((yy - centre_y) ** 2 + (xx - side * centre_x) ** 2) / (2 * spread**2))
                for side, weight in ((1.0, right), (-1.0, left))
            )
            bump = np.where(mask, bump, 0.0)
            maps.append(bump / bump.max())
    return np.stack(maps)


def oscillator_latents(
    n_frames: int,
    fs: float,
    frequency: float,
    within_corr: float,
    rng: np.random.Generator,
    relaxation: float = 4.0,
    noise: float = 0.6,
    substeps: int = 4,
) -> np.ndarray:
    """One group's latents ``(n_frames, 2)``: a noisy Stuart-Landau (Hopf) oscillator.

    ``dy = [(relaxation (1 - |y|^2) + i 2 pi frequency) y] dt + noise dW`` in the complex
    plane, integrated by Euler-Maruyama with ``substeps`` steps per frame from a random
    phase on the limit cycle, after a one-second burn-in. Its states lie near the unit
    circle (a non-Gaussian, ring-shaped distribution; its amplitude and phase wander with
    the noise); they are read out in the skewed basis
    ``z = [[1, 0], [c, sqrt(1 - c^2)]] y`` so that the two columns have correlation near
    ``c = within_corr``.
    """
    dt = 1.0 / (fs * substeps)
    omega = 2.0 * np.pi * frequency
    n_burn = int(round(fs))
    kicks = (
        noise
        * np.sqrt(dt)
        * (
            rng.standard_normal(((n_frames + n_burn) * substeps,))
            + 1j * rng.standard_normal(((n_frames + n_burn) * substeps,))
        )
    )
    state = complex(np.exp(2j * np.pi * rng.uniform()))
    states = np.empty(n_frames + n_burn, dtype=complex)
    for frame in range(n_frames + n_burn):
        states[frame] = state
        for step in range(frame * substeps, (frame + 1) * substeps):
            state = state + (relaxation * (1.0 - abs(state) ** 2) + 1j * omega) * state * dt + kicks[step]
    states = states[n_burn:]
    pairs = np.stack([states.real, states.imag], axis=1)
    skew = np.array([[1.0, 0.0], [within_corr, np.sqrt(1.0 - within_corr**2)]])
    return pairs @ skew.T


def smooth_frames(frames: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``(T, H, W)`` frames within ``mask`` (normalised convolution)."""
    if sigma <= 0:
        return frames
    from scipy.ndimage import gaussian_filter

    weight = gaussian_filter(mask.astype(np.float64), sigma)
    weight[~mask] = 1.0
    smoothed = gaussian_filter(np.where(mask, frames, 0.0), (0, sigma, sigma))
    return np.where(mask, smoothed / weight, 0.0)


def simulate_voltage_imaging(
    data_seed: int = 0,
    n_frames: int = 6000,
    fs: float = 100.0,
    height: int = 50,
    width: int = 45,
    snr: float = 1.0,
    noise_smoothing: float = 1.0,
    within_corr: float = 0.6,
    frequencies: Sequence[float] = FREQUENCIES_HZ,
    relaxations: Sequence[float] = RELAXATIONS,
    latent_noise: Sequence[float] = LATENT_NOISE,
    amplitude: float = 0.5,
) -> dict[str, np.ndarray]:
    """A widefield voltage-imaging recording with two independent latent groups.

    Parameters
    ----------
    data_seed : int
        Seed of every random draw: the same seed gives the same arrays.
    n_frames, fs : int, float
        Length and frame rate (Hz).
    height, width : int
        Frame size of the mask.
    snr : float
        Signal-to-noise ratio (power): summed signal variance over the mask / summed noise
        variance.
    noise_smoothing : float
        Spatial correlation length of the noise (Gaussian sigma, pixels); 0 = white.
    within_corr : float
        Correlation of the two latent dimensions within a group.
    frequencies, relaxations, latent_noise : sequences of float
        Per group: oscillation frequency (Hz), amplitude relaxation rate (1/s) and noise
        strength of its Stuart-Landau oscillator (:func:`oscillator_latents`).
    amplitude : float
        Peak signal standard deviation, ΔF/F in %.

    Returns
    -------
    dict with ``traces`` (T, P) float32 ΔF/F (%) of the mask pixels in row-major order,
    ``mask`` (H, W) bool, ``fs`` (), ``latents`` (T, K) float32, ``A`` (P, K) loadings
    (``traces = latents @ A.T + offset + noise``), ``offset`` (P,) zeros, ``group_sizes`` (G,).
    """
    if not len(frequencies) == len(relaxations) == len(latent_noise) == len(FOOTPRINTS):
        raise ValueError(
            f"frequencies={list(frequencies)}, relaxations={list(relaxations)}, latent_noise={list(latent_noise)}: "
            f"expected one value per group ({len(FOOTPRINTS)} groups)"
        )
    if snr <= 0 or fs <= 0 or n_frames < 2:
        raise ValueError(f"snr={snr}, fs={fs}, n_frames={n_frames}: expected positive values and at least 2 frames")
    if not -1.0 < within_corr < 1.0:
        raise ValueError(f"within_corr={within_corr}: expected a correlation in (-1, 1)")
    rng = np.random.default_rng(int(data_seed))
    mask = cortex_mask(height, width)
    maps = footprint_maps(mask)
    loadings = amplitude * maps[:, mask].T  # (P, K)
    latents = np.concatenate(
        [
            oscillator_latents(n_frames, fs, f, within_corr, rng, relaxation=r, noise=noise_level)
            for f, r, noise_level in zip(frequencies, relaxations, latent_noise)
        ],
        axis=1,
    )
    latents = (latents - latents.mean(0)) / latents.std(0)
    signal = latents @ loadings.T
    noise_frames = smooth_frames(rng.standard_normal((n_frames, height, width)), mask, noise_smoothing)
    noise = noise_frames[:, mask]
    noise *= np.sqrt(signal.var(0).sum() / (snr * noise.var(0).sum()))
    return {
        "traces": (signal + noise).astype(np.float32),
        "mask": mask,
        "fs": np.array(float(fs)),
        "latents": latents.astype(np.float32),
        "A": loadings,
        "offset": np.zeros(loadings.shape[0]),
        "group_sizes": np.array([2] * len(FOOTPRINTS)),
    }


def traces_to_movie(traces: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Pixel traces ``(T, P)`` (row-major order of ``mask``) to a movie ``(T, H, W)``."""
    movie = np.full((traces.shape[0], *mask.shape), fill, dtype=traces.dtype)
    movie[:, mask] = traces
    return movie


__all__ = ["cortex_mask", "footprint_maps", "oscillator_latents", "simulate_voltage_imaging", "traces_to_movie"]
