"""qspan compare: the parts of a critical path, and where a difference between two traces went.

On the spans of real recorded streams (tests/support/data), changed in one known part where a
test needs to know the answer.
"""

import copy
import json

import pytest

from helpers import DATA, one_clear_error, run_qspan
from qspan import pipeline
from qspan.model.spans import span_dict
from qspan.output import compare, recording

RECORDINGS = ["stock-qd4-w100.qspan.gz", "stock-ring-qd4-w100.qspan.gz"]


@pytest.fixture(scope="module")
def real() -> dict[str, list[dict]]:
    return {name: [span_dict(s) for s in pipeline.correlate_recording(recording.read(DATA / name)).spans]
            for name in RECORDINGS}


def slower(spans: list[dict], phase: str, by_ns: int) -> list[dict]:
    """The same spans with one phase (the first of that name) longer by by_ns."""
    out = copy.deepcopy(spans)
    for s in out:
        ph = next(p for p in s["phases"] if p["name"] == phase)
        ph["dur_ns"] += by_ns
        s["dur_ns"] += by_ns
    return out


def test_parts_add_up_to_each_span_and_split_the_handoff_by_what_ran_instead(real):
    for spans in real.values():
        split = 0
        for s in spans:
            p = compare.parts(s)
            assert sum(p.values()) == s["dur_ns"], (s["id"], p)
            handoff = sum(ph["dur_ns"] for ph in s["phases"] if ph["name"] == "handoff")
            assert sum(v for k, v in p.items() if k.startswith("handoff")) == handoff
            split += any(k.startswith("handoff/") for k in p)
        assert split > len(spans) // 2  # real handoffs say what ran instead


def test_a_trace_against_itself_moved_nothing(real):
    spans = real[RECORDINGS[0]]
    cmp = compare.compare(spans, spans)
    assert set(cmp["groups"]) == {"read", "write"}
    for g in cmp["groups"].values():
        for key in ("mean", "p50", "p99"):
            assert g[key]["delta_us"] == 0 and g[key]["explains"] is None
            assert all(r["delta_us"] == 0 for r in g[key]["parts"])
        assert g["histogram"]["a"] == g["histogram"]["b"]


@pytest.mark.parametrize("phase", ["device", "queue", "submit"])
def test_one_part_made_slower_is_what_explains_every_percentile(real, phase):
    a = real[RECORDINGS[1]]
    b = slower(a, phase, 50_000)
    cmp = compare.compare(a, b)
    for op, g in cmp["groups"].items():
        for key in ("mean", "p50", "p99"):
            assert g[key]["delta_us"] == pytest.approx(50.0), (op, key)  # every request moved by 50 us
            assert g[key]["explains"] == {"phase": phase, "delta_us": pytest.approx(50.0), "share": pytest.approx(1.0),
                                          "part": phase, "part_delta_us": pytest.approx(50.0),
                                          "part_share": pytest.approx(1.0)}
        assert sum(g["histogram"]["a"]) == sum(g["histogram"]["b"]) == g["a"]["requests"]


def test_the_band_around_a_percentile_decomposes_its_change(real):
    a, b = real[RECORDINGS[0]], real[RECORDINGS[1]]
    cmp = compare.compare(a, b)
    for g in cmp["groups"].values():
        for key in ("p50", "p99"):
            band = g[key]
            assert sum(r["delta_us"] for r in band["parts"]) == pytest.approx(band["band_delta_us"])
            assert band["band_requests"][0] >= 5 and band["band_requests"][1] >= 5
            ex = band["explains"]
            assert ex and ex["delta_us"] * band["band_delta_us"] > 0
            by_phase = {}
            for r in band["parts"]:
                by_phase[r["part"].split("/")[0]] = by_phase.get(r["part"].split("/")[0], 0) + r["delta_us"]
            assert ex["delta_us"] == pytest.approx(max((d for d in by_phase.values() if d * band["band_delta_us"] > 0),
                                                       key=abs))
            assert ex["part"].split("/")[0] == ex["phase"] and abs(ex["part_delta_us"]) <= abs(ex["delta_us"]) + 1e-9


def test_only_groups_on_both_sides_are_compared(real):
    spans = real[RECORDINGS[0]]
    reads = [s for s in spans if s["op"] == "read"]
    cmp = compare.compare(spans, reads)
    assert set(cmp["groups"]) == {"read"} and cmp["only_in_a"] == ["write"] and cmp["only_in_b"] == []


