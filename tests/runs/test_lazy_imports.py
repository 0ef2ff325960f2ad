"""The training path (``train.py``, ``facrnn.runs.pipeline``, the datamodules it builds) imports
only what training needs: no NWB, HDF5, scikit-learn or pandas, and no plotting or
evaluation code beyond what pytorch_lightning itself loads (it brings matplotlib and
scipy.signal through torchmetrics). Every such import would cost each training process,
each job of a sweep, its start-up time. Checked in a fresh interpreter, after importing and
after a one-epoch run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

#: never loaded by a training run on the synthetic benchmark
ABSENT = ("pynwb", "hdmf", "h5py", "sklearn", "pandas", "seaborn")
#: not loaded beyond what `import pytorch_lightning` already loaded
NOT_ADDED = ("matplotlib", "scipy", "mpl_toolkits", "facrnn.plots", "facrnn.cli.compare", "facrnn.runs.outputs")
#: facrnn.evaluation modules the pipeline may import (its settings, read before training)
EVALUATION_ALLOWED = ("facrnn.evaluation", "facrnn.evaluation.settings")

PROBE = """
import json, sys, tempfile
from pathlib import Path

import pytorch_lightning  # noqa: F401  the baseline: what lightning itself loads
baseline = set(sys.modules)
import train  # noqa: F401  the script's own imports
import datamodules.synthetic, datamodules.from_file, facrnn.runs.pipeline  # noqa: E401,F401
imported = set(sys.modules)

from facrnn.runs.pipeline import train as run
from tests.helpers import TINY_DATA, compose_config

overrides = TINY_DATA + ["logger=csv", "threads=1", "evaluate=false", "trainer.max_epochs=1",
                         "~callbacks.progress_bar", "+trainer.enable_progress_bar=false"]
run(compose_config("train", overrides, Path(tempfile.mkdtemp())))
print(json.dumps({"baseline": sorted(baseline), "imported": sorted(imported), "trained": sorted(sys.modules)}))
"""


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(module for module in modules if any(module == name or module.startswith(name + ".") for name in names))


def test_training_path_loads_no_plotting_evaluation_or_file_format_code() -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    process = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    modules = json.loads(process.stdout.strip().splitlines()[-1])
    baseline = set(modules["baseline"])
    for stage in ("imported", "trained"):
        loaded = set(modules[stage])
        assert heavy(loaded, ABSENT) == [], stage
        assert heavy(loaded - baseline, NOT_ADDED) == [], stage
        evaluation = set(heavy(loaded, ("facrnn.evaluation",)))
        assert evaluation <= set(EVALUATION_ALLOWED), stage
