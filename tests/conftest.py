"""Shared fixtures; shared helpers live in tests/support/helpers.py."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import helpers  # noqa: E402
from helpers import OUTPUT, REPO, UNIT  # noqa: E402

E2E = REPO / "tests" / "e2e"

# Every process this test run starts inherits this marker, bpftrace included: the leak check
# must never mistake (or kill) another run's tracer on the same machine.
RUN_MARKER = f"QSPAN_TEST_RUN={os.getpid()}-{time.time_ns()}"
os.environ["QSPAN_TEST_RUN"] = RUN_MARKER.split("=", 1)[1]


def pytest_collection_modifyitems(config, items):
    """The folder decides the kind: tests/e2e/ is e2e (so `-m "not e2e"` equals tests/unit/), tests/unit/ never is."""
    misplaced = []
    for item in items:
        path = Path(item.path)
        if path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
        elif path.is_relative_to(UNIT) and item.get_closest_marker("e2e"):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError("e2e tests under tests/unit/ (move them to tests/e2e/): " + ", ".join(misplaced))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Tell require_tracing() which test runs, fixtures of any scope included: it fails for one under tests/unit/."""
    helpers.current_test_path = Path(item.path)
    try:
        return (yield)
    finally:
        helpers.current_test_path = None


@pytest.fixture(autouse=True)
def no_leaked_tracers():
    """No test may leave a bpftrace attached to anything."""
    before = helpers.tracer_pids()
    yield
    leaked = helpers.tracer_pids() - before
    if leaked:
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"test leaked bpftrace processes {sorted(leaked)}")


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