def test_window_keeps_the_spans_that_started_in_it(real):
    spans = real[RECORDINGS[0]]
    t0 = min(s["start_ns"] for s in spans)
    first = compare.window(spans, None, 0.05)
    rest = compare.window(spans, 0.05, None)
    assert len(first) + len(rest) == len(spans) and first and rest
    assert all(s["start_ns"] < t0 + 50_000_000 <= r["start_ns"] for s in first for r in rest)


def test_cli_compares_a_recording_with_a_spans_file(real, tmp_path):
    spans_file = tmp_path / "b.json"
    spans_file.write_text(json.dumps({"schema": "qspan.spans/1", "spans": slower(real[RECORDINGS[0]], "device", 80_000)}))
    out = tmp_path / "cmp.json"
    r = run_qspan("compare", str(DATA / RECORDINGS[0]), str(spans_file), "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "qspan.compare/1" and doc["groups"]["write"]["p99"]["explains"]["part"] == "device"
    assert "p99 moved +80.0 us: most of it device (+80.0 us, 100 %" in r.stdout


def test_cli_compares_two_windows_of_one_recording():
    rec = str(DATA / RECORDINGS[0])
    r = run_qspan("compare", rec, rec, "--window-a", ":0.05", "--window-b", "0.05:")
    assert r.returncode == 0, r.stderr
    assert "[:0.05 s]" in r.stdout and "[0.05: s]" in r.stdout


@pytest.mark.parametrize("window, needle", [("5", "expected FROM:TO"), ("x:1", "expected FROM:TO"),
                                            ("3:1", "its end is not after its start"), ("100:", "no spans in window")])
def test_cli_bad_window(window, needle):
    rec = str(DATA / RECORDINGS[0])
    one_clear_error(run_qspan("compare", rec, rec, "--window-b", window), needle)


def test_cli_bad_input(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    one_clear_error(run_qspan("compare", str(bad), str(DATA / RECORDINGS[0])), "not a qspan spans JSON")
    one_clear_error(run_qspan("compare", str(tmp_path / "missing"), str(DATA / RECORDINGS[0])), "missing")


def test_the_server_compares_two_sessions_as_the_cli_does(real, tmp_path):
    """/api/compare on two recordings opened in the server: the CLI's comparison, plus the sides."""
    from helpers import local_client
    from qspan.server.app import create_app
    from qspan.server.settings import Settings

    app = create_app(Settings(record_dir=tmp_path / "sessions"))
    with local_client(app) as client:
        a, b = (app.state.manager.open_recording(DATA / name).id for name in RECORDINGS)
        r = client.get("/api/compare", params={"a": a, "b": b})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["a"]["session"] == a and doc["b"]["session"] == b
        want = compare.compare(real[RECORDINGS[0]], real[RECORDINGS[1]])
        assert doc["groups"] == json.loads(json.dumps(want["groups"]))
        # one window of a session against another of the same session
        spans = real[RECORDINGS[0]]
        writes = sorted(s["start_ns"] for s in spans if s["op"] == "write")
        mid = writes[len(writes) // 2]  # A: the writes that started before it; B: those that ended after
        r = client.get("/api/compare", params={"a": a, "b": a, "a_until_ns": mid - 1, "b_since_ns": mid})
        assert r.status_code == 200, r.text
        w = r.json()["groups"]["write"]
        assert 0 < w["a"]["requests"] < 100 and 0 < w["b"]["requests"] < 100
        assert client.get("/api/compare", params={"a": a, "b": "nope"}).status_code == 404
        r = client.get("/api/compare", params={"a": a, "b": b, "b_since_ns": 1 << 62})
        assert r.status_code == 422 and "no spans in the window" in r.json()["detail"]


def test_every_field_is_documented(real):
    from helpers import REPO

    doc = (REPO / "docs" / "compare.md").read_text()
    cmp = compare.compare(real[RECORDINGS[0]], real[RECORDINGS[1]])
    keys: set[str] = set()

    def walk(x, under_groups=False):
        if isinstance(x, dict):
            for k, v in x.items():
                if not under_groups:
                    keys.add(k)
                walk(v, under_groups=(k == "groups"))
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk({**cmp, "a": {"source": ""}, "b": {"session": "", "since_ns": 0, "until_ns": None}})
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/compare.md does not name {missing}"
    assert compare.SCHEMA in doc
