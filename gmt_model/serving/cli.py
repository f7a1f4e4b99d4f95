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

__all__ = ["CLIError", "main"]


class CLIError(Exception):
    """Bad command-line input (a flag, a file, a value): printed as one ``error:`` line, exit status 2."""


def _train(args: argparse.Namespace) -> int:
    from gmt_model.method.config import load_train_config
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.training import ResumeMismatchError, train

    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = load_train_config(args.config, overrides)
    if cfg.device:  # a device this machine lacks: one line now, not after loading the data
        from gmt_model.method.training import resolve_device

        resolve_device(cfg.device)
    paths = {k: v for k, v in cfg.split_paths().items() if Path(v).exists()}
    if "training" not in paths:
        raise CLIError(f"training set not found: {cfg.split_paths()['training']} "
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

    def on_start(done: int) -> None:
        nonlocal bar
        if done:
            log(f"resuming from epoch {done} ({out_root / 'last'}; --no-resume starts again from scratch)")
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs, initial=done, desc="training", unit="epoch", file=sys.stderr)

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        if bar is not None:
            bar.update(1)
            if "val_auc" in row:
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_auc=f"{row['val_auc']:.4f}")

    try:
        result = train(g, cfg, out_root, resume=not args.no_resume, callback=on_epoch, on_start=on_start)
    except ResumeMismatchError as e:
        raise CLIError(f"{e.folder} holds a run with a different configuration or data "
                         f"({'; '.join(e.changes[:6])}): use --no-resume to retrain from scratch, "
                         f"or --out to train into another folder") from None
    finally:
        if bar is not None:
            bar.close()
    # --out DIR: DIR is the run folder and DIR/best the model; the configured model
    # (model_path.save_model_path) is left alone.  Without --out the best checkpoint is
    # published to the configured model folder.
    target = result.best_dir if args.out else cfg.model_dir

    def publish() -> None:
        """Copy the best checkpoint to model_dir (atomically), unless it is that folder."""
        if target.resolve() == result.best_dir.resolve():
            return
        import shutil

        from gmt_model.atomic import replace_dir

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.rmtree(tmp)
        shutil.copytree(result.best_dir, tmp)
        replace_dir(tmp, target)

    if result.already_trained:
        # a finished run of this configuration: its result stays as it is
        print(f"already trained ({result.resumed_from} epochs): use --no-resume to retrain", file=sys.stderr)
        if not target.exists():  # the earlier run ended before copying it
            publish()
        elif not _same_checkpoint(target, result.best_dir):  # replaced since (e.g. by another run)
            print(f"note: {target} did not hold this run's best model: copied {result.best_dir} there again",
                  file=sys.stderr)
            publish()
        print(json.dumps({"already_trained": True, "epochs": result.resumed_from, "best_epoch": result.best_epoch,
                          f"best_val_{cfg.objective}": result.best_metric, "model": str(target)}, indent=2))
        return 0
    publish()
    summary = {"best_epoch": result.best_epoch, f"best_val_{cfg.objective}": result.best_metric,
               "device": result.device, "wall_time_s": round(result.wall_time_s, 2), "model": str(target)}
    if "test" in paths and not args.skip_test:
        from gmt_model.method.checkpoint import load_checkpoint
        from gmt_model.evaluation.report import evaluate

        progress = _EvalProgress("test", quiet=args.quiet)
        try:
            report = evaluate(load_checkpoint(target).model, g, "test", n_resamples=args.resamples,
                              progress=progress)
        finally:
            progress.close()
        summary["test_auc"] = report.methods["gmtrouter"].auc
        summary["test_accuracy"] = report.methods["gmtrouter"].accuracy
        log(report.to_markdown())
    log(f"Training completed! Best {cfg.objective}: {result.best_metric:.4f} at epoch {result.best_epoch}")
    print(json.dumps(summary, indent=2))
    return 0


class _EvalProgress:
    """A progress bar for ``evaluate(progress=...)`` on stderr (nothing when quiet)."""

    def __init__(self, split: str, quiet: bool = False) -> None:
        self.split, self.quiet, self.bar = split, quiet, None

    def __call__(self, step: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"evaluating ({self.split})", unit="step", file=sys.stderr)
        self.bar.set_postfix_str(step, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prepare_output(path: str) -> None:
    """Check an ``--output`` file's folder before the work: a missing folder is created, and said so."""
    folder = Path(path).parent
    if Path(path).is_dir():
        raise CLIError(f"--output {path}: is a folder (expected a file name)")
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"note: created the folder {folder} for --output", file=sys.stderr)
    elif not folder.is_dir():
        raise CLIError(f"--output {path}: {folder} is not a folder")


