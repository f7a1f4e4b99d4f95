"""Package boundaries: gmt_model is a pure library."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_library_never_imports_dagster_or_mlflow():
    modules = ["schema", "data", "graph", "model", "engine", "config", "training", "evaluation", "metrics",
               "baselines", "checkpoint", "router", "feedback", "endpoints", "server", "cli", "encoder", "demo",
               "splits", "sources", "convert", "datasets", "registry"]
    code = ("import sys\n" + "".join(f"import gmt_model.{m}\n" for m in modules)
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
