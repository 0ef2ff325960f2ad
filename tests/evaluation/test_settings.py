"""EvalSettings: every evaluation setting in one checked dataclass."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings

SETTING_ERRORS = [
    ({"split": "valid"}, "split='valid': expected one of train, val, test"),
    ({"n_mc": 0}, "n_mc=0: expected the number of posterior samples per point (a positive integer)"),
    ({"n_mc": 2.5}, "n_mc=2.5: expected the number of posterior samples per point (a positive integer)"),
    ({"n_mc": True}, "n_mc=True: expected the number of posterior samples per point (a positive integer)"),
    ({"rollout_steps": -1}, "rollout_steps=-1: expected the longest rollout horizon k (a positive integer)"),
    ({"checkpoint": ""}, "checkpoint='': expected best, last or a .ckpt path"),
    ({"checkpoint": None}, "checkpoint=None: expected best, last or a .ckpt path"),
]


@pytest.mark.parametrize(("changes", "message"), SETTING_ERRORS, ids=[str(case[0]) for case in SETTING_ERRORS])
def test_bad_settings_are_one_line_errors_naming_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        EvalSettings(**changes)
    assert str(error.value) == message
    with pytest.raises(ConfigError):
        EvalSettings().with_changes(**changes)


def test_settings_from_the_evaluate_config() -> None:
    assert EvalSettings.from_config(OmegaConf.create({})) == EvalSettings()
    cfg = OmegaConf.create(
        {
            "split": "val",
            "checkpoint": "last",
            "n_mc": 2,
            "eval_seed": 5,
            "rollout_steps": 3,
            "dynamics": False,
            "figures": False,
            "run_dir": "RUN",
            "threads": 1,
        }
    )
    assert EvalSettings.from_config(cfg) == EvalSettings("val", "last", 2, 5, 3, False, False)
    assert EvalSettings.from_config(OmegaConf.create({"eval_seed": None})).seed == 0
    with pytest.raises(ConfigError, match=r"^split=None: expected one of train, val, test$"):
        EvalSettings.from_config(OmegaConf.create({"split": None}))
