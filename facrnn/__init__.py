"""FacRNN: factored low-rank RNNs fitted as VAEs with a partial correlation penalty."""

__version__ = "0.1.0"