def _same_checkpoint(a: Path, b: Path) -> bool:
    """Whether two checkpoint folders hold the same model (their config.json lists every file's sha256)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    except OSError:
        return False


def _evaluate(args: argparse.Namespace) -> int:
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.config import load_train_config
    from gmt_model.evaluation.report import evaluate
    from gmt_model.data.graph_files import build_graph

    from gmt_model.method.schema import SPLITS

    if args.split not in SPLITS:
        raise CLIError(f"--split {args.split!r}: expected one of {', '.join(SPLITS)}")
    if args.output:
        _prepare_output(args.output)
    cfg = load_train_config(args.config)
    ck = load_checkpoint(args.checkpoint or cfg.model_dir)
    paths = {k: v for k, v in cfg.split_paths().items() if Path(v).exists()}
    g = build_graph(paths, relations=ck.config.relations, user_ids=ck.users, llm_names=ck.llms)
    blind = load_checkpoint(args.blind).model if args.blind else None
    progress = _EvalProgress(args.split)
    try:
        report = evaluate(ck.model, g, args.split, blind_model=blind, n_resamples=args.resamples, progress=progress)
    finally:
        progress.close()
    if args.output:
        report.to_json(args.output)
    print(report.to_markdown())
    return 0


def _router(args: argparse.Namespace):
    from gmt_model.method.config import load_router_config
    from gmt_model.serving.router import GMTRouter

    cfg = load_router_config(args.config)
    if getattr(args, "device", None):
        cfg.device = args.device
    if getattr(args, "_checkpoint", None):
        cfg.checkpoint = args._checkpoint
    if cfg.feedback_log and Path(cfg.feedback_log).is_dir():
        raise CLIError(f"{args.config}: router.feedback_log: {cfg.feedback_log} is a folder "
                       "(expected an SQLite file, created when missing)")
    return GMTRouter(config=cfg)


def _sqlite_error(e: Exception, what: str, tail: str = "") -> CLIError:
    """A one-line error for an SQLite failure (read-only, full disk, locked) on ``what``."""
    hint = " (is it read-only, or the disk full?)" if "readonly" in str(e) or "disk" in str(e) else ""
    return CLIError(f"{what}: {e}{hint}{tail}")


def _encoder_cache(router: Any) -> str:
    cache = getattr(getattr(router, "_encoder", None), "cache", None)
    path = getattr(cache, "path", None)
    return f"the embedding cache {path}" if path else "the embedding cache ($GMTROUTER_CACHE_DIR)"


def _read_queries(path: str) -> list[dict[str, Any]]:
    """Queries of a JSONL file; each carries its line number under ``_line``."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CLIError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") \
                    from None
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLIError(f"{path}:{n}: invalid JSON ({e.msg})")
            if isinstance(q, str):
                q = {"query_text": q}
            if not isinstance(q, dict):
                raise CLIError(f"{path}:{n}: expected an object with query_text (and user_id)")
            if "query" in q and "query_text" not in q:
                q["query_text"] = q.pop("query")
            q["_line"] = n
            out.append(q)
    return out


