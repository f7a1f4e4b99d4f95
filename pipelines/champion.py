"""See, set or roll back the champion of a dataset's registered router (``gmtrouter-<dataset>``).

    python -m pipelines.champion show demo              # versions, aliases, gate tags
    python -m pipelines.champion rollback demo          # champion -> the previous promoted version
    python -m pipelines.champion set demo 3             # champion -> version 3
    python -m pipelines.champion rollback demo --update-local   # also refresh routers/demo/current

Uses ``MLFLOW_TRACKING_URI`` (``--tracking-uri`` overrides; the activated venv and
``.gmtrouter/services/env`` set it).  Routers that serve
``models:/gmtrouter-<dataset>@champion`` with ``--reload-interval`` (or get ``POST
/admin/reload``) switch to the new champion by themselves; ``--update-local`` also
replaces the pipeline's local copy ``<data root>/routers/<dataset>/current`` that
``gmtrouter serve --config`` loads.  Every change is tagged on the version
(``champion_set_by``, ``champion_set_at``).  The champion logic itself is ``assets.champion``; this is
its command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["main"]


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from gmt_model.serving.registry import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _update_local(dataset: str, name: str, version: str, tracking_uri: str | None) -> str:
    from assets.champion import CHAMPION, update_local_router
    from assets.storage import DataStore
    from gmt_model.serving.registry import default_tracking_uri, download_checkpoint

    ckpt = download_checkpoint(f"models:/{name}/{version}", tracking_uri or default_tracking_uri())
    return str(update_local_router(DataStore(dataset), ckpt, {
        "registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
        "alias": CHAMPION, "set_by": "pipelines.champion"}))


def _show(client: Any, name: str) -> None:
    from assets.champion import versions

    found = versions(client, name)
    if not found:
        raise ValueError(f"no registered model {name}")
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    print(f"{name}:")
    for v in found:
        t = v.tags or {}
        print(f"  v{v.version:<4} {','.join(aliases.get(str(v.version), [])) or '-':<22} "
              f"test_auc={t.get('test_auc', '?')[:6]:<7} promoted={t.get('promoted', '?'):<5} "
              f"run={t.get('dagster_run_id', '?')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.champion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("show", "rollback", "set"):
        p = sub.add_parser(cmd)
        p.add_argument("dataset")
        if cmd == "set":
            p.add_argument("version")
        if cmd != "show":
            p.add_argument("--update-local", action="store_true",
                           help="also replace <data root>/routers/<dataset>/current")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    from assets.champion import previous_champion, set_champion
    from gmt_model.serving.registry import RegistryError, registered_model_name

    try:
        name = registered_model_name(args.dataset)
        client = _client(args.tracking_uri)
        if args.cmd == "show":
            _show(client, name)
            return 0
        version = previous_champion(client, name) if args.cmd == "rollback" else str(args.version)
        before = set_champion(client, name, version, reason=args.cmd)
        print(f"{name}: champion v{before or '-'} -> v{version}")
        if args.update_local:
            print(f"local copy: {_update_local(args.dataset, name, version, args.tracking_uri)}")
    except (ValueError, MlflowException, RegistryError) as exc:
        print(f"error: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
