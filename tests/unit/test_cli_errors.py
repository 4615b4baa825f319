"""Bad input: one clear line on stderr, a non-zero exit, no traceback, no hang."""

import os
import subprocess
import sys


from helpers import DATA, REPO, require_tracing, run_qspan


def _one_clear_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("qspan: error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_pid_that_does_not_exist():
    _one_clear_error(run_qspan("tracer", "--pid", "99999999", "--print"), "no process with PID 99999999")


def test_pid_that_is_not_qemu():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _one_clear_error(run_qspan("attach", "--pid", str(sleeper.pid), "--duration", "1", "--out", "/tmp/x.json"),
                         "is not QEMU")
    finally:
        sleeper.kill()


def test_bpftrace_missing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), PATH=str(tmp_path))  # no bpftrace here
    r = subprocess.run([sys.executable, "-m", "qspan.cli", "record", "--pid", "1", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=60)
    _one_clear_error(r, "bpftrace not found")


def test_not_root(tmp_path):
    require_tracing()
    # Run qspan as an unprivileged user: it must refuse before touching anything.
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"))
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "qspan.cli",
                        "record", "--pid", "1", "--out", "/tmp/never"],
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    _one_clear_error(r, "needs root")


def test_truncated_recording(tmp_path):
    import gzip
    cut = tmp_path / "cut.qspan"
    cut.write_text("".join(gzip.open(DATA / "stock-qd4-w100.qspan.gz", "rt").readlines()[:300]))
    r = run_qspan("spans", str(cut), "--out", str(tmp_path / "s.json"))
    _one_clear_error(r, "truncated", "--allow-truncated")
    assert not (tmp_path / "s.json").exists()
    r = run_qspan("spans", str(cut), "--out", str(tmp_path / "s.json"), "--allow-truncated")
    assert r.returncode == 0 and (tmp_path / "s.json").exists()


def test_corrupted_recording(tmp_path):
    bad = tmp_path / "bad.qspan"
    bad.write_bytes(b"\x00\x01binary junk")
    _one_clear_error(run_qspan("spans", str(bad), "--out", str(tmp_path / "s.json")), "not a qspan recording")


def test_summary_of_a_non_spans_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("[1, 2]")
    _one_clear_error(run_qspan("summary", str(f)), "not a qspan spans JSON")


def test_perfetto_export_from_the_cli(tmp_path):
    out = tmp_path / "trace.json"
    r = run_qspan("perfetto", str(DATA / "stock-qd4-w100.qspan.gz"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    import json
    evs = json.loads(out.read_text())["traceEvents"]
    assert sum(1 for e in evs if e["ph"] == "b" and e["name"].startswith(("write #", "read #"))) == 200
