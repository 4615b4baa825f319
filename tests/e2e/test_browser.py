"""The dashboard in real headless Chromium (Debian's), against a real server and lab QEMU."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import sync_playwright

from chromium import full_page_screenshot, launch, require_chromium
from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess as Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_tracing()
    require_chromium()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d, scenario="seed")
    server = Server().wait_ready()
    yield info, server
    server.stop()
    lab.down(d)


def test_attach_watch_drill_down_and_export(setup, output_dir, tmp_path):
    vm, server = setup
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.base + "/")
        page.wait_for_selector(f"#processes tr[data-pid='{vm.pid}'] button.attach")
        assert page.locator("#waiting").is_visible()  # deliberate empty state before attaching
        page.screenshot(path=str(output_dir / "browser-0-processes.png"))

        page.click(f"#processes tr[data-pid='{vm.pid}'] button.attach")
        page.wait_for_function("document.getElementById('health').dataset.state === 'attached'", timeout=120_000)
        lab.send_command(vm, "loop --op write --qd 4 --duration 3 --rate 300")
        try:
            # charts fill with live data
            page.wait_for_selector("#slowest tbody tr", timeout=60_000)
            page.wait_for_function("document.getElementById('latency').data && document.getElementById('latency').data.length > 0"
                                   " && document.getElementById('latency').data[0].x.length >= 2", timeout=60_000)
            health = page.inner_text("#health")
            assert "events/s" in health and "lost events" in health
            # the tracer's own cost estimate, from the events it saw (tracers/costs.txt)
            m = re.search(r"tracer ≈ ([0-9.]+) us/request on QEMU \(([0-9.]+) events/request\)", health)
            assert m and float(m.group(1)) > 0 and float(m.group(2)) > 5, health
            # ... and what qspan itself used, as /proc counted it (the server and bpftrace)
            m = re.search(r"qspan's own CPU ([0-9.]+) us/request \(server and bpftrace, ([0-9.]+) cores\)", health)
            assert m and float(m.group(1)) > 0 and 0 < float(m.group(2)) < 2, health
            # and what its probes cost each request's critical path, inside the phases drawn
            page.wait_for_function("document.getElementById('selfcost').textContent.length > 0", timeout=60_000)
            own = page.inner_text("#selfcost")
            m = re.search(r"write ([0-9.]+) us of ([0-9.]+)", own)
            assert m and 0 < float(m.group(1)) < float(m.group(2)), own
            full_page_screenshot(page, output_dir / "browser-1-live.png")

            # the slowest request opens its waterfall, with handoffs drawn
            page.click("#slowest tbody tr:first-child")
            page.wait_for_function("!document.getElementById('error').hidden || (document.getElementById('waterfall').data"
                                   " && document.getElementById('waterfall').data[0].y.length > 3)", timeout=60_000)
            assert page.locator("#error").is_hidden(), page.inner_text("#error")
            labels = page.evaluate("document.getElementById('waterfall').data[0].y")
            assert any("handoff" in y for y in labels) and any("phase: replication" in y for y in labels)
            assert any("B coroutine" in y for y in labels)
            assert page.evaluate("document.getElementById('timeline').data[0].x.length") > 0
            full_page_screenshot(page, output_dir / "browser-2-waterfall.png")

            # export spans JSON from the page
            with page.expect_download() as dl:
                page.click("#export-spans")
            path = tmp_path / "spans.json"
            dl.value.save_as(path)
            doc = json.loads(path.read_text())
            assert doc["schema"] == "qspan.spans/1" and len(doc["spans"]) > 0
            assert all(sum(p["dur_ns"] for p in s["phases"]) == s["dur_ns"] for s in doc["spans"])
        except BaseException:
            for sess in server.get("/api/sessions")[1]:  # never leave a tracer attached
                server.request("DELETE", f"/api/sessions/{sess['id']}")
            raise
        finally:
            lab.send_command(vm, "stop")

        # detached looks deliberate too (and the tracer is gone before the leak check)
        page.click("#detach")
        page.wait_for_function("document.getElementById('health').dataset.state === 'detached'", timeout=60_000)
        full_page_screenshot(page, output_dir / "browser-3-detached.png")
        assert errors == [], errors
        browser.close()
    # (pageerror messages are part of the failure text above when a step times out)
