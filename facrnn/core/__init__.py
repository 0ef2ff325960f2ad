"""Core mathematics, no training loop and no files: the low-rank RNN VAE
(:mod:`~facrnn.core.model`), its batched copies (:mod:`~facrnn.core.copies`), the observation
models (:mod:`~facrnn.core.observation`), the loss terms (:mod:`~facrnn.core.losses`), the
partial-correlation estimators
(:mod:`~facrnn.core.partial_correlation`) and latent groupings (:mod:`~facrnn.core.grouping`).

Imports only :mod:`facrnn.errors` of the project (README "Layout").
"""
