"""Package boundaries: gmt_model is a pure library."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_library_never_imports_dagster_or_mlflow():
    # every module of the package, found on disk (subpackages included)
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "gmt_model").rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    assert "gmt_model.serving.registry" in modules or any(m.endswith(".registry") for m in modules), modules
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "bad = [m for m in ('dagster', 'mlflow') if m in sys.modules]\n"
            + "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_public_api_is_lazy_and_complete():
    code = ("import sys, gmt_model\nassert 'torch' not in sys.modules\n"
            "for n in gmt_model.__all__: getattr(gmt_model, n)\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
