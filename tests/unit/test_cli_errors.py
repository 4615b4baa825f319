"""Bad input: one clear line on stderr, a non-zero exit, no traceback, no hang.

The cases that need root or bpftrace to get past the first check are in tests/e2e/test_cli_errors.py.
"""

import gzip
import json
import os
import subprocess
import sys

from helpers import DATA, one_clear_error, run_qspan


def test_pid_that_does_not_exist():
    one_clear_error(run_qspan("tracer", "--pid", "99999999", "--print"), "no process with PID 99999999")


def test_program_for_a_pid_that_is_not_qemu():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        one_clear_error(run_qspan("tracer", "--pid", str(sleeper.pid), "--print"), "is not QEMU")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bpftrace_missing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no bpftrace here
    r = subprocess.run([sys.executable, "-m", "qspan.cli", "record", "--pid", "1", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=60)
    one_clear_error(r, "bpftrace not found")


def test_truncated_recording(tmp_path):
    cut = tmp_path / "cut.qspan"
    with gzip.open(DATA / "stock-qd4-w100.qspan.gz", "rt") as f:
        cut.write_text("".join(f.readlines()[:300]))
    r = run_qspan("spans", str(cut), "--out", str(tmp_path / "s.json"))
    one_clear_error(r, "truncated", "--allow-truncated")
    assert not (tmp_path / "s.json").exists()
    r = run_qspan("spans", str(cut), "--out", str(tmp_path / "s.json"), "--allow-truncated")
    assert r.returncode == 0 and (tmp_path / "s.json").exists(), r.stderr


def test_corrupted_recording(tmp_path):
    bad = tmp_path / "bad.qspan"
    bad.write_bytes(b"\x00\x01binary junk")
    one_clear_error(run_qspan("spans", str(bad), "--out", str(tmp_path / "s.json")), "not a qspan recording")


def test_summary_of_a_non_spans_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("[1, 2]")
    one_clear_error(run_qspan("summary", str(f)), "not a qspan spans JSON")


def test_perfetto_export_from_the_cli(tmp_path):
    out = tmp_path / "trace.json"
    r = run_qspan("perfetto", str(DATA / "stock-qd4-w100.qspan.gz"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    evs = json.loads(out.read_text())["traceEvents"]
    assert sum(1 for e in evs if e["ph"] == "b" and "request" in e.get("args", {})) == 200