def _infer(args: argparse.Namespace) -> int:
    from gmt_model.serving.router import RoutingError

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
        for key in ("cost_weight", "max_cost", "task"):
            if getattr(args, key, None) is not None:
                q.setdefault(key, getattr(args, key))
    if args.output:
        _prepare_output(args.output)
    import sqlite3

    try:
        results = router.route_batch(queries)
    except sqlite3.Error as e:
        raise _sqlite_error(e, _encoder_cache(router)) from None
    except RoutingError as e:
        if args.input:  # name the offending line
            for q, n in zip(queries, lines):
                try:
                    router.route_batch([q])
                except RoutingError as line_error:
                    raise CLIError(f"{args.input}:{n}: {line_error}")
        raise CLIError(f"{e}")
    if not args.route_only and not router.config.endpoints:
        note = (f"routed only: no endpoints are configured in {args.config} (add an 'endpoints' section to get "
                "answers; --route-only silences this note)")
        print(f"note: {note}", file=sys.stderr)
        for r in results:
            r["response"] = None
            r["note"] = note
    if not args.route_only and router.config.endpoints:
        import httpx

        from gmt_model.serving.endpoints import (
            MissingAPIKeyError,
            UpstreamError,
            chat_completion,
            load_endpoints,
        )

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
                raise CLIError(f"calling {r['model_name']} at {ep.base_url}: {e}")
            r["response"] = reply["choices"][0]["message"]["content"]
    out = [dict(query=q["query_text"], user_id=q["user_id"], **r) for q, r in zip(queries, results)]
    text = json.dumps(out if args.input else out[0], indent=2, ensure_ascii=False)
    if args.output:
        from gmt_model.atomic import write_text_atomic

        write_text_atomic(args.output, text + "\n")
        print(f"wrote {len(out)} result(s) to {args.output}")
    else:
        print(text)
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from gmt_model.serving.router import RoutingError

    rating = args.model is not None or args.rating is not None
    pairwise = args.preferred is not None or args.rejected is not None
    if rating == pairwise:
        raise CLIError("give either --model and --rating (a rating) or --preferred and --rejected "
                         "(a pairwise preference)" + (", not both" if rating else ""))
    needed = ("--model", "--rating") if rating else ("--preferred", "--rejected")
    missing = [flag for flag in needed if getattr(args, flag[2:]) is None]
    if missing:
        raise CLIError(f"{missing[0]} is required with {needed[1] if missing[0] == needed[0] else needed[0]}")
    import sqlite3

    from gmt_model.serving.feedback import FeedbackLogUnavailable

    router = _router(args)
    if router.feedback_log is None:
        raise CLIError(f"{args.config}: router.feedback_log is not set; feedback would not be stored")
    try:
        router.embed([args.query])  # the embedding cache first: a failure there is not the log's
    except sqlite3.Error as e:
        raise _sqlite_error(e, _encoder_cache(router), "; nothing was stored") from None
    try:
        if rating:
            kw: dict[str, Any] = {"session_id": args.session_id}
            if args.turn is not None:
                kw["turn"] = args.turn
            if args.task is not None:
                kw["task"] = args.task
            res = router.update_user_feedback(args.user_id, args.query, args.model, args.rating, **kw)
        else:
            update = getattr(router, "update_user_preference", None)
            if update is None:
                raise CLIError("this version of the router does not take pairwise preferences")
            res = update(args.user_id, args.query, args.preferred, args.rejected, session_id=args.session_id,
                         turn=args.turn, **({"task": args.task} if args.task is not None else {}))
    except RoutingError as e:
        raise CLIError(f"{e}")
    except sqlite3.Error as e:
        raise _sqlite_error(e, f"the feedback log {router.feedback_log.location}", "; nothing was stored") from None
    except FeedbackLogUnavailable as e:  # read-only, full or locked: classified by the log
        raise CLIError(f"the feedback log {router.feedback_log.location}: {e.reason} ({e.__cause__ or e}); "
                       "nothing was stored") from None
    print(json.dumps(res, indent=2))
    return 0


