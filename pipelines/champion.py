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
(``champion_set_by``, ``champion_set_at``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["main", "previous_champion", "set_champion"]

CHAMPION = "champion"


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from gmt_model.serving.registry import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(client: Any, name: str) -> list[Any]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _champion(client: Any, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def previous_champion(client: Any, name: str) -> str:
    """The newest version below the current champion that passed its gate (tag ``promoted=true``)."""
    current = _champion(client, name)
    if current is None:
        raise ValueError(f"{name} has no champion to roll back")
    older = [v for v in _versions(client, name)
             if int(v.version) < int(current) and (v.tags or {}).get("promoted") == "true"]
    if not older:
        raise ValueError(f"{name}: no promoted version older than the champion v{current} to roll back to")
    return str(older[-1].version)


def set_champion(client: Any, name: str, version: str, *, reason: str) -> str | None:
    """Point ``champion`` at ``version``; returns the previous champion version."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ValueError(f"{name} has no version {version}") from None
    before = _champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "champion_set_by", reason)
    client.set_model_version_tag(name, version, "champion_set_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return before


def _update_local(dataset: str, name: str, version: str, tracking_uri: str | None) -> str:
    from assets.storage import DataStore, copy_tree, data_root
    from gmt_model.serving.registry import default_tracking_uri, download_checkpoint

    uri = tracking_uri or default_tracking_uri()
    ckpt = download_checkpoint(f"models:/{name}/{version}", uri)
    store = DataStore(data_root())
    with store.staging("routers", dataset) as tmp:
        import shutil

        shutil.rmtree(tmp)
        copy_tree(ckpt, tmp)
        path = store.commit(tmp, "routers", dataset, {
            "registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
            "alias": CHAMPION, "set_by": "pipelines.champion"})
    return str(path)


def _show(client: Any, name: str) -> None:
    versions = _versions(client, name)
    if not versions:
        raise ValueError(f"no registered model {name}")
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    print(f"{name}:")
    for v in versions:
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
