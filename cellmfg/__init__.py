"""cellmfg: shared domain definitions, data loading and model contracts (no TensorFlow here)."""

__version__ = "0.1.0"
