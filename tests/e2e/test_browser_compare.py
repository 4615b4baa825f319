"""Before and after in the dashboard: two recordings opened with `qspan serve --open`, compared in
real headless Chromium (Debian's), and what the page draws checked against the server's comparison."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from chromium import launch, require_chromium
from helpers import DATA
from qspanlab.harness import ServerProcess as Server

pytestmark = pytest.mark.e2e
RECORDINGS = [DATA / "stock-qd4-w100.qspan.gz", DATA / "stock-ring-qd4-w100.qspan.gz"]


@pytest.fixture(scope="module")
def server():
    require_chromium()
    s = Server(*[a for r in RECORDINGS for a in ("--open", str(r))]).wait_ready()
    yield s
    s.stop()


def test_opened_recordings_stay_and_say_what_they_are(server):
    sessions = server.get("/api/sessions")[1]
    assert [(s["replay"], s["pinned"], s["recording"]) for s in sessions] == [(True, True, str(r)) for r in RECORDINGS]
    assert "opened " + str(RECORDINGS[0]) in server.stderr()


def test_compare_two_recordings_in_the_page(server, output_dir):
    a, b = (s["id"] for s in server.get("/api/sessions")[1])
    want = server.get(f"/api/compare?a={a}&b={b}")[1]["groups"]
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.base + "/")
        page.wait_for_selector("#compare-panel", state="visible")
        # first against newest by default: A is the first recording, B the second
        assert page.input_value("#compare-a-session") == a and page.input_value("#compare-b-session") == b
        page.click("#compare-run")
        page.wait_for_function("document.querySelectorAll('#compare-table tbody tr').length === 3")
        assert page.input_value("#compare-op") == "write"
        for op in ("write", "read"):
            page.select_option("#compare-op", op)
            g = want[op]
            cells = [[td.inner_text() for td in tr.query_selector_all("td")]
                     for tr in page.query_selector_all("#compare-table tbody tr")]
            assert [c[0] for c in cells] == ["mean", "p50", "p99"]
            for row, key in zip(cells, ("mean_us", "p50_us", "p99_us")):
                assert row[1:3] == [f"{g['a'][key]:.1f}", f"{g['b'][key]:.1f}"], (op, row, g)
            summary = page.inner_text("#compare-summary")
            ex = g["p99"]["explains"]
            assert f"p99 moved {g['p99']['delta_us']:+.1f} us: most of it is {ex['phase']}" in summary, summary
            # the histograms drawn are the server's counts, both sides, overlaid
            hist = page.evaluate("document.getElementById('compare-histogram').data.map(t => [t.name, t.y])")
            assert hist == [["A", g["histogram"]["a"]], ["B", g["histogram"]["b"]]]
            parts = page.evaluate("document.getElementById('compare-parts').data.map(t => [t.name, t.y.length])")
            assert [n for n, _ in parts] == ["mean", "around p50", "around p99"]
            assert all(k == len(g["mean"]["parts"]) for _, k in parts)
            page.screenshot(path=str(output_dir / f"browser-compare-{op}.png"), full_page=True)
        # one recording against itself: nothing moved, and the page says so
        page.select_option("#compare-b-session", a)
        page.click("#compare-run")
        page.wait_for_function("document.getElementById('compare-summary').innerText.includes('+0.0 us: no phase')")
        assert not errors, errors
        browser.close()


def test_open_refuses_what_is_not_a_recording(tmp_path):
    bad = tmp_path / "x.qspan"
    bad.write_text("not a recording\n")
    s = Server("--open", str(bad))
    assert s.proc.wait(timeout=60) != 0
    err = s.stderr()
    assert "not a qspan recording" in err and "Traceback" not in err, err
    s.stop()
