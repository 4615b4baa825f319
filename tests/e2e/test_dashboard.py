"""The dashboard as a storage engineer uses it, in Debian's headless Chromium, against a lab VM with
two disks writing at full rate: the disk and node selector, the time windows, brushing a range,
the heatmap and the views over time, finding a request and its permalink, and the same permalink
into the session's recording opened with `qspan serve --open`. (The page's long tasks at full
rate are a benchmark's figures, bench/dashboard.py, not a timed assertion here.)

Every check reads what the page drew (the plots' data, the tables' rows) and holds it to what
the server says for the same view, or to the filter the user set.
"""

from __future__ import annotations

import math
import os
import re
import time

import pytest
from playwright.sync_api import sync_playwright

from chromium import full_page_screenshot, launch, require_chromium
from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess as Server

pytestmark = pytest.mark.e2e

# Opening the session's recording (~100 MB of a minute at full rate) replays it whole before the
# server serves: ~40 s on an idle 2-core machine here; the bound leaves room for a busy one.
OPEN_RECORDING_S = 300


@pytest.fixture(scope="module")
def two_disks(tmp_path_factory):
    require_tracing()
    require_chromium()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d, setup="two-disks", name="two-disks")
    server = Server().wait_ready()
    yield info, server
    server.stop()
    lab.down(d)


def _frame_charts(page) -> dict:
    return page.evaluate("chartsFrame && chartsFrame.charts")


def _wait_view(page, condition: str, timeout: float = 60_000) -> None:
    """Wait until the newest charts the page drew satisfy `condition` (JS, over `c` and `view`)."""
    page.wait_for_function(f"(() => {{ const c = chartsFrame && chartsFrame.charts; return !!c && !drawing && ({condition}); }})()",
                           timeout=timeout)


def _drawn(page, chart: str, what: str = "null") -> list:
    """Scroll a chart into view, as a person would to read it, wait until it is drawn from the
    newest frame (off screen, the page does not redraw it), and read at once that frame's charts
    and `what` (JS) of the chart: a frame arriving in between cannot part them."""
    page.locator(f"#{chart}").scroll_into_view_if_needed()
    return page.wait_for_function(f"isDrawn('{chart}') && [chartsFrame.charts, {what}]", timeout=30_000).json_value()


def _wait_request(page, span_id: str, timeout: float = 60_000) -> None:
    """Wait until the page shows request `span_id`'s detail; if it does not, fail with what the
    page says instead (its error line, its title)."""
    try:
        page.wait_for_function(f"document.getElementById('detail-title').textContent.includes('#{span_id}:')", timeout=timeout)
    except Exception:
        said = page.evaluate("[document.getElementById('error').textContent, document.getElementById('detail-title').textContent]")
        pytest.fail(f"request {span_id} not shown at {page.url}: error {said[0]!r}, title {said[1]!r}")


