"""The wheel works for a library user: built from the working tree, installed into a fresh venv,
``gmtrouter demo`` and ``gmtrouter train`` run outside the repository.

The fresh venv gets the wheel with ``--no-deps`` and sees the project venv's
installed dependencies through a ``.pth`` line (no network, seconds).  A
``.pth`` *line* adds a folder to ``sys.path`` without running that folder's
own ``.pth`` files, so the project's editable install is not visible there:
``gmt_model`` comes from the wheel alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env=None, timeout=300):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if "__pycache__" not in p.parts and not p.name.endswith(".pyc")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    # the working tree as git sees it (tracked + untracked, not ignored): no stale build/ folders
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = work / "src"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(work / "dist"), str(src)], cwd=work)
    (wheel,) = (work / "dist").glob("gmtrouter-*.whl")
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=work)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work).strip())
    (site / "_gmtrouter_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"wheel": wheel, "venv": venv, "py": py, "site": site, "work": work}


def test_the_wheel_ships_the_library_and_its_default_configs_only(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"gmt_model", "gmtrouter-0.1.0.dist-info"}, top  # no generic `assets` / `pipelines`
    for rel in ("configs/datasets.yaml", "configs/llm_descriptions.yaml", "configs/model_config_train/demo.yaml",
                "configs/model_config_test/gmtrouter.yaml"):
        assert f"gmt_model/{rel}" in names, rel
    # the chat page ships with the server module, wherever the layout puts it
    server = next(n for n in names if n.endswith("/server.py"))
    assert server.rsplit("/", 1)[0] + "/static/chat.html" in names, server


def test_demo_and_train_outside_the_repository(installed, tmp_path):
    py, site = installed["py"], installed["site"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GMTROUTER_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE",
               PATH=f"{installed['venv'] / 'bin'}:{env.get('PATH', '')}")
    cwd = tmp_path / "project"
    cwd.mkdir()
    before = _tree(site)
    probe = ("import json, gmt_model\n"
             "from gmt_model.paths import default_home, package_config\n"
             "from gmt_model.data.datasets import load_source_config, load_llm_descriptions\n"
             "print(json.dumps({'module': gmt_model.__file__, 'home': str(default_home()),\n"
             "  'train_config': str(package_config('model_config_train/demo.yaml')),\n"
             "  'mt_bench_kind': load_source_config('mt_bench', env={}).kind,\n"
             "  'llms': len(load_llm_descriptions())}))\n")
    info = json.loads(_run([str(py), "-c", probe], cwd=cwd, env=env))
    assert Path(info["module"]).is_relative_to(site), info  # the wheel's copy, not the repository's
    assert info["home"] == str((cwd / ".gmtrouter").resolve()), info  # the working directory, not site-packages
    assert info["mt_bench_kind"] and info["llms"] > 0  # the packaged default configs are read
    home = tmp_path / "home"
    moved = json.loads(_run([str(py), "-c", probe], cwd=cwd, env={**env, "GMTROUTER_HOME": str(home)}))
    assert moved["home"] == str(home.resolve())

    gmtrouter = str(installed["venv"] / "bin" / "gmtrouter")
    _run([gmtrouter, "demo", "--out", "./data/demo", "--size", "tiny"], cwd=cwd, env=env)
    for split in ("training", "valid", "test"):
        assert (cwd / "data" / "demo" / f"{split}_set.jsonl").stat().st_size > 0
    # the packaged seed-style demo config: its relative paths (./data/demo, ./models, ./saved_models) are the cwd's
    out = _run([gmtrouter, "train", "--config", info["train_config"], "--epochs", "2", "--quiet", "--device", "cpu",
                "--skip-test"], cwd=cwd, env=env)
    assert (cwd / "saved_models" / "demo" / "gmtrouter" / "config.json").is_file(), out[-2000:]
    assert (cwd / "models" / "demo").is_dir()
    assert _tree(site) == before, sorted(_tree(site) ^ before)[:20]  # nothing written into site-packages
    assert not (site / ".gmtrouter").exists() and not (site.parent / ".gmtrouter").exists()
