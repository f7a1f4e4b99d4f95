"""gmt_model: the GMTRouter library (pure: torch, PyG, numpy, pyarrow).

Public API::

    from gmt_model import GMTRouter, RoutingError, build_graph, train, evaluate, load_checkpoint, load_router
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "GMTRouter",
    "RoutingError",
    "TrainConfig",
    "load_train_config",
    "build_graph",
    "read_graph",
    "train",
    "evaluate",
    "load_checkpoint",
    "load_router",
    "FormatError",
    "__version__",
]

# Lazy attributes: importing the package stays cheap (no torch) until a heavy name is used.
_LAZY = {
    "GMTRouter": ("router", "GMTRouter"),
    "RoutingError": ("errors", "RoutingError"),
    "TrainConfig": ("config", "TrainConfig"),
    "load_train_config": ("config", "load_train_config"),
    "build_graph": ("graph", "build_graph"),
    "read_graph": ("graph", "read_graph"),
    "train": ("training", "train"),
    "evaluate": ("evaluation", "evaluate"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "load_router": ("registry", "load_router"),
    "FormatError": ("data", "FormatError"),
    # not in __all__ (it imports mlflow): the MLflow model code of registered routers imports it from here,
    # so models registered today keep loading whatever module the class lives in
    "GMTRouterPyfunc": ("registry", "GMTRouterPyfunc"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gmt_model' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import load_checkpoint
    from .config import TrainConfig, load_train_config
    from .data import FormatError
    from .errors import RoutingError
    from .evaluation import evaluate
    from .graph import build_graph, read_graph
    from .registry import load_router
    from .router import GMTRouter
    from .training import train