def test_views_selector_brush_find_and_permalinks(two_disks, output_dir):
    vm, server = two_disks
    sid = server.attach(vm.pid)
    loads = ["loop --dev /dev/vda --op write --qd 4 --duration 5",
             "loop --dev /dev/vdb --op write --qd 2 --duration 5",
             "loop --dev /dev/vdb --op read --qd 1 --duration 5"]
    for cmd in loads:
        lab.send_command(vm, cmd)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.base + "/")
            page.wait_for_function("state.session !== null", timeout=30_000)  # the live session is opened
            _wait_view(page, "c.t_s.length >= 3 && c.groups.length === 2", timeout=120_000)

            # 1. the selector offers the VM, each disk by its device id and each block node
            scopes = page.eval_on_selector_all("#scope option", "os => os.map((o) => o.value)")
            assert scopes[:3] == ["all", "disk:vda", "disk:vdb"] and {"node:disk0", "node:disk1"} <= set(scopes), scopes
            page.select_option("#scope", "disk:vdb")
            _wait_view(page, "chartsFrame.view.scope === 'disk:vdb'")
            # what is drawn is the view's: the heatmap's counts are the requests of its bins
            c, heat = _drawn(page, "heatmap", "document.getElementById('heatmap').data[0].z")
            assert sum(n or 0 for row in heat for n in row) == sum(c["requests"]) > 0
            assert set(c["groups"]) == {"read", "write"}
            slow = page.eval_on_selector_all("#slowest tbody tr", "rs => rs.map((r) => r.children[2].textContent)")
            assert slow and set(slow) == {"vdb"}, slow
            # ... and is what the server's REST view says for the same scope and window
            rest = server.get(f"/api/sessions/{sid}/charts?scope=disk:vdb&window_s=60")[1]["charts"]
            assert set(rest["groups"]) == {"read", "write"}
            page.select_option("#scope", "disk:vda")
            _wait_view(page, "chartsFrame.view.scope === 'disk:vda'")
            assert _frame_charts(page)["groups"] == ["write"]
            full_page_screenshot(page, output_dir / "dashboard-1-disk.png")

            # 2. windows: the last 10 s is ten one-second points with exact percentiles
            page.click("#viewbar .windows button[data-window='10']")
            _wait_view(page, "chartsFrame.view.window_s === 10 && c.t_s.length === 10")
            c = _frame_charts(page)
            assert c["bin_s"] == 1 and c["exact_percentiles"] and c["t1_s"] - c["t0_s"] == 9
            lat = _drawn(page, "latency", "document.getElementById('latency').data.map((t) => [t.name, t.x.length])")[1]
            assert ["write p99", 10] in lat, lat
            # hover text says what a phase and a category mean (the schema's words)
            hovers = _drawn(page, "phases-time", "document.getElementById('phases-time').data.map((t) => t.hovertemplate)")[1]
            assert any("ready until the coroutine is entered again" in h for h in hovers), hovers
            hovers = _drawn(page, "instead", "document.getElementById('instead').data.map((t) => t.hovertemplate)")[1]
            assert any("the coroutines of other guest requests" in h for h in hovers)

            # 3. brushing a range on the latency chart zooms every panel and the slowest list to it
            page.click("#viewbar .windows button[data-window='60']")
            _wait_view(page, "chartsFrame.view.window_s === 60 && c.t_s.length >= 10")
            _drawn(page, "latency")
            box = page.locator("#latency .nsewdrag").bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.55, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=8)
            page.mouse.move(box["x"] + box["width"] * 0.95, y, steps=8)
            page.mouse.up()
            _wait_view(page, "chartsFrame.view.range_s !== null")
            rng = page.evaluate("view.range_s")
            c = _frame_charts(page)
            # the range in whole seconds (its end held to the newest second: the axis pads past it)
            assert c["t0_s"] == math.floor(rng[0]) and c["t0_s"] < c["t1_s"] <= math.floor(rng[1])
            assert page.locator("#range").is_visible()
            ends = page.evaluate("chartsFrame.charts.slowest.map((r) => r.end_ns)")
            assert ends and all(c["t0_s"] * 1e9 <= e < (c["t1_s"] + 1) * 1e9 for e in ends)
            full_page_screenshot(page, output_dir / "dashboard-2-brushed.png")
            page.click("#range-clear")
            _wait_view(page, "chartsFrame.view.range_s === null")

            # 4. find a request: a disk, an op, an offset range and a latency bound
            page.select_option("#find-scope", "disk:vdb")
            page.select_option("#find-op", "write")
            page.fill("#find-offset-min", "0")
            page.fill("#find-offset-max", "32M")
            page.fill("#find-min-us", "1")
            page.click("#find-form button[type='submit']")
            page.wait_for_selector("#find-results tbody tr", timeout=30_000)
            rows = page.eval_on_selector_all("#find-results tbody tr", "rs => rs.map((r) => [...r.children].map((td) => td.textContent))")
            assert all(r[1] == "write" and r[2] == "vdb" and int(r[3]) < 32 << 20 and float(r[5]) >= 1 for r in rows), rows[:5]
            note = page.inner_text("#find-note")
            assert re.search(r"\d+ found", note)
            print(f"find: {note}")  # how far back the ring reaches: a found request is kept at least that long
            wanted = rows[0][0]
            page.click(f"#find-results tbody tr[data-span='{wanted}']")
            _wait_request(page, wanted)
            page.wait_for_function("document.getElementById('waterfall').data && document.getElementById('waterfall').data[0].y.length > 2")
            link = page.evaluate("location.href")
            assert f"session={sid}" in link and f"span={wanted}" in link

            # 5. the permalink opens the same request on another page
            other = browser.new_page(viewport={"width": 1500, "height": 1100})
            other.goto(link)
            _wait_request(other, wanted)
            labels = other.evaluate("document.getElementById('timeline').data.flatMap((t) => t.customdata)")
            assert labels and not any(re.search(r"0x[0-9a-f]{6,}", x) for x in labels), labels[:10]
            full_page_screenshot(other, output_dir / "dashboard-3-permalink.png")
            assert errors == [], errors
            browser.close()
    finally:
        lab.send_command(vm, "stop")
        status = server.request("DELETE", f"/api/sessions/{sid}")[1]

    # 6. the same request from the session's recording, opened elsewhere (`qspan serve --open`)
    recording = status["recording"]
    opened = time.monotonic()
    viewer = Server("--open", recording).wait_ready(timeout=OPEN_RECORDING_S)
    print(f"opened the session's recording ({os.path.getsize(recording) >> 20} MiB) in {time.monotonic() - opened:.0f} s")
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            name = recording.rsplit("/", 1)[-1]
            page.goto(f"{viewer.base}/#recording={name}&span={wanted}")
            _wait_request(page, wanted)
            page.wait_for_function("document.getElementById('timeline').data && document.getElementById('timeline').data[0].x.length > 0",
                                   timeout=60_000)
            _wait_view(page, "c.t_s.length > 0")
            scopes = page.eval_on_selector_all("#scope option", "os => os.map((o) => o.value)")
            assert {"disk:vda", "disk:vdb"} <= set(scopes)
            # the recording's views: everything it holds, one disk, its heatmap
            page.click("#viewbar .windows button[data-window='0']")
            page.select_option("#scope", "disk:vdb")
            _wait_view(page, "chartsFrame.view.scope === 'disk:vdb' && chartsFrame.view.window_s === 0")
            c = _frame_charts(page)
            assert set(c["groups"]) == {"read", "write"} and sum(c["requests"]) > 0
            c, heat = _drawn(page, "heatmap", "document.getElementById('heatmap').data[0].z")
            assert sum(n or 0 for row in heat for n in row) == sum(c["requests"])
            full_page_screenshot(page, output_dir / "dashboard-4-recording.png")
            browser.close()
    finally:
        viewer.stop()
