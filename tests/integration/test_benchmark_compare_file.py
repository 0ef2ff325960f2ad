"""``benchmarks.pc_train --compare-file``: another version of the PC module, loaded beside this one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import facrnn.core.partial_correlation as partial_correlation
from benchmarks.pc_train import load_minibatch_estimator


def test_compare_file_loads_a_separate_copy_that_computes_the_same(tmp_path: Path) -> None:
    copy = tmp_path / "partial_correlation_copy.py"
    copy.write_text(Path(partial_correlation.__file__).read_text())
    estimator = load_minibatch_estimator(copy)
    assert estimator is not partial_correlation.partial_correlation_minibatch
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(32, 4, generator=generator)
    samples = means + 0.5 * torch.randn(32, 4, generator=generator)
    expected = partial_correlation.partial_correlation_minibatch(samples, means, 0.5, [2, 2], 100)
    assert estimator(samples, means, 0.5, [2, 2], 100).item() == expected.item()


def test_compare_file_that_is_not_a_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="notes.txt"):
        load_minibatch_estimator(tmp_path / "notes.txt")
