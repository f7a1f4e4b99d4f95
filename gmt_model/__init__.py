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
    "GMTRouter": ("serving.router", "GMTRouter"),
    "RoutingError": ("errors", "RoutingError"),
    "TrainConfig": ("method.config", "TrainConfig"),
    "load_train_config": ("method.config", "load_train_config"),
    "build_graph": ("data.graph_files", "build_graph"),
    "read_graph": ("method.graph", "read_graph"),
    "train": ("method.training", "train"),
    "evaluate": ("evaluation.report", "evaluate"),
    "load_checkpoint": ("method.checkpoint", "load_checkpoint"),
    "load_router": ("serving.registry", "load_router"),
    "FormatError": ("data.jsonl", "FormatError"),
    # not in __all__ (it imports mlflow): the MLflow model code of registered routers imports it from here,
    # so models registered today keep loading whatever module the class lives in
    "GMTRouterPyfunc": ("serving.registry", "GMTRouterPyfunc"),
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
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.config import TrainConfig, load_train_config
    from gmt_model.data.jsonl import FormatError
    from gmt_model.errors import RoutingError
    from gmt_model.evaluation.report import evaluate
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.graph import read_graph
    from gmt_model.serving.registry import load_router
    from gmt_model.serving.router import GMTRouter
    from gmt_model.method.training import train
