"""The wheel, installed into a fresh venv outside the checkout, traces and serves on its own.

Built from a copy of the checkout's files (never in it: no build/ appears), installed with
`pip install --no-deps`; its dependencies (fastapi, uvicorn, pyelftools) come from the running
venv's site-packages through a .pth path entry, which does not run that venv's own .pth files:
the editable install of qspan (a `__editable__` finder) stays off, so `import qspan` can only be
the wheel. Everything runs from tmp_path with a clean environment (no PYTHONPATH, no .venv/bin).
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, require_tracing
from qspanlab import lab
from qspanlab.harness import free_port

pytestmark = pytest.mark.e2e

DEPS = Path(sysconfig.get_paths()["purelib"])  # the running venv's site-packages: fastapi, uvicorn, pyelftools


def _checkout_copy(dest: Path) -> Path:
    """The files git would commit (tracked, plus new files not ignored), copied to `dest`."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():  # tracked but deleted in the work tree: not part of it any more
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _build_wheel(src: Path, out: Path) -> Path:
    # Offline with the venv's own setuptools when it can build wheels (setuptools >= 70.1, or the
    # `wheel` package); otherwise pip builds in an isolated env from the package index, as setup.sh installs.
    setuptools = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    own = setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", *(["--no-build-isolation"] if own else []), "-w", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("qspan-*.whl")
    return wheel


def _build_outputs() -> dict[str, float]:
    """What a setuptools build leaves behind in a source tree: build/*, *.egg-info (with their mtimes)."""
    found = [*REPO.glob("build/*"), *REPO.glob("*.egg-info"), *REPO.glob("backend/*.egg-info"), *REPO.glob("dist")]
    return {str(p): p.stat().st_mtime for p in found}


def _clean_env(home: Path) -> dict:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "QSPAN_TEST_RUN": os.environ["QSPAN_TEST_RUN"]}  # the leak check's marker, nothing else


WHERE_IS_QSPAN = """
import importlib.util, json, sys
import qspan, qspan.cli, qspan.server.app
from qspan import resources
print(json.dumps({
    "modules": sorted({m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "qspan" and getattr(m, "__file__", None)}),
    "path": sys.path, "meta_path": [repr(f) for f in sys.meta_path],
    "tracers": str(resources.tracers()), "frontend": str(resources.frontend()),
    "qspanlab": importlib.util.find_spec("qspanlab") is not None,
}))
"""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_wheel_installed_outside_the_checkout_works(tmp_path, tmp_path_factory):
    require_tracing()
    before = _build_outputs()
    wheel = _build_wheel(_checkout_copy(tmp_path / "src"), tmp_path)
    assert _build_outputs() == before, "building the wheel wrote into the checkout"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = _clean_env(tmp_path)
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True, env=env, cwd=tmp_path).stdout.strip())
    (site / "qspan_test_deps.pth").write_text(f"{DEPS}\n")  # a path line: DEPS's own .pth files are not run

    # `import qspan` is the wheel's, and nothing else of the checkout is reachable
    r = subprocess.run([str(py), "-c", WHERE_IS_QSPAN], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    where = json.loads(r.stdout)
    assert where["modules"] and all(Path(f).is_relative_to(venv) for f in where["modules"]), where["modules"]
    assert Path(where["tracers"]).is_relative_to(venv) and Path(where["frontend"]).is_relative_to(venv), where
    assert [p for p in where["path"] if (tmp_path / p).resolve().is_relative_to(REPO)] == [str(DEPS)], where["path"]
    assert not any("editable" in f.lower() for f in where["meta_path"]), where["meta_path"]
    assert not where["qspanlab"], "the lab is not part of the wheel"

    info = lab.up(tmp_path_factory.mktemp("lab"))
    server = None
    try:
        # the generated program, shown without attaching: the same text the checkout generates
        r = subprocess.run([str(venv / "bin" / "qspan"), "tracer", "--pid", str(info.pid), "--print"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        text = r.stdout
        assert text.startswith("// generated by qspan") and "do not edit" in text.splitlines()[0]
        assert f"// target: pid {info.pid}," in text
        assert "uprobe:" in text and "tracepoint:sched:" in text and "uretprobe" not in text
        mine = subprocess.run([sys.executable, "-m", "qspan.cli", "tracer", "--pid", str(info.pid), "--print"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert mine.returncode == 0 and text == mine.stdout, "the wheel and the checkout generate different programs"

        # the dashboard and the API, from the wheel's package data
        port = free_port()
        log = open(tmp_path / "serve.log", "w+")
        server = subprocess.Popen([str(venv / "bin" / "qspan"), "serve", "--port", str(port)], env=env, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=log)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"qspan serve exited: {(tmp_path / 'serve.log').read_text()}"
            try:
                status, body = _get(base + "/api/processes")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "qspan serve did not answer within 60 s"
                time.sleep(0.3)
        assert status == 200, body
        assert info.pid in [row["pid"] for row in json.loads(body)], body
        status, body = _get(base + "/")
        assert status == 200 and body == (REPO / "frontend" / "index.html").read_bytes()
        status, body = _get(base + "/static/vendor/plotly-4.1.2.min.js")
        assert status == 200 and body == (REPO / "frontend" / "vendor" / "plotly-4.1.2.min.js").read_bytes()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        lab.down(Path(info.dir))
