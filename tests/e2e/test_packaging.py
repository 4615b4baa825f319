"""docker-compose.yml, validated by Debian's docker-compose without a container engine (none runs here)."""

import os
import re
import shutil
import subprocess

import pytest

from helpers import REPO

pytestmark = pytest.mark.e2e


def test_compose_file_is_valid_and_safe():
    tool = shutil.which("docker-compose")
    if not tool:
        pytest.fail("docker-compose missing (scripts/setup.sh installs Debian's, which validates without an engine)")
    r = subprocess.run([tool, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                       env=dict(os.environ, QSPAN_TOKEN="t0ken"), timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = r.stdout
    assert "pid: host" in cfg and "privileged: true" in cfg
    assert re.search(r"- 127\.0\.0\.1:8321:8321", cfg), "published on the host's loopback only"
    assert "- t0ken" in cfg, "the server in the container requires the token"
    for mount in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf"):
        assert f"- {mount}:{mount}" in cfg
    # without a token it refuses to start
    r = subprocess.run([tool, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "QSPAN_TOKEN"}, timeout=60)
    assert r.returncode != 0 and "set QSPAN_TOKEN" in r.stderr
