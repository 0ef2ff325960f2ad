"""``check_accelerator``: ``trainer=gpu`` (``ddp``, ``mps``) on a machine without one is a one-line
config error before any data are loaded, whatever torch build is installed (torch's probes are
monkeypatched)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from facrnn.errors import ConfigError
from facrnn.training.runtime import check_accelerator


def cuda(monkeypatch: pytest.MonkeyPatch, available: bool, build: str | None, count: int = 1) -> None:
    """Pretend torch was built with CUDA ``build`` (None: a CPU build) and ``count`` GPUs are visible."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)


def trainer(accelerator: object, devices: object = 1) -> object:
    return OmegaConf.create({"accelerator": accelerator, "devices": devices})


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "GPU"])
def test_gpu_with_a_cpu_build_of_torch(monkeypatch: pytest.MonkeyPatch, accelerator: str) -> None:
    cuda(monkeypatch, available=False, build=None)
    with pytest.raises(ConfigError) as error:
        check_accelerator(trainer(accelerator))
    assert str(error.value) == (
        f"trainer.accelerator={accelerator}: torch {torch.__version__} was built without CUDA; "
        "expected trainer=cpu on this machine, or install a CUDA build of torch"
    )


def test_gpu_with_a_cuda_build_but_no_gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda(monkeypatch, available=False, build="12.1")
    with pytest.raises(ConfigError) as error:
        check_accelerator({"accelerator": "gpu", "devices": 1})  # a plain dict works too
    message = str(error.value)
    assert message.startswith(f"trainer.accelerator=gpu: no GPU visible to torch {torch.__version__} (CUDA 12.1); ")
    assert "expected trainer=cpu on this machine" in message
    assert "\n" not in message


def test_gpu_available_passes_and_devices_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda(monkeypatch, available=True, build="12.1", count=2)
    check_accelerator(trainer("gpu"))
    check_accelerator(trainer("gpu", devices=2))
    for devices in (-1, "auto", [0, 1], "0,1"):  # left to Lightning
        check_accelerator(trainer("gpu", devices=devices))
    with pytest.raises(ConfigError) as error:
        check_accelerator(trainer("gpu", devices=4))  # trainer=ddp on a 2-GPU machine
    assert str(error.value) == (
        "trainer.devices=4 with trainer.accelerator=gpu: torch sees 2 GPUs; "
        "expected trainer.devices<=2 (or trainer.devices=-1: all of them)"
    )


@pytest.mark.parametrize("accelerator", ["cpu", "auto", None])
def test_other_accelerators_are_left_to_lightning(monkeypatch: pytest.MonkeyPatch, accelerator: object) -> None:
    cuda(monkeypatch, available=False, build=None)
    check_accelerator(trainer(accelerator))
    check_accelerator({})


def test_mps_without_an_mps_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match=r"^trainer\.accelerator=mps: no MPS device .*; expected trainer=cpu on this machine$"
    ):
        check_accelerator(trainer("mps"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    check_accelerator(trainer("mps"))


def test_the_shipped_gpu_trainers_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from tests.helpers import compose_config

    cuda(monkeypatch, available=False, build=None)
    for name in ("gpu", "ddp"):
        cfg = compose_config("train", [f"trainer={name}"], tmp_path)
        with pytest.raises(ConfigError, match=r"^trainer\.accelerator=gpu: torch .* was built without CUDA"):
            check_accelerator(cfg.trainer)
    check_accelerator(compose_config("train", ["trainer=cpu"], tmp_path).trainer)


def test_train_refuses_a_missing_gpu_before_loading_data(tiny_train_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from facrnn.runs import pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the accelerator check")

    monkeypatch.setattr(pipeline, "instantiate_datamodule", no_data)
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
        pipeline.train(tiny_train_cfg("trainer=gpu"))