def _serve(args: argparse.Namespace, chat: bool = False) -> int:
    import dataclasses

    from gmt_model.method.config import RouterConfig, checkpoint_dir_from_model_path, load_router_config
    from gmt_model.serving.endpoints import load_endpoints
    from gmt_model.serving.server import (
        ModelReloader,
        RouterHolder,
        ServerConfigError,
        checkpoint_source,
        create_app,
        load_api_keys,
        registry_source,
        run_server,
    )

    if args.config is None and args.model is None:
        raise CLIError("give --config (the router YAML) and/or --model "
                         "(models:/<name>@<alias>, models:/<name>/<version> or a checkpoint folder)")
    cfg = load_router_config(args.config) if args.config else None
    if args.model is not None and args.model.startswith("models:/"):
        # MLflow retries an unreachable tracking server for minutes by default; a reload check should
        # report it (and try again at the next check) sooner. An explicit setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        resolve = registry_source(args.model, args.tracking_uri)
    else:
        folder = checkpoint_dir_from_model_path(args.model) if args.model is not None else Path(cfg.checkpoint)
        resolve = checkpoint_source(folder)

    def build(ref: Any, current: Any = None) -> Any:
        from gmt_model.serving.router import GMTRouter

        if ref.location.startswith("models:/"):
            from gmt_model.serving.registry import download_checkpoint

            ckpt = str(download_checkpoint(ref.location, args.tracking_uri))
        else:
            ckpt = ref.location
        rc = dataclasses.replace(cfg, checkpoint=ckpt) if cfg is not None else RouterConfig(checkpoint=ckpt)
        if getattr(args, "device", None):
            rc.device = args.device
        return GMTRouter(config=rc)

    keys_file = args.api_keys or os.environ.get("GMTROUTER_API_KEYS_FILE") or None
    api_keys = load_api_keys(keys_file) if keys_file else None
    identity_header = args.identity_header or os.environ.get("GMTROUTER_IDENTITY_HEADER") or None
    token = os.environ.get(args.auth_token_env) if args.auth_token_env else None
    admin_token = os.environ.get(args.admin_token_env) if args.admin_token_env else None
    if admin_token is not None and len(admin_token.strip()) < 8:
        raise ServerConfigError(f"environment variable {args.admin_token_env}: the admin token must have at least "
                                "8 characters")
    ref = resolve()
    router = build(ref)
    holder = RouterHolder(router, {"uri": ref.uri, "version": ref.version, "location": ref.location})
    reloader = ModelReloader(holder, resolve, build, interval=args.reload_interval)
    from gmt_model.serving.app_state import Limits

    try:
        limits = Limits(max_batch=args.max_batch, request_timeout=args.request_timeout,
                        max_inflight=args.max_inflight)
    except ValueError as exc:
        raise ServerConfigError(str(exc).replace("limits.", "--").replace("_", "-")) from None
    if args.max_body_bytes < 1:
        raise ServerConfigError(f"--max-body-bytes: expected an integer >= 1, got {args.max_body_bytes}")
    app = create_app(reloader=reloader, endpoints=load_endpoints((cfg.endpoints if cfg else None) or {}),
                     auth_token=token or None, feedback_log=router.feedback_log, admin_token=admin_token,
                     api_keys=api_keys, identity_header=identity_header, max_body_bytes=args.max_body_bytes,
                     limits=limits)
    url = f"http://{args.host}:{args.port}"
    extras = [f"feedback stored in {router.feedback_log.location}" if router.feedback_log is not None else
              "feedback REFUSED (409): no feedback log; set router.feedback_log in a router YAML (--config)"]
    if args.reload_interval > 0:
        extras.append(f"checking for a new version every {args.reload_interval:g} s")
    if admin_token:
        extras.append("POST /admin/reload enabled")
    if api_keys is not None or identity_header:
        extras.append("identity enforced")
    print(f"gmtrouter {'chat page' if chat else 'server'} on {url}{'/chat' if chat else ''}: serving {ref.uri} "
          f"version {ref.version}" + (f" ({'; '.join(extras)})" if extras else ""), flush=True)
    if chat and not (cfg is not None and cfg.endpoints):
        print("no LLM endpoints are configured (endpoints: in the router YAML, see docs/serving.md): the page runs "
              "in route-only mode: it shows each routing decision and you rate the choice; the next route follows "
              "the ratings. The demo's users are user_0001, user_0002, ...", flush=True)
    import gc

    gc.collect()
    gc.freeze()  # the loaded router's objects leave the collector's generations: no long full collections later
    run_server(app, args.host, args.port)
    return 0


def _stars_to_rating(stars: float, scale: tuple[float, float]) -> float:
    """1..5 stars -> the router's rating scale (as the chat page does)."""
    lo, hi = float(scale[0]), float(scale[1])
    if lo <= 1 and hi >= 5:
        return float(stars)
    return lo + (float(stars) - 1) * (hi - lo) / 4


