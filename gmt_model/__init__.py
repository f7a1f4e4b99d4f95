"""gmt_model: the GMTRouter library (pure: torch, PyG, numpy, pyarrow)."""

__version__ = "0.1.0"
