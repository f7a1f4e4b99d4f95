"""Where gmtrouter writes its data and finds its default configs.

- The data home is ``$GMTROUTER_HOME`` when set, else ``.gmtrouter`` in the
  working directory (for a repository checkout run from its root that is
  ``<repo>/.gmtrouter``).  It is never derived from where the package is
  installed, so an installed wheel never writes into ``site-packages``.
- The default configs (dataset sources, LLM descriptions, the seed training
  and routing YAMLs) ship inside the package (``gmt_model/configs``) and are
  read as package data.  The repository's top-level ``configs/`` folder holds
  the same files (a test fails when they differ); a relative default such as
  ``configs/datasets.yaml`` is read from the working directory when it exists
  there, so edits in a checkout take effect, and from the package otherwise.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["ENV_HOME", "HOME_DIRNAME", "data_root", "default_home", "package_config", "config_path"]

#: environment variable naming the data home
ENV_HOME = "GMTROUTER_HOME"
#: the data home's folder name in the working directory
HOME_DIRNAME = ".gmtrouter"
_CONFIGS = "configs"


def data_root(home: str | os.PathLike[str] | None = None, *, base: str | os.PathLike[str] | None = None) -> Path:
    """The data home, absolute: ``home`` when given, else ``$GMTROUTER_HOME``, else ``.gmtrouter`` in
    ``base`` (default: the working directory).

    The one resolver of the project: the CLI, the server and the registry call it with no ``base``; the
    pipeline (a folder of the repository, never installed) passes the repository as ``base``, so a run
    started from any folder writes to ``<repo>/.gmtrouter``, the same folder as a CLI run from the
    repository root.
    """
    if home:
        return Path(home).expanduser().resolve()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(base) if base is not None else Path.cwd()).joinpath(HOME_DIRNAME).resolve()


def default_home() -> Path:
    """``data_root()``: ``$GMTROUTER_HOME`` if set, else ``./.gmtrouter`` in the working directory."""
    return data_root()


def package_config(name: str | os.PathLike[str]) -> Path:
    """The package's default config ``name`` (e.g. ``datasets.yaml``, ``model_config_train/demo.yaml``)."""
    rel = Path(name)
    if rel.parts and rel.parts[0] == _CONFIGS:
        rel = Path(*rel.parts[1:])
    return Path(str(resources.files(__package__).joinpath(_CONFIGS, *rel.parts)))


def config_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as given when absolute or present from the working directory; a missing
    relative ``configs/...`` path falls back to the package's default copy."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not p.parts or p.parts[0] != _CONFIGS:
        return p
    packaged = package_config(p)
    return packaged if packaged.exists() else p
