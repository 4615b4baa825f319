"""A VM started by libvirt, the way most production VMs run.

Real parts: Debian's libvirtd (9.0) started by the lab in a private mount namespace
(qspanlab/libvirt.py), a domain of type qemu (TCG) with the lab guest and an iothread,
Debian's QEMU 7.2 run by libvirt as libvirt-qemu in its own mount namespace under seccomp,
its monitor a socket libvirt passed by descriptor. qspan finds it by PID like any QEMU:
roles from thread names, QMP through `virsh qemu-monitor-command` where libvirt is reachable
(LIBVIRT_DEFAULT_URI names the lab's libvirtd), node names read off QEMU's memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from chromium import full_page_screenshot, launch, require_chromium
from helpers import guest_requests, require_tracing, run_qspan
from qspan.target import process_alive
from qspanlab import lab, libvirt
from qspanlab.harness import ServerProcess, start_traced

pytestmark = pytest.mark.e2e
LIBVIRT_NODES = {"libvirt-1-format", "libvirt-1-storage"}  # the names libvirt gives the disk's two nodes


HOST_BEFORE: dict[str, object] = {}  # what the host looked like before the libvirt lab


@pytest.fixture(scope="module")
def vm():
    require_tracing()
    for tool in ("virsh", libvirt.LIBVIRTD):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: install {' '.join(libvirt.PACKAGES)} (scripts/setup.sh does)")
    # not under pytest's tmp_path: it is 0700 and libvirt's QEMU user must reach the disk and sockets
    d = Path(tempfile.mkdtemp(prefix="qspan-libvirt-", dir="/tmp"))
    d.chmod(0o755)
    HOST_BEFORE.update(passwd=Path("/etc/passwd").read_text(), group=Path("/etc/group").read_text(),
                       run_libvirt=os.path.exists("/run/libvirt"), var_libvirt=os.path.exists("/var/lib/libvirt"))
    old_uri = os.environ.get("LIBVIRT_DEFAULT_URI")
    os.environ["LIBVIRT_DEFAULT_URI"] = libvirt.uri(d)  # for qspan's virsh, here and in its children
    try:
        yield libvirt.up(d)
    finally:
        libvirt.down(d)
        if old_uri is None:
            os.environ.pop("LIBVIRT_DEFAULT_URI", None)
        else:
            os.environ["LIBVIRT_DEFAULT_URI"] = old_uri
        shutil.rmtree(d, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_libvirt_runs_qemu_as_production_does_and_qspan_finds_it(vm):
    st = _status(vm.pid)
    assert st["Uid"].split()[0] == str(libvirt.QEMU_UID)  # libvirt-qemu, not root
    assert st["Seccomp"] == "2"  # -sandbox on: a seccomp filter
    assert os.stat(f"/proc/{vm.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    assert not any(a.startswith("unix:") for a in vm.argv)  # no monitor path: libvirt passed an fd
    assert "socket,id=charmonitor,fd=" in " ".join(vm.argv)

    r = run_qspan("ps")
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [str(vm.pid)]]
    assert "libvirt:qspan-lab" in line and " 7.2." in line, line

    r = run_qspan("doctor", "--pid", str(vm.pid))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: traceable, every event" in r.stdout
    assert "QMP through libvirt (virsh qemu-monitor-command qspan-lab)" in r.stdout
    assert re.search(r"iothread: iothread1 \(\d+\)", r.stdout), r.stdout

    # without libvirt's URI qspan still traces it, roles from QEMU's thread names
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    env["LIBVIRT_DEFAULT_URI"] = "qemu:///system?socket=/nonexistent/libvirt-sock"
    r = run_qspan("doctor", "--pid", str(vm.pid), env=env)
    assert r.returncode == 0 and "verdict: traceable, every event" in r.stdout, r.stdout + r.stderr
    assert "roles from thread names" in r.stdout and re.search(r"iothread: iothread1 \(\d+\)", r.stdout)


def test_attach_spans_match_the_guest_under_libvirt(vm, output_dir):
    out = output_dir / "libvirt-spans.json"
    proc = start_traced("attach", "--pid", str(vm.pid), "--duration", "20", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 500 --verify --log")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["verify"] == "ok" and res.summary["errors"] == 0, res.output[-500:]
    guest = guest_requests(res.output)
    assert len(guest) == 500
    # the guest's own timing bounds each span below: it must tick finer than a request (a guest on
    # jiffies, 4 ms steps, timed 417 of 500 writes 0 ns: the domain had no ACPI, qspanlab/libvirt.py)
    assert len(set(guest.values())) > 450, f"the guest's clock is coarse: {sorted(set(guest.values()))[:10]}"

    doc = json.loads(out.read_text())
    assert doc["trace"]["end"]["lost_events"] == 0
    iothread = next(t["tid"] for t in doc["target"]["threads"] if t["role"] == "iothread")
    assert doc["target"]["watched_tids"] == [iothread]
    assert {n["node_name"] for n in doc["target"]["nodes"]} == LIBVIRT_NODES  # QMP through libvirt
    # the probe sites' anchor is reached through qspan's own root (QEMU's /run is libvirt's)
    assert doc["trace"]["probe_sites"], "probe sites were attached"
    writes = [s for s in doc["spans"] if s["op"] == "write"]
    assert len(writes) == 500 and {("write", s["offset"]) for s in writes} == set(guest)
    for s in writes:
        assert s["complete"] and s["tid"] == iothread
        assert sum(p["dur_ns"] for p in s["phases"]) == s["dur_ns"]
        assert {n["node"] for n in s["nodes"]} == LIBVIRT_NODES  # read off QEMU's memory
        (h,) = s["handoffs"]
        assert sum(h["instead_ns"].values()) == h["delay_ns"] and h["instead_ns"]["unwatched"] == 0
        lat = guest[("write", s["offset"])]
        assert s["dur_ns"] <= lat + lat // 100 + 5_000, (s["id"], s["dur_ns"], lat)  # bound: test_e2e.py
    # QEMU and its guest unharmed once qspan has detached
    again = lab.load(vm, "--op write --qd 2 --count 50 --verify")
    assert again.rc == 0 and again.summary["verify"] == "ok"


def test_crosscheck_through_libvirt_agrees_with_qemu_s_histogram(vm, output_dir):
    """QEMU's latency histogram set and read over libvirt's monitor (virsh), not a QMP socket."""
    out = output_dir / "libvirt-crosscheck.json"
    proc = start_traced("crosscheck", "--pid", str(vm.pid), "--duration", "15", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 600")
    printed, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["errors"] == 0, res.output[-500:]
    ((dev, ops),) = json.loads(out.read_text())["devices"].items()
    assert dev.startswith("/machine/peripheral/ua-disk0"), dev  # libvirt's device alias
    w = ops["write"]
    assert w["qemu_requests"] == w["qspan_requests"] == 600, w
    # the target is 5 %; measured here: 0 of 1,000 (and 0 of 2,000 on the stock lab)
    assert w["acct_moved"] <= 600 * 5 // 100, (w["qemu_bins"], w["acct_bins"])


def test_dashboard_attaches_to_the_libvirt_vm(vm, output_dir):
    require_chromium()
    server = ServerProcess().wait_ready()  # LIBVIRT_DEFAULT_URI is in its environment (the fixture)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.base + "/")
            row = f"#processes tr[data-pid='{vm.pid}']"
            page.wait_for_selector(f"{row} button.attach")
            page.check("#qemu-accounting")  # QEMU's accounting traced too: the cross-check panel
            page.click(f"{row} button.attach")
            try:
                page.wait_for_function("document.getElementById('health').dataset.state === 'attached'", timeout=120_000)
                assert page.locator("#crosscheck-panel").is_visible()
                page.click("#crosscheck-start")  # QEMU's histograms set through libvirt
                page.wait_for_function("document.getElementById('crosscheck-summary').textContent.length > 0", timeout=30_000)
                assert page.locator("#error").is_hidden(), page.inner_text("#error")
                res = lab.load(vm, "--op write --qd 4 --count 600")
                assert res.rc == 0 and res.summary["errors"] == 0
                # the panel (read every 2 s) shows QEMU's count and qspan's for the same requests
                cells = "#crosscheck tbody tr[data-op='write'] td"
                page.wait_for_function("() => { const c = document.querySelectorAll(\"" + cells + "\");"
                                       " return c.length > 0 && c[2].textContent === '600' && c[3].textContent === '600'; }",
                                       timeout=60_000)
                moved = page.locator(cells).nth(4).inner_text()
                n = int(moved.split()[0])
                assert n <= 600 * 5 // 100 and ", ok)" in moved, moved  # the target: 5 %
                assert page.evaluate("document.getElementById('crosscheck-bins').data.length") == 3
                full_page_screenshot(page, output_dir / "libvirt-crosscheck.png")
                lab.send_command(vm, "loop --op write --qd 4 --duration 3 --rate 300")
                page.wait_for_selector("#slowest tbody tr", timeout=60_000)
                page.click("#slowest tbody tr:first-child")
                page.wait_for_function("document.getElementById('waterfall').data"
                                       " && document.getElementById('waterfall').data[0].y.length > 3", timeout=60_000)
                labels = page.evaluate("document.getElementById('waterfall').data[0].y")
                assert any("handoff" in y for y in labels), labels
                assert any(re.match(r"\d+\. node libvirt-1-", y) for y in labels), labels  # libvirt's names, read off QEMU
                full_page_screenshot(page, output_dir / "libvirt-waterfall.png")
            finally:
                lab.send_command(vm, "stop")
                for sess in server.get("/api/sessions")[1]:
                    server.request("DELETE", f"/api/sessions/{sess['id']}")
            assert errors == [], errors
            browser.close()
    finally:
        server.stop()


def test_the_libvirt_lab_leaves_the_host_as_it_found_it(vm):
    d = Path(vm.dir)
    libvirtd = int((d / "libvirt" / "libvirtd.pid").read_text())
    assert libvirt.down(d)
    # (gone or a zombie: an init that does not reap, as in some containers, leaves libvirtd's)
    assert not lab.status(d) and not process_alive(vm.pid) and not process_alive(libvirtd)
    # its users, /run and /var writes lived in libvirtd's namespace only
    assert Path("/etc/passwd").read_text() == HOST_BEFORE["passwd"]
    assert Path("/etc/group").read_text() == HOST_BEFORE["group"]
    assert os.path.exists("/run/libvirt") == HOST_BEFORE["run_libvirt"]
    assert os.path.exists("/var/lib/libvirt") == HOST_BEFORE["var_libvirt"]
