"""``gmtrouter`` command line: train / evaluate / infer / feedback / chat / serve / demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from .config import load_train_config
    from .graph import build_graph
    from .training import train

    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = load_train_config(args.config, overrides)
    paths = {k: v for k, v in cfg.split_paths().items() if Path(v).exists()}
    if "training" not in paths:
        raise SystemExit(f"error: training set not found: {cfg.split_paths()['training']} "
                         f"(set data_path.training_set in {args.config}, or run `gmtrouter demo --out ./data/demo`)")
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    log("=" * 70)
    log("GMTRouter Training")
    log("=" * 70)
    for split, p in paths.items():
        log(f"Loading {split} data from {p}...")
    g = build_graph(paths, relations=cfg.relations)
    c = g.counts()
    log(f"  Users: {c['user']}, Sessions/Queries/Responses: {c['session']}, LLMs: {c['llm']}")
    log(f"  Relations: {len(g.relations)}; training pairs: {c['pairs_training']}, valid pairs: {c['pairs_valid']}, "
        f"test pairs: {c['pairs_test']}")
    out_root = Path(args.out) if args.out else Path(cfg.checkpoint_root) / cfg.dataset_name
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc="training", unit="epoch", file=sys.stderr)

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        if bar is not None:
            bar.update(1)
            if "val_auc" in row:
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_auc=f"{row['val_auc']:.4f}")

    result = train(g, cfg, out_root, resume=not args.no_resume, callback=on_epoch)
    if bar is not None:
        bar.close()
    from .checkpoint import atomic_replace_dir

    target = cfg.model_dir
    if target.resolve() != result.best_dir.resolve():
        import shutil

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.rmtree(tmp)
        shutil.copytree(result.best_dir, tmp)
        atomic_replace_dir(tmp, target)
    summary = {"best_epoch": result.best_epoch, f"best_val_{cfg.objective}": result.best_metric,
               "device": result.device, "wall_time_s": round(result.wall_time_s, 2), "model": str(target)}
    if "test" in paths and not args.skip_test:
        from .checkpoint import load_checkpoint
        from .evaluation import evaluate

        report = evaluate(load_checkpoint(target).model, g, "test", n_resamples=args.resamples)
        summary["test_auc"] = report.methods["gmtrouter"].auc
        summary["test_accuracy"] = report.methods["gmtrouter"].accuracy
        log(report.to_markdown())
    log(f"Training completed! Best {cfg.objective}: {result.best_metric:.4f} at epoch {result.best_epoch}")
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .config import load_train_config
    from .evaluation import evaluate
    from .graph import build_graph

    cfg = load_train_config(args.config)
    ck = load_checkpoint(args.checkpoint or cfg.model_dir)
    paths = {k: v for k, v in cfg.split_paths().items() if Path(v).exists()}
    g = build_graph(paths, relations=ck.config.relations, user_ids=ck.users, llm_names=ck.llms)
    blind = load_checkpoint(args.blind).model if args.blind else None
    report = evaluate(ck.model, g, args.split, blind_model=blind, n_resamples=args.resamples)
    if args.output:
        report.to_json(args.output)
    print(report.to_markdown())
    return 0


def _router(args: argparse.Namespace):
    from .config import load_router_config
    from .router import GMTRouter

    cfg = load_router_config(args.config)
    if getattr(args, "device", None):
        cfg.device = args.device
    return GMTRouter(config=cfg)


def _read_queries(path: str) -> list[dict[str, Any]]:
    """Queries of a JSONL file; each carries its line number under ``_line``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path}:{n}: invalid JSON ({e.msg})")
            if isinstance(q, str):
                q = {"query_text": q}
            if not isinstance(q, dict):
                raise SystemExit(f"error: {path}:{n}: expected an object with query_text (and user_id)")
            if "query" in q and "query_text" not in q:
                q["query_text"] = q.pop("query")
            q["_line"] = n
            out.append(q)
    return out


