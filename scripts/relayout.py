#!/usr/bin/env python3
"""Move gmt_model's flat modules into subpackages that show the architecture (issue 8, item 6).

    python scripts/relayout.py            # apply (git mv + rewrites), print what it did
    python scripts/relayout.py --dry-run  # print the plan, change nothing

Layers (tests/test_layout.py enforces them):

    gmt_model/method/      the method: schema, model, the subgraph engine, graph tables, training,
                           checkpoint, config, the online personal part; imports no other layer
    gmt_model/data/        JSONL format, sources, converters, datasets, splits, demo, encoder,
                           embedding store, columnar tables, building the graph from files; imports method
    gmt_model/evaluation/  metrics, baselines, the evaluation report; imports method and data
    gmt_model/serving/     router, feedback log, HTTP server, endpoints, registry, CLI, static files
    gmt_model/             atomic.py, paths.py, errors.py (used by every layer) and the public API

What it does, in order:

1. Refuses (exit 2, listing them) when gmt_model holds a flat module that MAPPING does not name:
   add it to MAPPING (one line) and run again.
2. ``git mv`` each flat module to its subpackage (``static/`` goes with the server) and writes
   the subpackages' ``__init__.py`` (docstring only: importing a layer stays cheap).
3. Moves functions named in SYMBOL_MOVES to their new module (``build_graph`` reads JSONL, so
   it leaves the method's graph module for ``data/graph_files.py``).
4. Rewrites imports and module paths in gmt_model, assets, pipelines, tests, scripts, docs,
   README, pyproject (entry point, package data) and other text files: ``gmt_model.X`` ->
   ``gmt_model.<layer>.Y``, ``gmt_model/X.py`` -> ``gmt_model/<layer>/Y.py``, relative imports
   inside gmt_model -> absolute ones, ``from gmt_model import X`` (a module) -> ``from
   gmt_model.<layer> import Y as X``.  The public API (``from gmt_model import GMTRouter``,
   ...) keeps working: ``gmt_model/__init__.py``'s lazy table is rewritten to the new places.
5. Replaces the module table of docs/architecture.md by the new layout table.
6. Checks the result: every file parses, no import cycles, no layer violations (the same code
   as tests/test_layout.py), and prints them.

It is idempotent: modules already in place are left alone, and the rewrites only touch
references to modules moved in this run, so a second run does nothing.  Commit (or stash)
your work first; the script stages its moves with git but commits nothing.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "gmt_model"

#: flat module -> (new dotted place under gmt_model, one line for the architecture table; "" keeps the
#: line of the current table).  Add new modules here.
MAPPING: dict[str, tuple[str, str]] = {
    # the method
    "schema": ("method.schema", ""),
    "model": ("method.model", ""),
    "graph": ("method.graph", "`GraphTables`: the interactions table (users, LLMs, groups, steps, ratings, "
                              "deduplicated query texts), pair labels, relation edges, Parquet write/read "
                              "(memory-mapped), `HeteroData`"),
    "engine": ("method.engine", "the one subgraph builder shared by training, evaluation and the router: "
                                "visible subgraph, group steps, scoring, cold-start calibration"),
    "training": ("method.training", ""),
    "checkpoint": ("method.checkpoint", ""),
    "config": ("method.config", ""),
    "personal": ("method.personal", ""),
    "pairwise": ("method.pairwise", ""),
    # data
    "data": ("data.jsonl", ""),
    "sources": ("data.sources", ""),
    "convert": ("data.convert", ""),
    "datasets": ("data.datasets", "dataset sources (`configs/datasets.yaml`), `prepare_raw`, `build_jsonl`"),
    "splits": ("data.splits", "deterministic per-user splits, thin-user report"),
    "demo": ("data.demo", ""),
    "encoder": ("data.encoder", ""),
    "embeddings": ("data.embeddings", "the embedding store: one vector per distinct text, Parquet keyed by "
                                      "text hash"),
    "columnar": ("data.columnar", "columnar interactions (texts by hash) <-> JSONL, in bounded batches"),
    # evaluation
    "metrics": ("evaluation.metrics", ""),
    "baselines": ("evaluation.baselines", ""),
    "evaluation": ("evaluation.report", ""),
    # serving
    "router": ("serving.router", ""),
    "feedback": ("serving.feedback", ""),
    "server": ("serving.server", ""),
    "endpoints": ("serving.endpoints", "upstream LLM endpoints (OpenAI-compatible chat completions)"),
    "registry": ("serving.registry", ""),
    "cli": ("serving.cli", ""),
    # shared by every layer: stay at the top of the package
    "atomic": ("atomic", ""),
    "paths": ("paths", ""),
    "errors": ("errors", "`RoutingError`, one-line error messages"),
}
#: folders inside gmt_model that move (package data)
FOLDERS = {"static": "serving/static"}
#: (old module, function) -> new dotted module (created) and its docstring
SYMBOL_MOVES: dict[tuple[str, str], tuple[str, str]] = {
    ("graph", "build_graph"): ("data.graph_files",
                               "Building the graph from files: GMTRouter JSONL splits -> "
                               "``gmt_model.method.graph.GraphTables``.\n\nThe method takes tables; reading "
                               "files is the data layer's job."),
}
SYMBOL_DOCS = {"data.graph_files": "`build_graph`: GMTRouter JSONL splits -> `GraphTables` (the method takes tables)"}
LAYERS = {
    "method": "the method: what is trained and how (imports no other layer)",
    "data": "data in and out: formats, sources, conversion, datasets, embeddings (imports method)",
    "evaluation": "metrics, baselines and the evaluation report (imports method and data)",
    "serving": "the live router, feedback, HTTP server, registry and CLI (may import every layer)",
}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".txt", ".cfg", ".ini", ".rst"}
ARCH_DOC = REPO / "docs" / "architecture.md"
ARCH_HEADING = "## gmt_model modules and their contracts"


def sh(*cmd: str, check: bool = True) -> str:
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def flat_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / PKG).glob("*.py") if p.name != "__init__.py")


def text_files() -> list[Path]:
    names = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    me = Path(__file__).resolve()
    return [REPO / n for n in names
            if n and Path(n).suffix in TEXT_SUFFIXES and (REPO / n).is_file() and (REPO / n).resolve() != me]


# ------------------------------------------------------------------------------------------ rewriting
def rewrite_text(text: str, moved: dict[str, str], symbols: dict[tuple[str, str], str]) -> str:
    """Dotted module names and file paths of moved modules (one pass: nothing is rewritten twice)."""
    if not moved:
        return text
    alt = "|".join(sorted(map(re.escape, moved), key=len, reverse=True))
    for (old, name), new in symbols.items():
        text = re.sub(rf"\b{PKG}\.{re.escape(old)}\.{re.escape(name)}\b", f"{PKG}.{new}.{name}", text)
    text = re.sub(rf"\b{PKG}\.({alt})\b", lambda m: f"{PKG}.{moved[m.group(1)]}", text)
    text = re.sub(rf"\b{PKG}/({alt})\.py\b", lambda m: f"{PKG}/{moved[m.group(1)].replace('.', '/')}.py", text)
    for old, new in FOLDERS.items():
        text = re.sub(rf"\b{PKG}/{re.escape(old)}\b", f"{PKG}/{new}", text)
    return text


def _format_import(indent: str, module: str, names: list[str]) -> str:
    line = f"from {module} import {', '.join(names)}"
    if len(indent) + len(line) <= 110:
        return line
    body = "".join(f"{indent}    {n},\n" for n in names)
    return f"from {module} import (\n{body}{indent})"


def rewrite_imports(path: Path, text: str, old_module: str | None, moved: dict[str, str],
                    symbols: dict[tuple[str, str], str], all_new: dict[str, str]) -> str:
    """Relative imports of gmt_model files -> absolute (new places); ``from gmt_model import <module>``
    -> ``from gmt_model.<layer> import <module>``; moved functions imported from their old module."""
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError as exc:
        raise SystemExit(f"error: {path}:{exc.lineno}: cannot parse: {exc.msg}") from None
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))
    edits: list[tuple[int, int, str]] = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            if old_module is None:
                continue
            parts = [] if old_module == "__init__" else old_module.split(".")
            base = [PKG] + (parts[:-1] if parts and parts[-1] == "__init__" else parts if is_pkg else parts[:-1])
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if not (mod == PKG or mod.startswith(PKG + ".")):
            continue
        # the module as it is called before the move (text rewriting already renamed absolute ones)
        rel = mod[len(PKG) + 1:] if mod != PKG else ""
        groups: dict[str, list[str]] = {}
        for a in node.names:
            spelled = a.name if a.asname is None else f"{a.name} as {a.asname}"
            if rel == "" and a.name in all_new:  # from gmt_model import <module>
                parent, _, leaf = all_new[a.name].rpartition(".")
                target = f"{PKG}.{parent}" if parent else PKG
                spelled = leaf if leaf == (a.asname or a.name) else f"{leaf} as {a.asname or a.name}"
            else:
                old_rel = rel
                target_rel = moved.get(rel, rel) if node.level else rel
                if (old_rel, a.name) in symbols or (_old_of(rel, moved), a.name) in symbols:
                    target_rel = symbols.get((old_rel, a.name)) or symbols[(_old_of(rel, moved), a.name)]
                target = f"{PKG}.{target_rel}" if target_rel else PKG
            groups.setdefault(target, []).append(spelled)
        if not node.level and list(groups) == [mod]:
            continue  # nothing to change
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        indent = " " * node.col_offset
        new = f"\n{indent}".join(_format_import(indent, m, ns) for m, ns in groups.items())
        edits.append((start, end, new))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _old_of(rel: str, moved: dict[str, str]) -> str:
    for old, new in moved.items():
        if new == rel:
            return old
    return rel


# ------------------------------------------------------------------------------------ moving symbols
def _bound_names(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def move_symbol(src: Path, name: str, dst: Path, dst_module: str, src_module: str, doc: str) -> str:
    """Cut top-level function ``name`` (and the comment banner right above it) from ``src`` into
    ``dst`` with the imports it needs; drop imports ``src`` no longer uses."""
    text = src.read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    fn = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
    if fn is None:
        raise SystemExit(f"error: {src.relative_to(REPO)}: no top-level {name!r} to move (update SYMBOL_MOVES)")
    first = (fn.decorator_list[0].lineno if getattr(fn, "decorator_list", None) else fn.lineno) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1  # the comment banner above it goes too
    last = fn.end_lineno
    chunk = "".join(lines[first:last])
    need = _used_names(fn) - {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
    header_imports: list[str] = []
    from_src: list[str] = []
    for node in tree.body:
        if node is fn:
            continue
        bound = _bound_names(node) & need
        if not bound:
            continue
        if isinstance(node, ast.Import):
            header_imports += [f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                               for a in node.names if (a.asname or a.name).split(".")[0] in bound]
        elif isinstance(node, ast.ImportFrom):
            keep = [a.name + (f" as {a.asname}" if a.asname else "") for a in node.names
                    if (a.asname or a.name) in bound]
            header_imports.append(f"from {'.' * node.level}{node.module or ''} import {', '.join(keep)}")
        else:
            from_src += sorted(bound)
    if from_src:
        header_imports.append(f"from {PKG}.{src_module} import {', '.join(sorted(set(from_src)))}")
    future = "from __future__ import annotations\n\n" if "from __future__ import annotations" in text else ""
    std = [i for i in header_imports if not i.startswith(("from .", f"from {PKG}", "import numpy",
                                                            "import torch", "import pyarrow"))]
    third = [i for i in header_imports if i.startswith(("import numpy", "import torch", "import pyarrow"))]
    own = [i for i in header_imports if i.startswith(("from .", f"from {PKG}"))]
    blocks = ["\n".join(sorted(b)) for b in (std, third, own) if b]
    body = (f'"""{doc}\n"""\n\n{future}' + "\n\n".join(blocks) + f'\n\n__all__ = ["{name}"]\n\n\n'
            + chunk.rstrip("\n") + "\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        raise SystemExit(f"error: {dst.relative_to(REPO)} exists already")
    dst.write_text(body, encoding="utf-8")
    # the source without the symbol, its __all__ entry and the imports nobody uses any more
    rest = "".join(lines[:first]).rstrip("\n") + "\n\n\n" + "".join(lines[last:]).lstrip("\n")
    rest = re.sub(rf'\n\s*"{re.escape(name)}",', "", rest)
    rest = re.sub(rf',\s*"{re.escape(name)}"', "", rest)
    rest = _drop_unused_imports(rest)
    src.write_text(rest.rstrip("\n") + "\n", encoding="utf-8")
    return f"moved {src_module}.{name} -> {dst_module}.{name}"


def _drop_unused_imports(text: str) -> str:
    tree = ast.parse(text)
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))  # __all__, string annotations
    lines = text.splitlines(keepends=True)
    for node in sorted((n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))),
                       key=lambda n: -n.lineno):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        keep = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
        if len(keep) == len(node.names):
            continue
        if keep:
            spelled = [a.name + (f" as {a.asname}" if a.asname else "") for a in keep]
            stmt = (_format_import("", f"{'.' * node.level}{node.module or ''}", spelled)
                    if isinstance(node, ast.ImportFrom) else f"import {', '.join(spelled)}")
            lines[node.lineno - 1: node.end_lineno] = [stmt + "\n"]
        else:
            del lines[node.lineno - 1: node.end_lineno]
    return "".join(lines)


# -------------------------------------------------------------------------------------- the doc table
def architecture_table(moved_all: dict[str, str], old_rows: dict[str, str]) -> str:
    out = [ARCH_HEADING, "",
           "The package is split into layers; a layer imports only the layers above it in this list",
           "(tests/test_layout.py checks it, and that there are no import cycles).  The public API",
           "(`from gmt_model import GMTRouter, train, evaluate, ...`) is re-exported lazily by",
           "`gmt_model/__init__.py`.", ""]
    by_layer: dict[str, list[tuple[str, str]]] = {}
    for old, new in sorted(moved_all.items(), key=lambda kv: kv[1]):
        layer = new.split(".")[0] if "." in new else ""
        desc = MAPPING[old][1] or old_rows.get(f"{old}.py") or ""
        if not desc:
            print(f"  note: no description of {old}.py for docs/architecture.md (set one in MAPPING)")
        by_layer.setdefault(layer, []).append((new.replace(".", "/") + ".py", desc))
    for dotted, desc in SYMBOL_DOCS.items():
        by_layer.setdefault(dotted.split(".")[0], []).append((dotted.replace(".", "/") + ".py", desc))
    for layer, what in [("", "shared by every layer")] + list(LAYERS.items()):
        if layer not in by_layer:
            continue
        out += [f"### `gmt_model/{layer + '/' if layer else ''}`: {what}", "", "| module | owns |", "|---|---|"]
        out += [f"| `{path}` | {desc} |" for path, desc in sorted(by_layer[layer])]
        if layer == "serving":
            out.append("| `serving/static/` | the chat page (HTML, CSS, JS) |")
        out.append("")
    return "\n".join(out)


def update_architecture(moved_all: dict[str, str]) -> bool:
    if not ARCH_DOC.is_file():
        return False
    text = ARCH_DOC.read_text(encoding="utf-8")
    start = text.find(ARCH_HEADING)
    if start < 0:
        return False
    nxt = text.find("\n## ", start + len(ARCH_HEADING))
    section = text[start: nxt if nxt >= 0 else len(text)]
    rows = dict(re.findall(r"^\| `([\w/]+\.py)` \| (.*) \|\s*$", section, flags=re.M))
    table = architecture_table(moved_all, rows)
    text = text[:start] + table + ("\n" + text[nxt:].lstrip("\n") if nxt >= 0 else "")
    text = re.sub(r"<!-- relayout: pending -->\n.*?<!-- /relayout -->\n", "", text, flags=re.S)
    ARCH_DOC.write_text(text, encoding="utf-8")
    return True


# ------------------------------------------------------------------------------------------ checking
def check_layout() -> list[str]:
    spec = importlib.util.spec_from_file_location("_layout", REPO / "tests" / "test_layout.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("conftest", type(sys)("conftest"))
    sys.modules["conftest"].REPO = REPO  # type: ignore[attr-defined]
    sys.path.insert(0, str(REPO / "tests"))
    try:
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    except ImportError:
        return ["tests/test_layout.py could not be loaded: layer check skipped"]
    g = mod.import_graph(REPO)
    return [" <-> ".join(c) + " (cycle)" for c in mod.find_cycles(g)] + mod.layer_violations(g)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = ap.parse_args(argv)

    flat = flat_modules()
    unknown = [m for m in flat if m not in MAPPING]
    if unknown:
        print("error: gmt_model has modules the relayout has no place for: "
              + ", ".join(f"gmt_model/{m}.py" for m in unknown)
              + "\n  add each to MAPPING in scripts/relayout.py (e.g. \"name\": (\"data.name\", \"what it owns\")) "
                "and run again", file=sys.stderr)
        return 2
    moved = {m: MAPPING[m][0] for m in flat if MAPPING[m][0] != m}
    symbols = {(old, fn): new for (old, fn), (new, _) in SYMBOL_MOVES.items() if old in moved}
    folders = {old: new for old, new in FOLDERS.items() if (REPO / PKG / old).is_dir()}
    if not moved and not folders:
        print("relayout: nothing to do (every module is in its layer already)")
        return 0
    print(f"relayout: moving {len(moved)} modules" + (f" and {len(folders)} folder(s)" if folders else ""))
    for old, new in sorted(moved.items(), key=lambda kv: kv[1]):
        print(f"  gmt_model/{old}.py -> gmt_model/{new.replace('.', '/')}.py")
    for old, new in folders.items():
        print(f"  gmt_model/{old}/ -> gmt_model/{new}/")
    for (old, fn), new in symbols.items():
        print(f"  {old}.{fn} -> gmt_model/{new.replace('.', '/')}.py")
    if args.dry_run:
        return 0
    if sh("git", "status", "--porcelain", "--untracked-files=no").strip():
        print("note: the working tree has uncommitted changes; they are kept (and rewritten like the rest)")

    # 1. rewrite text everywhere while the files are still in their old places
    all_new = {m: MAPPING[m][0] for m in MAPPING}
    files = text_files()
    changed = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        new = rewrite_text(text, moved, symbols)
        if f.suffix == ".py":
            rel = f.relative_to(REPO)
            old_module = None
            if rel.parts[0] == PKG:
                old_module = ".".join(rel.with_suffix("").parts[1:]) or "__init__"
            new = rewrite_imports(f, new, old_module, moved, symbols, {k: v for k, v in all_new.items() if k in moved})
            if rel.parts[0] == PKG and rel.name == "__init__.py" and len(rel.parts) == 2:
                new = _rewrite_lazy_table(new, moved, symbols)
        if new != text:
            f.write_text(new, encoding="utf-8")
            changed += 1
    print(f"  rewrote imports and module paths in {changed} files")

    # 2. move the files
    for layer, what in LAYERS.items():
        init = REPO / PKG / layer / "__init__.py"
        if any(v.startswith(layer + ".") for v in moved.values()) and not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""gmt_model.{layer}: {what}."""\n', encoding="utf-8")
            sh("git", "add", str(init.relative_to(REPO)))
            print(f"  wrote gmt_model/{layer}/__init__.py")
    for old, new in sorted(moved.items()):
        dst = REPO / PKG / (new.replace(".", "/") + ".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        sh("git", "mv", f"{PKG}/{old}.py", str(dst.relative_to(REPO)))
    for old, new in folders.items():
        (REPO / PKG / new).parent.mkdir(parents=True, exist_ok=True)
        sh("git", "mv", f"{PKG}/{old}", f"{PKG}/{new}")
    print(f"  git mv: {len(moved)} modules" + (f", {len(folders)} folder(s)" if folders else ""))

    # 3. functions that change layer
    for (old, fn), new in symbols.items():
        src = REPO / PKG / (moved[old].replace(".", "/") + ".py")
        dst = REPO / PKG / (new.replace(".", "/") + ".py")
        print("  " + move_symbol(src, fn, dst, new, moved[old], SYMBOL_MOVES[(old, fn)][1]))
        sh("git", "add", str(dst.relative_to(REPO)), str(src.relative_to(REPO)))

    # 4. pyproject package data follows the static folder
    py = REPO / "pyproject.toml"
    text = py.read_text(encoding="utf-8")
    if '"static/*", ' in text and "static" in folders:
        text = text.replace('"static/*", ', "", 1)
        text = re.sub(r'(\[tool\.setuptools\.package-data\]\n(?:#.*\n)*gmt_model = \[.*\]\n)',
                      r'\1"gmt_model.serving" = ["static/*"]\n', text, count=1)
        py.write_text(text, encoding="utf-8")
        print("  pyproject.toml: package data static/* now under gmt_model.serving")

    # 5. docs
    moved_all = {m: MAPPING[m][0] for m in MAPPING if (REPO / PKG / (MAPPING[m][0].replace(".", "/") + ".py")).exists()}
    if update_architecture(moved_all):
        print("  docs/architecture.md: module table replaced by the layout table")

    # the installed `gmtrouter` command still names the old entry point until the project is reinstalled
    for script in sorted(REPO.glob(".venv*/bin/gmtrouter")):
        if f"from {PKG}.cli import" in script.read_text(encoding="utf-8", errors="replace"):
            print(f"  note: {script.relative_to(REPO)} still imports {PKG}.cli: refresh the editable install with "
                  f"`{script.parent.relative_to(REPO)}/python -m pip install -q --no-deps --no-build-isolation -e .` "
                  "(or `bash scripts/setup.sh`, which does it because pyproject.toml changed)")

    # 6. check
    for f in (REPO / PKG).rglob("*.py"):
        ast.parse(f.read_text(encoding="utf-8"), str(f))
    problems = check_layout()
    if problems:
        print("relayout: done, but the layout check reports:\n  " + "\n  ".join(problems))
        return 1
    print("relayout: done; layout check: no cycles, no layer violations.  Next: run the tests, "
          "review `git status`, commit.")
    return 0


def _rewrite_lazy_table(text: str, moved: dict[str, str], symbols: dict[tuple[str, str], str]) -> str:
    """``"Name": ("module", "attr")`` entries of gmt_model/__init__.py's lazy table."""

    def place(m: re.Match) -> str:
        mod, attr = m.group(2), m.group(4)
        new = symbols.get((mod, attr)) or moved.get(mod, mod)
        return f"{m.group(1)}{new}{m.group(3)}{attr}"

    return re.sub(r'(:\s*\(")([a-z_]+)(",\s*")(\w+)', place, text)


if __name__ == "__main__":
    sys.exit(main())
