"""bench/browser_trace.py: what a page's long tasks were made of, from a Chrome trace."""

import gzip
import json
import sys

import pytest

from helpers import DATA, REPO

sys.path.insert(0, str(REPO / "bench"))
import browser_trace  # noqa: E402


def _x(name, ts_ms, dur_ms, tdur_ms=None, tid=1, pid=10):
    e = {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts_ms * 1000, "dur": dur_ms * 1000}
    if tdur_ms is not None:
        e["tdur"] = tdur_ms * 1000
    return e


def _main(pid=10, tid=1):
    return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": "CrRendererMain"}}


def test_a_recorded_trace_of_the_dashboard_at_full_rate():
    """Three long tasks of bench/dashboard.py --trace (the two-disk lab at full rate, Chromium's
    session at autogroup nice -10), the events of the page's main thread around them."""
    events = json.loads(gzip.decompress((DATA / "dashboard-trace-slice.json.gz").read_bytes()))["traceEvents"]
    tasks = browser_trace.long_tasks(events)
    assert [round(t.wall_ms, 1) for t in tasks] == [84.7, 119.8, 54.8]
    assert [t.charts for t in tasks] == [["heatmap"], ["phases-time"], ["phases-time"]]
    for t in tasks:
        assert sum(t.kinds_ms.values()) == pytest.approx(t.wall_ms, abs=0.01)  # own times add up to the task
        assert 0 < t.cpu_ms < t.wall_ms and t.main_kind == "script"
    assert tasks[0].kinds_ms["style & layout"] == pytest.approx(15.4, abs=0.1)
    lines = browser_trace.summary(tasks)
    assert lines[1] == "the main thread's CPU in them: 123 ms of 259 ms (48 %; the rest it waited for a core)"
    assert any(line.startswith("  120 ms, CPU 34 ms") and "(drawing phases-time)" in line for line in lines)


def test_own_time_is_split_by_what_ran():
    events = [_main(), _x("RunTask", 0, 100, tdur_ms=70), _x("FunctionCall", 10, 60), _x("Layout", 20, 20),
              _x("MinorGC", 75, 5), _x("Paint", 90, 5), _x("RunTask", 200, 30)]  # the second is not long
    (task,) = browser_trace.long_tasks(events)
    assert dict(task.kinds_ms) == {"other": 30, "script": 40, "style & layout": 20, "gc": 5, "paint": 5}
    assert (task.wall_ms, task.cpu_ms, task.charts) == (100, 70, [])


def test_the_page_is_the_renderer_that_ran_the_most():
    events = [_main(10, 1), _main(20, 2), _x("RunTask", 0, 60, pid=10, tid=1), _x("RunTask", 0, 80, pid=20, tid=2),
              _x("RunTask", 100, 90, pid=20, tid=2)]
    assert browser_trace.main_thread(events) == (20, 2)
    assert [t.wall_ms for t in browser_trace.long_tasks(events)] == [80, 90]
    assert browser_trace.long_tasks([]) == [] and browser_trace.summary([]) == ["no long tasks in the trace"]
