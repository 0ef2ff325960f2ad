"""FacRNN: factored low-rank RNNs fitted as VAEs with a partial correlation penalty."""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${facrnn.cwd:}` is the launch directory. Unlike `${hydra:runtime.cwd}` it also resolves
# when Hydra creates a multirun's sweep directory, before any job's runtime exists.
OmegaConf.register_new_resolver("facrnn.cwd", os.getcwd, replace=True)