def _infer(args: argparse.Namespace) -> int:
    from .router import RoutingError

    router = _router(args)
    if args.query is not None:
        queries = [{"query_text": args.query}]
    else:
        queries = _read_queries(args.input)
    lines = [q.pop("_line", None) for q in queries]
    for q in queries:
        q.setdefault("user_id", args.user_id)
        if args.session_id:
            q.setdefault("session_id", args.session_id)
    try:
        results = router.route_batch(queries)
    except RoutingError as e:
        if args.input:  # name the offending line
            for q, n in zip(queries, lines):
                try:
                    router.route_batch([q])
                except RoutingError as line_error:
                    raise SystemExit(f"error: {args.input}:{n}: {line_error}")
        raise SystemExit(f"error: {e}")
    if not args.route_only and router.config.endpoints:
        import httpx

        from .endpoints import MissingAPIKeyError, UpstreamError, chat_completion, load_endpoints

        endpoints = load_endpoints(router.config.endpoints)
        for q, r in zip(queries, results):
            ep = endpoints.get(r["model_name"])
            if ep is None:
                r["response"] = None
                r["note"] = f"no endpoint configured for {r['model_name']}: routed only"
                continue
            try:
                reply = chat_completion(ep, [{"role": "user", "content": q["query_text"]}])
            except (MissingAPIKeyError, UpstreamError, httpx.HTTPError) as e:
                raise SystemExit(f"error: calling {r['model_name']} at {ep.base_url}: {e}")
            r["response"] = reply["choices"][0]["message"]["content"]
    out = [dict(query=q["query_text"], user_id=q["user_id"], **r) for q, r in zip(queries, results)]
    text = json.dumps(out if args.input else out[0], indent=2, ensure_ascii=False)
    if args.output:
        tmp = Path(args.output).with_name(f".{Path(args.output).name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.output)
        print(f"wrote {len(out)} result(s) to {args.output}")
    else:
        print(text)
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from .router import RoutingError

    router = _router(args)
    if router.feedback_log is None:
        raise SystemExit(f"error: {args.config}: router.feedback_log is not set; feedback would not be stored")
    try:
        res = router.update_user_feedback(args.user_id, args.query, args.model, args.rating,
                                          session_id=args.session_id)
    except RoutingError as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(res, indent=2))
    return 0


def _serve(args: argparse.Namespace, chat: bool = False) -> int:
    from .endpoints import load_endpoints
    from .server import create_app, run_server

    router = _router(args)
    token = os.environ.get(args.auth_token_env) if args.auth_token_env else None
    app = create_app(router, endpoints=load_endpoints(router.config.endpoints or {}), auth_token=token,
                     feedback_log=router.feedback_log)
    url = f"http://{args.host}:{args.port}"
    print(f"gmtrouter {'chat page' if chat else 'server'} on {url}{'/chat' if chat else ''}", flush=True)
    run_server(app, args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import write_demo_dataset

    paths = write_demo_dataset(args.out, args.size, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmtrouter", description="GMTRouter: personalized LLM routing")
    p.add_argument("--log-level", default="WARNING")
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train from a seed-style training config")
    t.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)  # LLMRouter compatibility
    t.add_argument("--config", required=True)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: cuda when available)")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--out", default=None, help="run folder (default: checkpoint.root/<dataset>)")
    t.add_argument("--no-resume", action="store_true", help="ignore a periodic checkpoint in the run folder")
    t.add_argument("--skip-test", action="store_true")
    t.add_argument("--resamples", type=int, default=1000)
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="evaluation report (GMTRouter vs baselines) on a split")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--blind", default=None, help="checkpoint of a user-blind model to report beside")
    e.add_argument("--split", default="test")
    e.add_argument("--output", default=None, help="write the report JSON here")
    e.add_argument("--resamples", type=int, default=1000)
    e.set_defaults(func=_evaluate)

    i = sub.add_parser("infer", help="route (and answer) queries")
    i.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)
    i.add_argument("--config", required=True)
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--query")
    src.add_argument("--input", help="JSONL of {query_text, user_id?, session_id?, turn?, candidates?}")
    i.add_argument("--output")
    i.add_argument("--user-id", default="anonymous")
    i.add_argument("--session-id", default=None)
    i.add_argument("--route-only", action="store_true")
    i.add_argument("--device", default=None, help="cpu or cuda (default: router.device of the config)")
    i.set_defaults(func=_infer)

    f = sub.add_parser("feedback", help="record a rating (durable log + live user graph)")
    f.add_argument("--config", required=True)
    f.add_argument("--user-id", required=True)
    f.add_argument("--query", required=True)
    f.add_argument("--model", required=True)
    f.add_argument("--rating", type=float, required=True)
    f.add_argument("--session-id", default=None)
    f.set_defaults(func=_feedback)

    for name, chat in (("chat", True), ("serve", False)):
        s = sub.add_parser(name, help="chat page" if chat else "OpenAI-compatible routing server")
        s.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)
        s.add_argument("--config", required=True)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, default=8080 if chat else 8000)
        s.add_argument("--auth-token-env", default="GMTROUTER_AUTH_TOKEN",
                       help="environment variable holding the bearer token (unset: no auth)")
        s.set_defaults(func=lambda a, chat=chat: _serve(a, chat=chat))

    d = sub.add_parser("demo", help="write the offline demo dataset (GMTRouter JSONL splits)")
    d.add_argument("--out", default="./data/demo")
    d.add_argument("--size", default="tiny", choices=["tiny", "small", "medium", "large"])
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from .config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
