"""Every QEMU on the host: `qspan serve --follow-all` and `qspan aggregate --all` with two lab VMs,
the second started after qspan. Each VM's guest counts its own writes; qspan's per-VM numbers
(host view, /metrics, aggregate totals) must equal them, and neither VM's requests may land
in the other's."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from playwright.sync_api import sync_playwright

from chromium import full_page_screenshot, launch, require_chromium
from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess, start_traced

pytestmark = pytest.mark.e2e
WRITES = {"vm-a": 500, "vm-b": 300}


def until(what: str, check, timeout_s: float = 120.0, every_s: float = 0.5):
    """check()'s first true value; the follower scans every 2 s and an attach takes ~5-15 s here."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def vm_row(server: ServerProcess, name: str, window_s: float = 600) -> dict | None:
    host = server.get(f"/api/host?window_s={window_s}")[1]
    return next((vm for vm in host["vms"] if vm["name"] == name and vm["state"] == "attached"), None)


def test_follow_all_traces_every_qemu_ones_started_later_too(tmp_path, output_dir):
    require_tracing()
    require_chromium()
    vms = {"vm-a": lab.up(tmp_path / "a", name="vm-a")}
    server = ServerProcess("--follow-all").wait_ready()
    try:
        row_a = until("vm-a followed", lambda: vm_row(server, "vm-a"))
        vms["vm-b"] = lab.up(tmp_path / "b", name="vm-b")  # started after the server
        row_b = until("vm-b followed", lambda: vm_row(server, "vm-b"))
        assert row_a["pid"] == vms["vm-a"].pid and row_b["pid"] == vms["vm-b"].pid
        for name, info in vms.items():
            res = lab.load(info, f"--op write --qd 2 --count {WRITES[name]}")
            assert res.rc == 0 and res.summary["requests"] == WRITES[name], res.output[-300:]

        # the host view and /metrics count each VM's writes, and only its own
        for name, n in WRITES.items():
            until(f"{name}'s writes in the host view",
                  lambda: (vm_row(server, name) or {}).get("disks", {}).get("disk0", {}).get("write", {}).get("requests") == n,
                  timeout_s=30)
        status, text = server.request_text("GET", "/metrics")
        assert status == 200
        for name, n in WRITES.items():
            line = next(x for x in text.splitlines() if x.startswith("qspan_requests_total{")
                        and f'vm="{name}"' in x and 'op="write"' in x)
            assert float(line.rsplit(" ", 1)[1]) == n, line

        # the host table in the page, and one click into a VM's live view
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.base + "/")
            page.wait_for_selector(f"#host tr[data-pid='{vms['vm-b'].pid}'] button.view")
            for info in vms.values():  # (any other QEMU on the host has a row too)
                assert page.locator(f"#host tbody tr[data-pid='{info.pid}']").count() == 1
            assert "following every QEMU" in page.inner_text("#host-panel")
            full_page_screenshot(page, output_dir / "browser-host.png")
            page.click(f"#host tr[data-pid='{vms['vm-b'].pid}'] button.view")
            page.wait_for_function(f"document.getElementById('session-id').textContent === '{row_b['session']}'")
            browser.close()

        # a user's detach is kept: no new session on vm-a, in any state, three scans later
        assert server.request("DELETE", f"/api/sessions/{row_a['session']}")[0] == 200
        time.sleep(6.5)
        on_a = [x["id"] for x in server.get("/api/sessions")[1] if x["pid"] == vms["vm-a"].pid]
        assert on_a == [row_a["session"]], on_a
        # a QEMU started again is a new process, and is followed again
        lab.down(tmp_path / "b")
        vms["vm-b"] = lab.up(tmp_path / "b", name="vm-b")
        again = until("vm-b followed after its restart", lambda: vm_row(server, "vm-b"))
        assert again["pid"] == vms["vm-b"].pid and again["session"] != row_b["session"]
    finally:
        server.stop()
        for d in ("a", "b"):
            lab.down(tmp_path / d)


def test_aggregate_all_follows_every_qemu_ones_started_later_too(tmp_path):
    require_tracing()
    out = tmp_path / "agg.json"
    proc = None
    try:
        a = lab.up(tmp_path / "a", name="vm-a")
        proc = start_traced("aggregate", "--all", "--duration", "300", "--interval", "1", "--out", str(out))
        err_lines: list[str] = []
        threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
        b = lab.up(tmp_path / "b", name="vm-b")
        until("vm-b followed by aggregate --all", lambda: any(f"vm-b (PID {b.pid}): attached;" in x for x in err_lines))
        for name, info in (("vm-a", a), ("vm-b", b)):
            res = lab.load(info, f"--op write --qd 2 --count {WRITES[name]}")
            assert res.rc == 0, res.output[-300:]
        time.sleep(3)  # the last interval's histograms
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        stdout, err = proc.stdout.read(), "".join(err_lines)
        assert proc.returncode == 0, err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        for d in ("a", "b"):
            lab.down(tmp_path / d)
    doc = json.loads(out.read_text())
    totals = {vm["vm"]: vm["total"]["write"]["requests"] for vm in doc["vms"] if vm["vm"] in WRITES}
    assert set(totals) == set(WRITES), (totals, err[-2000:])  # (any other QEMU on the host is followed too)
    for name, n in WRITES.items():
        # Never more than the guest's own count (no VM's requests in another's), but aggregate mode
        # prints and then clears its BPF histograms each interval, and a request that completes in
        # between is not counted: 6 of 16,000 in an earlier run (README, issue 5), 3 of 300 once
        # here in CI. Allowed: 2 % or 3 requests, whichever is more.
        assert n - max(3, n // 50) <= totals[name] <= n, (name, totals, err[-2000:])
    assert "vm-b (" in stdout
