"""The settings schemas (facrnn/training/settings.py, datamodules/settings.py): each rule raises
one one-line ConfigError naming its key, wherever the settings come from (a composed config,
FacRNNModule's arguments, a datamodule built in Python); OmegaConf refuses values of the wrong
type when a config is composed; the schemas' defaults are the constructors'; every shipped
config composes with its schema and instantiates."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from datamodules.base import RecordingDataModule
from datamodules.from_file import FromFileDataModule
from datamodules.settings import DATAMODULE_SCHEMAS, DataModuleSettings, FromFileSettings, check_history_fits, trial_length
from datamodules.synthetic import SyntheticDataModule
from facrnn.errors import ConfigError
from facrnn.training.module import FacRNNModule
from facrnn.training.settings import (
    ModelSettings,
    TrainerSettings,
    check_train_config,
    composition_error,
    validate_model_settings,
)
from tests.helpers import CONFIG_DIR, compose_config, run_script

# ------------------------------------------------------------------ every rule, once

#: (model settings, the one message); every rule of ModelSettings
MODEL_RULES: list[tuple[dict[str, Any], str]] = [
    (
        {"group_sizes": [2, 3]},
        "model.group_sizes=[2, 3] sums to 5 but model.latent_dim=6: expected the group sizes to sum to the latent dimension K",
    ),
    ({"group_sizes": []}, "model.group_sizes=[]: expected a non-empty list of positive integers"),
    (
        {"n_groups": 4},
        "model.n_groups=4 does not divide model.latent_dim=6: expected equal groups, or give unequal sizes as "
        "model.group_sizes=[...]",
    ),
    (
        {"n_groups": 3, "group_rank": 3},
        "model.n_groups=3 x model.group_rank=3 = 9 but model.latent_dim=6: expected them to agree "
        "(or set model.latent_dim=null)",
    ),
    ({"latent_dim": 0}, "model.latent_dim=0, model.n_groups=2: expected positive integers"),
    (
        {"latent_dim": None},
        "model.group_sizes is null: expected model.latent_dim and model.n_groups (or an explicit model.group_sizes=[3,3])",
    ),
    ({"beta": -1.0}, "model.beta=-1: expected a non-negative weight of the partial correlation penalty (a number >= 0)"),
    ({"beta": -0.25}, "model.beta=-0.25: expected a non-negative weight of the partial correlation penalty (a number >= 0)"),
    ({"beta": "abc"}, "model.beta='abc': expected a non-negative weight of the partial correlation penalty (a number >= 0)"),
    ({"alpha": -0.5}, "model.alpha=-0.5: expected a non-negative weight of the overlap penalty (a number >= 0)"),
    ({"lr": 0.0}, "model.lr=0: expected a learning rate > 0 (a positive number)"),
    ({"lr": float("inf")}, "model.lr=inf: expected a learning rate > 0 (a positive number)"),
    ({"weight_decay": -0.1}, "model.weight_decay=-0.1: expected a non-negative weight decay (a number >= 0)"),
    ({"history": 0}, "model.history=0: expected the number of encoder history lags (a positive integer)"),
    ({"history": 1.5}, "model.history=1.5: expected the number of encoder history lags (a positive integer)"),
    ({"hidden_dim": 0}, "model.hidden_dim=0: expected the hidden width of the MLP encoder/decoder (a positive integer)"),
    ({"width_samples": 0}, "model.width_samples=0: expected the M of the posterior width, or null (a positive integer)"),
    ({"replicas": 0}, "model.replicas=0: expected the number of seeds trained at once (a positive integer)"),
    ({"replicas": True}, "model.replicas=True: expected the number of seeds trained at once (a positive integer)"),
    ({"restarts": 0}, "model.restarts=0: expected the number of starts per seed (a positive integer)"),
    (
        {"restart_epochs": 0},
        "model.restart_epochs=0: expected the epochs before the restarts' selection, or null (a positive integer)",
    ),
    (
        {"beta_warmup_epochs": -1},
        "model.beta_warmup_epochs=-1: expected the epochs of the beta ramp (0: off) (an integer >= 0)",
    ),
    (
        {"beta_warmup_epochs": 2.5},
        "model.beta_warmup_epochs=2.5: expected the epochs of the beta ramp (0: off) (an integer >= 0)",
    ),
    (
        {"nonfinite_skip_limit": -1},
        "model.nonfinite_skip_limit=-1: expected the non-finite batches to skip (0: stop at the first) (an integer >= 0)",
    ),
    (
        {"restarts": 2, "decoder": "mlp"},
        "model.replicas=1, model.restarts=2 with an MLP encoder/decoder: copies are batched for the linear low-rank RNN "
        "only; expected model.encoder=linear model.decoder=linear (or one copy)",
    ),
    ({"likelihood": "bernoulli"}, "model.likelihood='bernoulli': expected one of gaussian, poisson"),
    ({"link": "tanh"}, "model.link='tanh': expected one of identity, relu, softplus"),
    ({"encoder": "rnn"}, "model.encoder='rnn': expected one of linear, mlp"),
    ({"decoder": "rnn"}, "model.decoder='rnn': expected one of linear, mlp"),
    ({"optimizer": "sgd"}, "model.optimizer='sgd': expected one of adam, adamw"),
    (
        {"likelihood": "poisson"},
        "model.link='identity' with model.likelihood=poisson: expected model.link=softplus (a positive Poisson rate)",
    ),
    (
        {"alpha": 1.0, "encoder": "mlp"},
        "model.alpha=1 with an MLP encoder/decoder: the overlap penalty needs W = B A; expected model.alpha=0 or "
        "model.encoder=linear model.decoder=linear",
    ),
]

DATAMODULE_RULES: list[tuple[dict[str, Any], str]] = [
    ({"batch_size": 0}, "datamodule.batch_size=0: expected the minibatch size (a positive integer)"),
    ({"batch_size": 2.5}, "datamodule.batch_size=2.5: expected the minibatch size (a positive integer)"),
    ({"split": "random"}, "datamodule.split='random': expected one of even_odd, trials, all, blocks"),
    ({"nan_policy": "ignore"}, "datamodule.nan_policy='ignore': expected one of ['error', 'drop', 'interpolate']"),
]

TRAINER_RULES: list[tuple[dict[str, Any], str]] = [
    ({"max_epochs": 0}, "trainer.max_epochs=0: expected a positive number of epochs (or -1: no limit)"),
    ({"max_epochs": -2}, "trainer.max_epochs=-2: expected a positive number of epochs (or -1: no limit)"),
    (
        {"check_val_every_n_epoch": 0},
        "trainer.check_val_every_n_epoch=0: expected a validation interval in epochs (a positive integer)",
    ),
]


def ids(cases: list[tuple[dict[str, Any], str]]) -> list[str]:
    return [" ".join(f"{key}={value!r}" for key, value in values.items()) for values, _ in cases]


def assert_one_line(error: pytest.ExceptionInfo[ConfigError], message: str) -> None:
    assert str(error.value) == message
    assert "\n" not in message and re.match(r"^(model|datamodule|trainer)\.\w+", message), message


@pytest.mark.parametrize(("values", "message"), MODEL_RULES, ids=ids(MODEL_RULES))
def test_every_model_rule_is_one_line_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ModelSettings(**values)
    assert_one_line(error, message)
    with pytest.raises(ConfigError) as again:  # FacRNNModule's arguments: n_neurons, n_train, seed are not settings
        validate_model_settings({"n_neurons": 5, "n_train": 100, "seed": 0, **values})
    assert str(again.value) == message


@pytest.mark.parametrize(("values", "message"), MODEL_RULES, ids=ids(MODEL_RULES))
def test_facrnn_module_checks_its_arguments_by_the_same_rules(values: dict[str, Any], message: str) -> None:
    """A Python user building FacRNNModule directly gets the config check's message."""
    with pytest.raises(ConfigError) as error:
        FacRNNModule(n_neurons=5, n_train=100, **values)
    assert str(error.value) == message


