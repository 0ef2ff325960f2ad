"""Evaluate a training run: ``python evaluate.py run_dir=RUN [checkpoint=best|last|PATH] [posthoc=ica|svd]``.

Writes ``RUN/metrics.json`` and ``RUN/figures/*.png``. See ``conf/evaluate.yaml`` and
:mod:`facrnn.cli.evaluate`.
"""

import gc

if __name__ == "__main__":
    # no cyclic collections while the modules below load: ~0.8 s of full collections over their
    # ~400,000 objects (benchmarks/README.md); frozen_garbage_collection() turns them back on
    gc.disable()

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from facrnn.cli.errors import check_command_line, check_composition, exit_on_error
from facrnn.cli.evaluate import evaluate
from facrnn.cli.process import frozen_garbage_collection


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    # the project's own errors end the run as `error: <message>`, exit status 1
    with exit_on_error():
        evaluate(cfg)


if __name__ == "__main__":
    # the imported modules (and, at exit, everything) out of the garbage collector's walks
    with frozen_garbage_collection():
        with exit_on_error():  # an override Hydra cannot parse, or a value a schema refuses: one line
            check_command_line(sys.argv[1:])
            check_composition(sys.argv[1:], "evaluate", Path(__file__).parent / "conf")
        main()
