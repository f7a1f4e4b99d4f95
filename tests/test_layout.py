"""The library's layout: the module import graph has no cycles, the layers
import only downwards, and the packaged default configs equal the
repository's ``configs/``.  (That every module imports, without
Dagster or MLflow, is tests/test_package.py.)

The import graph is read from the source (``ast``), counting imports inside
functions too (a lazy import is still a dependency) but not those under
``if TYPE_CHECKING:``.  Layers (once ``gmt_model`` is split into
subpackages, see docs/architecture.md): ``method`` imports nothing from
``data``, ``evaluation`` or ``serving``; ``data`` imports only ``method``;
``evaluation`` imports ``method`` and ``data``; ``serving`` may import all.
``assets`` never imports ``pipelines`` (``pipelines`` wires ``assets``).
"""

from __future__ import annotations

import ast
import filecmp
import importlib
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("gmt_model", "assets", "pipelines")
#: layer -> the layers it may import (besides itself and the package root's plain modules)
LAYERS = {
    "method": set(),
    "data": {"method"},
    "evaluation": {"method", "data"},
    "serving": {"method", "data", "evaluation"},
}
#: gmt_model modules that every layer may import (no dependencies of their own inside gmt_model)
SHARED = {"gmt_model", "gmt_model.atomic", "gmt_model.paths", "gmt_model.errors"}


def module_files(root: Path = REPO) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under PACKAGES."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            parts = f.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for sub in node.body:
                    skip.update(id(n) for n in ast.walk(sub))
    return skip


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """``{module: modules of PACKAGES it imports}`` (lazy imports included, TYPE_CHECKING excluded)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        skip = _type_checking_nodes(tree)
        base = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    mod = ".".join(parts + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in files]
                # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg
                targets = subs + ([mod] if len(subs) < len(node.names) else [])
            else:
                continue
            for t in targets:
                # `import a.b.c` depends on the deepest module that exists
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against LAYERS, for the layers that exist as subpackages of gmt_model."""
    present = {m.split(".")[1] for m in graph if m.startswith("gmt_model.") and m.count(".") >= 2}
    layers = present & set(LAYERS)

    def layer_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == "gmt_model" and len(parts) > 1 and parts[1] in layers else None

    bad = []
    for mod, deps in sorted(graph.items()):
        src = layer_of(mod)
        if mod.startswith("assets"):
            bad += [f"{mod} -> {d} (assets never import pipelines)" for d in sorted(deps) if d.startswith("pipelines")]
        if src is None:
            continue
        for d in sorted(deps):
            dst = layer_of(d)
            if dst is None:
                if d.startswith("gmt_model") and d not in SHARED:
                    bad.append(f"{mod} -> {d} (a layer imports a gmt_model module outside the layers)")
                continue
            if dst != src and dst not in LAYERS[src]:
                allowed = ", ".join(sorted(LAYERS[src])) or "no other layer"
                bad.append(f"{mod} -> {d} ({src} may import {allowed})")
    return bad


# ---------------------------------------------------------------------------------------------- tests
def test_graph_reader_sees_relative_lazy_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "gmt_model"
    (pkg / "method").mkdir(parents=True)
    (pkg / "serving").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "method" / "__init__.py").write_text("")
    (pkg / "serving" / "__init__.py").write_text("")
    (pkg / "method" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..serving import b\n"
        "def f():\n    from . import c\n")
    (pkg / "method" / "c.py").write_text("from gmt_model.serving.b import X\n")
    (pkg / "serving" / "b.py").write_text("from ..method import a\nX = 1\n")
    for other in ("assets", "pipelines"):
        (tmp_path / other).mkdir()
    g = import_graph(tmp_path)
    assert g["gmt_model.method.a"] == {"gmt_model.method.c"}
    assert g["gmt_model.method.c"] == {"gmt_model.serving.b"}
    assert find_cycles(g) == [["gmt_model.method.a", "gmt_model.method.c", "gmt_model.serving.b"]]
    assert layer_violations(g) == ["gmt_model.method.c -> gmt_model.serving.b (method may import no other layer)"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_layers_import_downwards_only():
    bad = layer_violations(import_graph())
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_library_derives_no_repository_path_from_its_location():
    """Only the package's own static files may be located from ``__file__``."""
    hits = []
    for name, f in module_files().items():
        if not name.startswith("gmt_model"):
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if "__file__" in line and "parents[" in line or "__file__" in line and ".parent.parent" in line:
                hits.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_packaged_default_configs_equal_the_repository_configs():
    packaged = importlib.import_module("gmt_model.paths").package_config("")
    assert packaged.is_dir(), packaged
    files = sorted(p.relative_to(packaged) for p in packaged.rglob("*") if p.is_file())
    assert files, packaged
    differ = [str(rel) for rel in files
              if not (REPO / "configs" / rel).is_file() or not filecmp.cmp(packaged / rel, REPO / "configs" / rel,
                                                                           shallow=False)]
    assert not differ, (f"the package's default configs differ from the repository's configs/: {differ}; "
                        f"edit both (cp configs/<file> {packaged.relative_to(REPO)}/<file>)")
    # and every library default under configs/ (all but the pipeline's run configs) is packaged
    repo_files = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*")
                        if p.is_file() and p.relative_to(REPO / "configs").parts[0] != "pipeline")
    assert repo_files == files


@pytest.mark.parametrize("rel", ["configs/datasets.yaml", "configs/model_config_train/demo.yaml"])
def test_default_config_falls_back_to_the_package_outside_a_checkout(tmp_path, monkeypatch, rel):
    from gmt_model.paths import config_path, package_config

    monkeypatch.chdir(tmp_path)
    got = config_path(rel)
    assert got == package_config(rel) and got.is_file()
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("x: 1\n")
    assert config_path(rel) == Path(rel)  # a checkout's own copy wins


def test_data_home_is_the_environment_or_the_working_directory(tmp_path, monkeypatch):
    from gmt_model.paths import ENV_HOME, default_home

    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_home() == (tmp_path / ".gmtrouter").resolve()
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "h"))
    assert default_home() == (tmp_path / "h").resolve()


def test_one_data_root_resolver(tmp_path, monkeypatch):
    """gmt_model.paths.data_root is the only reader of $GMTROUTER_HOME; the pipeline passes the repository
    as its base, the CLI the working directory, and both honour the environment and an explicit home."""
    from assets.storage import REPO_ROOT, data_root as pipeline_root
    from gmt_model.paths import ENV_HOME, data_root

    offenders = []
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            text = f.read_text(encoding="utf-8")
            if f.relative_to(REPO).as_posix() != "gmt_model/paths.py" and re.search(
                    r"environ(\.get\(|\[)\s*(ENV_HOME|[\"']GMTROUTER_HOME[\"'])", text):
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == (tmp_path / ".gmtrouter").resolve()
    assert pipeline_root() == (REPO_ROOT / ".gmtrouter").resolve()
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "h"))
    assert data_root() == pipeline_root() == (tmp_path / "h").resolve()
    assert data_root(tmp_path / "x") == pipeline_root(tmp_path / "x") == (tmp_path / "x").resolve()