@pytest.mark.parametrize(("values", "message"), DATAMODULE_RULES, ids=ids(DATAMODULE_RULES))
def test_every_datamodule_rule_is_one_line_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        DataModuleSettings(**values)
    assert_one_line(error, message)
    with pytest.raises(ConfigError) as built:  # a datamodule built in Python: the same rule, the same message
        SyntheticDataModule(**values)
    assert str(built.value) == message


@pytest.mark.parametrize(("values", "message"), TRAINER_RULES, ids=ids(TRAINER_RULES))
def test_every_trainer_rule_is_one_line_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainerSettings(**values)
    assert_one_line(error, message)


def test_defaults_pass_and_give_the_group_sizes() -> None:
    assert ModelSettings().resolved_group_sizes == [3, 3]
    assert validate_model_settings({"latent_dim": None, "n_groups": 2, "group_rank": 2}) == [2, 2]
    assert validate_model_settings({"group_sizes": [2, 4]}) == [2, 4]
    DataModuleSettings()
    TrainerSettings(max_epochs=-1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.beta=-1"],
            "model.beta=-1: expected a non-negative weight of the partial correlation penalty (a number >= 0)",
        ),
        (["datamodule.nan_policy=ignore"], DATAMODULE_RULES[3][1]),
        (
            ["trainer.max_epoch=5"],
            "trainer.max_epoch: not an argument of pytorch_lightning.Trainer; expected trainer.max_epochs",
        ),
        (
            ["model.history=3", "datamodule.n_steps=3"],
            "model.history=3: datamodule.n_steps=3 gives trials of 3 bins; expected fewer history lags than bins per trial "
            "(at most 2)",
        ),
    ],
    ids=["model", "datamodule", "trainer key", "history"],
)
def test_the_config_check_raises_the_schema_messages(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        check_train_config(compose_config("train", overrides, tmp_path))
    assert str(error.value) == message


def test_history_vs_trial_length_has_one_message_at_config_time_and_in_setup(tmp_path: Path) -> None:
    assert trial_length({"n_steps": 400}) == (400, "datamodule.n_steps=400")
    assert trial_length({"frames": [10, 60]}) == (50, "datamodule.frames=[10, 60]")
    assert trial_length({"path": None, "simulation": {"n_frames": 300}}) == (300, "datamodule.simulation.n_frames=300")
    assert trial_length({"path": "s.nwb", "window_ms": [-250.0, 450.0], "bin_size_ms": 20.0}) == (
        35,
        "datamodule.window_ms=[-250, 450] in bins of datamodule.bin_size_ms=20",
    )
    assert trial_length({"path": "x.npz"}) is None
    check_history_fits(399, 400, "datamodule.n_steps=400")
    with pytest.raises(ConfigError) as at_config_time:
        check_history_fits(400, 400, "datamodule.n_steps=400")
    path = tmp_path / "trials.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(6, 4, 3)))
    with pytest.raises(ConfigError) as in_setup:
        FromFileDataModule(path=str(path), batch_size=2, split="all", history=4).setup()
    tail = "gives trials of {n} bins; expected fewer history lags than bins per trial (at most {m})"
    assert str(at_config_time.value) == "model.history=400: datamodule.n_steps=400 " + tail.format(n=400, m=399)
    assert str(in_setup.value).startswith("model.history=4: ") and str(in_setup.value).endswith(tail.format(n=4, m=3))
    assert str(path) in str(in_setup.value)


# ----------------------------------------------------------- types, when composing


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.beta=abc", "model.beta='abc': expected a value of type float (ModelSettings.beta)"),
        ("model.latent_dim=2.5", "model.latent_dim=2.5: expected a value of type int | None (ModelSettings.latent_dim)"),
        ("model.beta=null", "model.beta=None: expected a value of type float (ModelSettings.beta)"),
        (
            "model.group_sizes=[2,x]",
            "model.group_sizes[1]='x': expected a value of type int (an element of ModelSettings.group_sizes)",
        ),
        ("model.bet=1", "model.bet: not a key of ModelSettings; expected model.beta"),
        (
            "datamodule.batch_size=1.5",
            "datamodule.batch_size=1.5: expected a value of type int (SyntheticSettings.batch_size)",
        ),
        ("datamodule.n_step=9", "datamodule.n_step: not a key of SyntheticSettings; expected datamodule.n_steps"),
        (
            "trainer.max_epochs=many",
            "trainer.max_epochs='many': expected a value of type int | None (TrainerSettings.max_epochs)",
        ),
    ],
)
def test_schema_type_errors_name_the_key(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("train", [override], tmp_path)
    key = override.split("=", 1)[0]
    line = composition_error(error.value)
    assert line is not None and str(line).startswith(key) and str(line) == message
    assert composition_error(ValueError("not a config error")) is None


def test_cli_type_error_names_the_key_without_traceback(tmp_path: Path) -> None:
    result = run_script("train.py", ["model.latent_dim=2.5"], tmp_path)
    assert result.returncode == 1
    assert "model.latent_dim" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------- defaults, composition


def signature_defaults(function: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in ("self", *skip) and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }


def schema_defaults(schema: type, skip: tuple[str, ...] = ("_target_",)) -> dict[str, Any]:
    defaults = {}
    for entry in fields(schema):
        if entry.name in skip:
            continue
        default = entry.default_factory() if entry.default_factory is not MISSING else entry.default
        defaults[entry.name] = default
    return defaults


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_schema_defaults_are_the_constructors_defaults() -> None:
    assert schema_defaults(ModelSettings) == signature_defaults(FacRNNModule.__init__, skip=("n_neurons", "n_train", "seed"))
    assert schema_defaults(DataModuleSettings) == signature_defaults(RecordingDataModule.__init__)
    trainer = signature_defaults(pl.Trainer.__init__)
    assert {key: trainer[key] for key in schema_defaults(TrainerSettings)} == schema_defaults(TrainerSettings)
    shared = {entry.name for entry in fields(DataModuleSettings)}
    for name, schema in DATAMODULE_SCHEMAS.items():
        target = hydra.utils.get_class(schema._target_) if schema is not DataModuleSettings else RecordingDataModule
        arguments = signature_defaults(target.__init__)
        own = schema_defaults(schema, skip=tuple(shared))
        assert own == {key: "???" if arguments[key] is inspect.Parameter.empty else plain(arguments[key]) for key in own}, name
        if schema is not FromFileSettings:  # the others build without arguments
            built = target()
            shared_defaults = (schema.batch_size, schema.split, schema.nan_policy)
            assert (built.batch_size, built.split, built.nan_policy) == shared_defaults, name


@pytest.mark.parametrize("name", sorted(path.stem for path in (Path(CONFIG_DIR) / "datamodule").glob("*.yaml")))
def test_every_datamodule_config_composes_with_its_schema_and_instantiates(name: str, tmp_path: Path) -> None:
    overrides = [f"datamodule={name}"] + (["datamodule.path=data.npz"] if name == "from_file" else [])
    cfg = compose_config("train", overrides, tmp_path)
    assert OmegaConf.get_type(cfg.datamodule) is DATAMODULE_SCHEMAS[name]
    shipped = yaml.safe_load((Path(CONFIG_DIR) / "datamodule" / f"{name}.yaml").read_text())
    assert cfg.datamodule._target_ == shipped["_target_"] == DATAMODULE_SCHEMAS[name]._target_
    datamodule = hydra.utils.instantiate(cfg.datamodule, _convert_="all")
    assert isinstance(datamodule, RecordingDataModule)
    assert (datamodule.batch_size, datamodule.split) == (cfg.datamodule.batch_size, cfg.datamodule.split)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=lrrnn"],
        ["model=facrnn_full"],
        ["experiment=mouse_voltage"],
        ["+model.extra_key=1"],
        ["trainer=ddp"],
        ["debug=fdr"],
    ],
)
def test_a_composed_config_is_typed_and_instantiates(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_config("train", overrides, tmp_path)
    assert OmegaConf.get_type(cfg.model) is ModelSettings and OmegaConf.get_type(cfg.trainer) is TrainerSettings
    assert isinstance(cfg.model.beta, float) and isinstance(cfg.model.latent_dim, int)
    if "+model.extra_key=1" in overrides:
        assert cfg.model.extra_key == 1  # added keys still compose (and are ignored by the check)
        check_train_config(cfg)
        return
    settings = OmegaConf.to_object(cfg.model)
    assert isinstance(settings, ModelSettings)
    assert sum(settings.resolved_group_sizes) == cfg.model.latent_dim
    check_train_config(cfg)
    module = hydra.utils.instantiate(cfg.model, n_neurons=5, n_train=100, _convert_="all")
    assert module.group_sizes == settings.resolved_group_sizes
