"""The compiled correlator (qspan/compiled.py): used when current, never when stale, same spans as pure
Python; and what the cyclic collector costs (qspan/runtime.py)."""

import gc
import hashlib
import os
import subprocess
import sys

import pytest

from helpers import DATA
from qspan import compiled
from qspan.correlate import Correlator, in_time_order
from qspan.output import recording

RECORDINGS = ["stock-qd4-w100.qspan.gz", "stock-ring-qd4-w100.qspan.gz"]

# What the child process prints: a digest of every span and counter of a recording correlated there.
DIGEST = """
import hashlib, json, sys
from qspan import compiled, pipeline
from qspan.model.spans import span_dict
from qspan.output import recording
corr = pipeline.correlate_recording(recording.read(sys.argv[1]), timelines=True)
doc = [[span_dict(s) for s in corr.spans], corr.stats, {k: t.dicts() for k, t in corr.timelines.items()}]
print(compiled.state)
print(hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
"""


def _digest_in_child(path, pure: bool) -> tuple[str, str]:
    env = dict(os.environ)
    env.pop("QSPAN_PURE", None)
    if pure:
        env["QSPAN_PURE"] = "1"
    out = subprocess.run([sys.executable, "-c", DIGEST, str(path)], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return out[0], out[1]


def test_the_build_is_in_use_unless_pure_is_asked_for():
    # scripts/setup.sh builds it: a test run on sources edited since says so here, not by running slower.
    if os.environ.get("QSPAN_PURE") == "1":
        assert compiled.state == "pure Python (QSPAN_PURE=1)"
    else:
        assert compiled.state == "compiled (mypyc)", compiled.state
        import qspan.correlate.correlator as module
        assert not module.__file__.endswith(".py"), module.__file__


@pytest.mark.parametrize("name", RECORDINGS)
def test_compiled_and_pure_make_the_same_spans_and_timelines(name):
    state_pure, pure = _digest_in_child(DATA / name, pure=True)
    state_default, default = _digest_in_child(DATA / name, pure=False)
    assert state_pure == "pure Python (QSPAN_PURE=1)"
    assert state_default == "compiled (mypyc)"  # the child is not told QSPAN_PURE
    assert pure == default


def test_a_stale_build_is_not_used(tmp_path, monkeypatch):
    monkeypatch.delenv("QSPAN_PURE", raising=False)
    monkeypatch.setattr(compiled, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(compiled, "state", "unset")
    path: list[str] = []
    compiled.prefer("correlate", path)
    assert path == [] and compiled.state == "unset"  # nothing built: the sources
    (tmp_path / compiled.STAMP).write_text("0" * 64 + "\n")  # built from other sources
    compiled.prefer("correlate", path)
    assert path == [] and compiled.state.startswith("pure Python: the build is older than the sources")
    (tmp_path / compiled.STAMP).write_text(compiled.sources_digest() + "\n")
    compiled.prefer("correlate", path)
    assert path == [str(tmp_path / "qspan" / "correlate")] and compiled.state == "compiled (mypyc)"


def test_the_digest_covers_every_compiled_module_and_the_interpreter():
    names = {p.name for p in compiled.sources()}
    assert {"correlator.py", "coroutines.py", "threads.py", "timeline.py", "events.py", "spans.py"} <= names
    assert "__init__.py" not in names  # the packages' __init__ choose what to load: never compiled
    h = hashlib.sha256(sys.version.encode())
    for p in compiled.sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    assert compiled.sources_digest() == h.hexdigest()


@pytest.mark.parametrize("name", RECORDINGS)
def test_correlating_makes_no_reference_cycles(name):
    # Why pipeline.correlate may pause the collector (runtime.collector_paused): all the
    # correlator drops while it runs is freed by reference counting, timelines included.
    # (The correlator itself is one cycle, through its bound handlers, freed after.)
    rec = recording.read(DATA / name)
    events = in_time_order([*rec.events, *rec.lost])
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        c = Correlator(rec.header, capture_timeline=True)
        for ev in events:
            c.add(ev)
        result = c.finish()
        found = gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(result.spans) == 200 and len(events) > 2000
    assert found == 0, f"{found} objects in reference cycles: {kinds}"


def test_collector_pauses_are_counted_per_generation():
    from qspan.runtime import CollectorPauses

    pauses = CollectorPauses()
    try:
        gc.collect(0)
        gc.collect(2)
        s = pauses.summary()
    finally:
        pauses.close()
    assert s["gen0"]["collections"] >= 1 and s["gen2"]["collections"] >= 1
    assert s["gen2"]["max_ms"] > 0 and s["gen2"]["total_s"] >= s["gen2"]["max_ms"] / 1000 - 1e-3
    assert pauses._callback not in gc.callbacks
