"""Figures: each function draws arrays it is given into the PNG file it is given.

Uses :mod:`facrnn.evaluation` result types; knows nothing of run directories.
"""