def _terminal_chat(args: argparse.Namespace) -> int:
    """``gmtrouter chat --terminal``: route (and answer) each line typed, show the decision, ask for a rating.

    Offline (no ``endpoints:``) it routes only; the rating goes to the router (and its feedback log) at
    once, so the next route of this user follows it.  ``/again`` routes the last message again,
    ``/quit`` (or end of input) stops."""
    import uuid

    from gmt_model.serving.router import RoutingError

    if args.config is None:
        raise CLIError("chat --terminal needs --config (the router YAML)")
    if args.model is not None:
        if args.model.startswith("models:/"):
            raise CLIError("chat --terminal takes a checkpoint folder for --model (or none: the config's checkpoint)")
        from gmt_model.method.config import checkpoint_dir_from_model_path

        args._checkpoint = str(checkpoint_dir_from_model_path(args.model))
    router = _router(args)
    endpoints: dict[str, Any] = {}
    if router.config.endpoints:
        from gmt_model.serving.endpoints import load_endpoints

        endpoints = load_endpoints(router.config.endpoints)
    out = sys.stdout

    def ask(prompt: str) -> str | None:
        print(prompt, end="", file=out, flush=True)
        line = sys.stdin.readline()
        return None if line == "" else line.strip()

    user = args.user_id or ask("user id (the demo's users: user_0001, user_0002, ...): ")
    if not user:
        return 0
    session = f"term-{uuid.uuid4().hex[:12]}"
    mode = "answers from the configured endpoints" if endpoints else \
        "route only (no endpoints configured): each message shows the routing decision"
    print(f"gmtrouter chat for {user} ({mode}); rate each choice 1-5 (Enter skips); /again routes the last "
          "message again; /quit ends.", file=out)
    history: list[str] = []
    last: str | None = None
    last_model: str | None = None
    last_scores: dict[str, float] = {}
    rated = False
    while True:
        text = ask("\nyou> ")
        if text is None or text in ("/quit", "/exit"):
            break
        if not text:
            continue
        again = text == "/again"
        if again:
            if last is None:
                print("nothing to route again yet", file=out)
                continue
            text = last
        prior = history[:-1] if again else list(history)
        turn = len(prior) + 1
        try:
            r = router.route_single({"query_text": text, "user_id": user, "session_id": session, "turn": turn,
                                     "conversation_history": prior})
        except RoutingError as e:
            print(f"error: {e}", file=out)
            continue
        model = r["model_name"]
        changed = f"  [changed after your rating, was {last_model}]" if rated and last_model not in (None, model) else ""
        print(f"routed to {model} (confidence {100 * r.get('confidence', 0):.1f}%"
              f"{', cold start' if r.get('cold_start') else ''}){changed}", file=out)
        for name, score in sorted(r.get("scores", {}).items(), key=lambda kv: -kv[1]):
            moved = f"  ({score - last_scores[name]:+.3f} since your rating)" if rated and name in last_scores else ""
            print(f"  {'*' if name == model else ' '} {name:<24} {score:6.3f} {'#' * int(round(30 * score))}{moved}",
                  file=out)
        last_scores = dict(r.get("scores", {}))
        if r.get("reasoning"):
            print(f"  {r['reasoning']}", file=out)
        last_model, rated = model, False
        if not again:
            history.append(text)
            last = text
        ep = endpoints.get(model)
        if ep is not None:
            from gmt_model.serving.endpoints import chat_completion

            try:
                reply = chat_completion(ep, [{"role": "user", "content": text}])
                print(f"{model}> {reply['choices'][0]['message']['content']}", file=out)
            except Exception as e:  # an upstream failure ends this turn, not the chat
                print(f"error: calling {model}: {type(e).__name__}: {e}", file=out)
        elif endpoints:
            print(f"(no endpoint configured for {model}: routed only)", file=out)
        stars = ask(f"rate this choice of {model} 1-5 (Enter skips): ")
        if stars is None:
            break
        if not stars:
            continue
        try:
            value = float(stars)
            if not 1 <= value <= 5:
                raise ValueError
        except ValueError:
            print("not rated: give a number from 1 to 5", file=out)
            continue
        try:
            res = router.update_user_feedback(user, text, model, _stars_to_rating(value, router.rating_scale),
                                              session_id=session, turn=turn)
        except RoutingError as e:
            print(f"error: {e}", file=out)
            continue
        rated = True
        stored = f" (feedback log row {res['feedback_id']})" if res.get("feedback_id") else \
            " (not stored: no router.feedback_log in the config)"
        print(f"rated {model} {value:g}/5{stored}", file=out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gmt_model.data.demo import write_demo_dataset

    paths = write_demo_dataset(args.out, args.size, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


# ---------------------------------------------------------------- gmtrouter llms (the open LLM pool)
def _llms(args: argparse.Namespace) -> int:
    """``gmtrouter llms add|update|remove|list``: change the pool through the config's feedback log (durable,
    ordered; running servers sharing the log follow within their feedback_sync_interval)."""
    router = _router(args)
    if args.llms_op != "list" and router.feedback_log is None:
        raise SystemExit(f"error: {args.config}: router.feedback_log is not set; a pool change would not be stored")
    # a RoutingError (bad name, description, cost; the last LLM) reaches main(): one line, exit status 2
    if args.llms_op == "add":
        out: Any = router.add_llm(args.name, args.description, cost=args.cost, endpoint=args.endpoint)
    elif args.llms_op == "update":
        out = router.update_llm(args.name, description=args.description, cost=args.cost, endpoint=args.endpoint)
    elif args.llms_op == "remove":
        out = router.remove_llm(args.name)
    else:
        out = router.llms(include_removed=args.all)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _add_llms_parser(verb: Any) -> None:
    lp = verb("llms", help="list or change the LLM pool (add/update/remove an LLM)")
    ops = lp.add_subparsers(dest="llms_op", required=True)
    for op, helptext in (("add", "add an LLM (routable at once, scored from its description)"),
                         ("update", "change an LLM's description, cost or endpoint"),
                         ("remove", "take an LLM out of the pool (its history stays)"), ("list", "list the pool")):
        o = ops.add_parser(op, help=helptext)
        o.add_argument("--config", required=True)
        if op == "list":
            o.add_argument("--all", action="store_true", help="also removed LLMs")
            continue
        o.add_argument("name")
        if op in ("add", "update"):
            o.add_argument("--description", required=op == "add", help="what the LLM is good at (its node features)")
            o.add_argument("--cost", type=float, default=None, help="USD per 1M tokens")
            o.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL")
        else:
            o.set_defaults(description=None, cost=None, endpoint=None)
    lp.set_defaults(func=_llms)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmtrouter", description="GMTRouter: personalized LLM routing")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    # --debug also after the verb (gmtrouter infer ... --debug)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    t = verb("train", help="train from a seed-style training config")
    t.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)  # LLMRouter compatibility
    t.add_argument("--config", required=True)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: cuda when available)")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--out", default=None,
                   help="run folder; the model is written to OUT/best and the configured model "
                        "(model_path.save_model_path) is left alone (default: checkpoint.root/<dataset>, "
                        "the best model copied to the configured model)")
    t.add_argument("--no-resume", action="store_true", help="ignore a periodic checkpoint in the run folder")
    t.add_argument("--skip-test", action="store_true")
    t.add_argument("--resamples", type=int, default=1000)
    t.set_defaults(func=_train)

    e = verb("evaluate", help="evaluation report (GMTRouter vs baselines) on a split")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--blind", default=None, help="checkpoint of a user-blind model to report beside")
    e.add_argument("--split", default="test")
    e.add_argument("--output", default=None, help="write the report JSON here")
    e.add_argument("--resamples", type=int, default=1000)
    e.set_defaults(func=_evaluate)

    i = verb("infer", help="route (and answer) queries")
    i.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)
    i.add_argument("--config", required=True)
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--query")
    src.add_argument("--input", help="JSONL of {query_text, user_id?, session_id?, turn?, candidates?, task?}")
    i.add_argument("--output")
    i.add_argument("--user-id", default="anonymous")
    i.add_argument("--session-id", default=None)
    i.add_argument("--route-only", action="store_true")
    i.add_argument("--cost-weight", type=float, default=None,
                   help="weight of cost against preference (>= 0; default: router.cost_weight of the config)")
    i.add_argument("--max-cost", type=float, default=None, help="route only to LLMs costing at most this (USD/1M tok)")
    i.add_argument("--task", default=None, help="the kind of work (e.g. coding, writing): the user's votes given "
                   "with the same task weigh in as that task's taste; echoed in the result")
    i.add_argument("--device", default=None, help="cpu or cuda (default: router.device of the config)")
    i.set_defaults(func=_infer)

    f = verb("feedback", help="record a rating (durable log + live user graph)")
    f.add_argument("--config", required=True)
    f.add_argument("--user-id", required=True)
    f.add_argument("--query", required=True)
    f.add_argument("--model", default=None, help="the LLM that answered (with --rating)")
    f.add_argument("--rating", type=float, default=None, help="the user's rating of that answer")
    f.add_argument("--preferred", default=None, help="pairwise: the LLM whose answer the user preferred ...")
    f.add_argument("--rejected", default=None, help="... over this LLM's answer (instead of --model/--rating)")
    f.add_argument("--session-id", default=None)
    f.add_argument("--turn", type=int, default=None, help="the turn of the session the feedback is about")
    f.add_argument("--task", default=None, help="the kind of work the query was (as named when routing)")
    f.set_defaults(func=_feedback)

    for name, chat in (("chat", True), ("serve", False)):
        s = verb(name, help="chat page" if chat else "OpenAI-compatible routing server")
        s.add_argument("--router", default="gmtrouter", help=argparse.SUPPRESS)
        s.add_argument("--config", default=None,
                       help="router YAML (checkpoint, candidates, feedback log, endpoints); optional with --model")
        s.add_argument("--model", default=None,
                       help="models:/<name>@<alias> (MLflow registry) or a checkpoint folder; overrides the "
                            "config's checkpoint")
        s.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI for --model models:/... (default: $MLFLOW_TRACKING_URI)")
        s.add_argument("--reload-interval", type=float, default=0.0, metavar="SECONDS",
                       help="check the model source for a new version every SECONDS (0: only on POST "
                            "/admin/reload)")
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, default=8080 if chat else 8000)
        s.add_argument("--auth-token-env", default="GMTROUTER_AUTH_TOKEN",
                       help="environment variable holding the shared bearer token (unset: no auth)")
        s.add_argument("--admin-token-env", default="GMTROUTER_ADMIN_TOKEN",
                       help="environment variable holding the token of POST /admin/reload (unset: disabled)")
        s.add_argument("--api-keys", default=None, metavar="FILE",
                       help="JSON/YAML {api_key: user_id}: per-user keys, the user id comes from the key "
                            "(default: $GMTROUTER_API_KEYS_FILE)")
        s.add_argument("--identity-header", default=None, metavar="NAME",
                       help="trust this header (set by an authenticating proxy) as the user id, e.g. "
                            "X-Authenticated-User (default: $GMTROUTER_IDENTITY_HEADER)")
        s.add_argument("--device", default=None, help="cpu or cuda (default: router.device of the config)")
        s.add_argument("--max-batch", type=int, default=1000, metavar="N",
                       help="most queries in one /v1/route batch (more: 413)")
        s.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="BYTES",
                       help="largest request body (more: 413)")
        s.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="time budget of a request before the router works on it (past it: 503 + Retry-After)")
        s.add_argument("--max-inflight", type=int, default=512, metavar="N",
                       help="router-bound requests admitted at once (more: 503 + Retry-After at once)")
        if chat:
            s.add_argument("--terminal", action="store_true",
                           help="chat in this terminal instead of serving the page: route each line, show the "
                                "decision, rate it")
            s.add_argument("--user-id", default=None, help="with --terminal: the user (asked when not given)")
        s.set_defaults(func=lambda a, chat=chat: _terminal_chat(a) if getattr(a, "terminal", False)
                       else _serve(a, chat=chat))

    _add_llms_parser(verb)

    d = verb("demo", help="write the offline demo dataset (GMTRouter JSONL splits)")
    d.add_argument("--out", default="./data/demo")
    d.add_argument("--size", default="tiny", choices=["tiny", "small", "medium", "large"])
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb.  Bad input, configuration, data or checkpoints print one line
    (``error: <file:line: field: what>``) on stderr and exit with status 2; ``--debug``
    shows the traceback instead."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    import warnings

    shown = warnings.showwarning
    if not args.debug:  # a warning is one line (no source line); --debug keeps Python's format
        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            print(f"warning: {message}", file=sys.stderr)

        warnings.showwarning = show
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace) -> int:
    from gmt_model.errors import one_line, readable_error_types

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        sqlite3 = sys.modules.get("sqlite3")
        storage = (sqlite3.Error,) if sqlite3 is not None else ()
        if args.debug or not isinstance(e, (CLIError, *storage, *readable_error_types())):
            raise
        text = one_line(e)
        if storage and isinstance(e, storage):
            text = f"SQLite (feedback log or embedding cache): {text}"
        print(f"error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
