"""Scoring a trained model: the metrics of DESIGN §3, rollout dynamics, behaviour
alignment, the permutation analysis, the post-hoc baselines' transforms and the
:class:`~facrnn.evaluation.settings.EvalSettings` of an evaluation.

Works on models and arrays; reads and writes no run directory (that is :mod:`facrnn.runs`).
"""
