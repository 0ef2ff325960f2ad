"""The training loader: InMemoryLoader against the DataLoader it replaces, and BinDataset's
gather of a whole epoch of batches at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.base import BatchIndexSampler, BinDataset, InMemoryLoader, batches_as_they_are
from datamodules.sampling import GroupedBatchSampler
from datamodules.synthetic import SyntheticDataModule
from tests.datamodules.test_datamodules import TINY


def tiny_dataset(n: int = 37) -> BinDataset:
    generator = torch.Generator().manual_seed(0)
    return BinDataset({"x": torch.randn(n, 5, generator=generator), "encoder_input": torch.randn(n, 3, generator=generator)})


def grouped_sampler(n: int, batch_size: int) -> GroupedBatchSampler:
    return GroupedBatchSampler(BatchIndexSampler(n, batch_size, shuffle=True), 0)


def test_a_list_of_batches_is_gathered_as_each_batch_alone() -> None:
    dataset = tiny_dataset()
    indices = list(torch.randperm(37, generator=torch.Generator().manual_seed(1)).split(8))  # 4 x 8 and 5
    batches = dataset[indices]
    assert [len(batch["x"]) for batch in batches] == [8, 8, 8, 8, 5]
    for batch, index in zip(batches, indices):
        assert set(batch) == {"x", "encoder_input"}
        for key, value in dataset.tensors.items():
            assert torch.equal(batch[key], value[index])
            assert batch[key].is_contiguous()
    # (copies, batch) indices are not 1-D: each batch indexed on its own
    copies = dataset[[torch.arange(6).view(2, 3)]]
    assert copies[0]["x"].shape == (2, 3, 5)
    assert torch.equal(copies[0]["x"], dataset.tensors["x"][torch.arange(6).view(2, 3)])


@pytest.mark.parametrize("batch_size", [8, 37, 64])
def test_in_memory_loader_yields_what_the_data_loader_did_and_draws_the_same_numbers(batch_size: int) -> None:
    dataset = tiny_dataset()
    loader = DataLoader(
        dataset, sampler=grouped_sampler(37, batch_size), batch_size=None, num_workers=0, collate_fn=batches_as_they_are
    )
    ours = InMemoryLoader(dataset, grouped_sampler(37, batch_size))
    assert len(ours) == len(loader) == 1
    for epoch in range(3):
        torch.manual_seed(epoch)
        expected = list(loader)
        after_expected = torch.rand(4)
        torch.manual_seed(epoch)
        got = list(ours)
        after_got = torch.rand(4)
        assert len(got) == len(expected)
        for got_call, expected_call in zip(got, expected):
            assert len(got_call) == len(expected_call) == -(-37 // batch_size)
            for got_batch, expected_batch in zip(got_call, expected_call):
                for key in expected_batch:
                    assert torch.equal(got_batch[key], expected_batch[key])
        # the noise drawn after the batches (training) is the same as with a DataLoader
        assert torch.equal(after_got, after_expected)


def test_the_datamodule_trains_from_an_in_memory_loader_that_lightning_can_reshuffle(tmp_path: Path) -> None:
    datamodule = SyntheticDataModule(cache_dir=str(tmp_path), batch_size=32, **TINY)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    assert isinstance(loader, InMemoryLoader)
    assert len(loader) == 5  # one batch per call unless configured
    assert callable(getattr(loader.sampler, "set_epoch", None))  # Lightning's per-epoch hook
    datamodule.configure_training(batches_per_call=0)
    (call,) = list(datamodule.train_dataloader())
    assert [len(batch["x"]) for batch in call] == [32] * 4 + [7]
    assert isinstance(datamodule.val_dataloader(), DataLoader)
