"""Bad input that only a machine able to trace gets far enough to see: root, bpftrace on PATH.

The rest of the CLI's error cases need neither and are in tests/unit/test_cli_errors.py.
"""

import os
import subprocess
import sys

import pytest

from helpers import one_clear_error, require_tracing, run_qspan

pytestmark = pytest.mark.e2e


def test_attach_to_a_pid_that_is_not_qemu(tmp_path):
    require_tracing()  # as root with bpftrace the tracing checks pass and the target is looked at
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        one_clear_error(run_qspan("attach", "--pid", str(sleeper.pid), "--duration", "1", "--out", str(tmp_path / "x.json")),
                        "is not QEMU")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / "x.json").exists()


def test_not_root():
    require_tracing()
    # Run qspan as an unprivileged user: it must refuse before touching anything.
    env = dict(os.environ)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "qspan.cli",
                        "record", "--pid", "1", "--out", "/tmp/never"],
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    one_clear_error(r, "needs root")
