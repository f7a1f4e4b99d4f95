"""Settings shared by the runs that schedules and sensors request (no Dagster definitions here).

``GMTROUTER_TRIGGERED_RUN_CONFIG``: a run config YAML file applied to every run a
schedule or a feedback sensor requests (e.g. fewer epochs, a stricter gate).  It
is read at each tick, so editing it needs no restart of the daemon; a missing or
malformed file fails that tick with a message naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ENV_TRIGGERED_RUN_CONFIG", "triggered_run_config"]

ENV_TRIGGERED_RUN_CONFIG = "GMTROUTER_TRIGGERED_RUN_CONFIG"


def triggered_run_config() -> dict[str, Any]:
    """The run config of triggered runs (``{}`` when ``$GMTROUTER_TRIGGERED_RUN_CONFIG`` is unset)."""
    import yaml

    path = os.environ.get(ENV_TRIGGERED_RUN_CONFIG, "").strip()
    if not path:
        return {}
    p = Path(path).expanduser()
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{ENV_TRIGGERED_RUN_CONFIG}={path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{ENV_TRIGGERED_RUN_CONFIG}={path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{ENV_TRIGGERED_RUN_CONFIG}={path}: a run config must be a mapping, "
                         f"got {type(doc).__name__}")
    return doc
