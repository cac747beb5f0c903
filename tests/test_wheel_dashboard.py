"""The dashboard works from an installed wheel, in any folder (not only from a source checkout).

Builds the wheel from the checkout's files, installs it into a temporary venv (``--without-pip``
on top of this test environment: its site-packages are reachable through a plain ``.pth`` path,
so torch, streamlit, ... are reused and nothing is downloaded; the editable install of this
checkout is *not* activated there), then from a folder outside the checkout:

* ``attnexplain dashboard RUNS --port P`` serves: Streamlit's health endpoint answers 200 and
  the page HTML is served;
* the installed app script (``attnexplain.dashboard.app.script_path()``, inside the venv) runs
  under Streamlit's AppTest without an exception and draws the Runs page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNEXPLAIN_RUNS_DIR")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A venv holding the freshly built wheel; returns its python, its attnexplain script and a work folder."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "attnexplain", src / "attnexplain", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=base)
    wheels = list(dist.glob("attnexplain-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], cwd=base)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip())
    # this environment's packages (torch, transformers, streamlit, ...) as a plain path: its .pth files,
    # among them the editable install of this checkout, are not processed there
    (purelib / "_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", str(wheels[0])], cwd=base)
    work = base / "elsewhere"  # outside the checkout
    work.mkdir()
    return {"python": py, "cli": venv / "bin" / "attnexplain", "purelib": purelib, "work": work}


def test_the_wheel_holds_the_dashboard_and_the_package_data(installed):
    where = _run([str(installed["python"]), "-c",
                  "import attnexplain, attnexplain.dashboard.app as a, attnexplain.data.synthetic as s; "
                  "print(attnexplain.__file__); print(a.script_path()); print(s.package_file('synthetic-negation'))"],
                 cwd=installed["work"]).stdout.split()
    for path in where:
        assert Path(path).is_file() and Path(path).is_relative_to(installed["purelib"]), path
    assert not Path(where[0]).is_relative_to(ROOT)
    pages = Path(where[1]).parent / "app_pages"
    assert {p.name for p in pages.glob("*.py")} >= {"runs.py", "explorer.py", "ablations.py", "compare.py", "live.py"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode("utf-8", "replace")


def test_attnexplain_dashboard_serves_from_any_folder(installed):
    runs = installed["work"] / "runs"
    runs.mkdir(exist_ok=True)
    port = _free_port()
    log = open(installed["work"] / "dashboard.log", "w")
    proc = subprocess.Popen([str(installed["cli"]), "dashboard", str(runs), "--port", str(port)],
                            cwd=installed["work"], env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = _get(f"http://127.0.0.1:{port}/_stcore/health")
                break
            except OSError:
                time.sleep(0.5)
        log.flush()
        assert health is not None, (installed["work"] / "dashboard.log").read_text()[-3000:]
        assert health == (200, "ok")
        status, html = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in html.lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


_APPTEST = """
import json, os, sys
from streamlit.testing.v1 import AppTest
from attnexplain.dashboard.app import script_path

os.environ["ATTNEXPLAIN_RUNS_DIR"] = sys.argv[1]
at = AppTest.from_file(str(script_path()), default_timeout=120).run()
texts = [e.value for kind in ("title", "markdown", "caption", "info", "code") for e in getattr(at, kind)]
print(json.dumps({"script": str(script_path()), "exceptions": [e.value for e in at.exception], "texts": texts}))
"""


def test_installed_app_script_draws_a_page(installed):
    runs = installed["work"] / "runs"
    runs.mkdir(exist_ok=True)
    out = json.loads(_run([str(installed["python"]), "-c", _APPTEST, str(runs)], cwd=installed["work"]).stdout.splitlines()[-1])
    assert Path(out["script"]).is_relative_to(installed["purelib"])
    assert out["exceptions"] == []
    text = "\n".join(map(str, out["texts"]))
    assert str(runs) in text  # the sidebar names the runs folder
    assert "attnexplain analyze" in text  # the empty Runs page says how to make a run
