"""The device setups users run besides the default virtio-blk over aio=threads (issue 11's list):
virtio-scsi on an iothread over aio=io_uring, qcow2 over aio=native, and a disk with no
iothread (its requests in QEMU's main loop). For each, on Debian's QEMU 7.2 and a real guest:
every guest write a span inside the guest's own latency, the handoff waits explained by the
thread that ran them (aio=threads; io_uring and Linux AIO complete on the iothread itself, in
one "wait" phase), and QEMU's own latency histogram agreeing with qspan's reading of QEMU's
interval (the issue's target: at most 5 % of requests in another bin)."""

from __future__ import annotations

import json

import pytest

from helpers import guest_requests, require_tracing
from qspanlab import lab
from qspanlab.harness import start_traced

pytestmark = pytest.mark.e2e
SETUPS = ("virtio-scsi", "qcow2-native", "main-loop")  # virtio-blk: test_e2e.py
DEVICE = {"virtio-scsi": "sd0", "qcow2-native": "/machine/peripheral-anon/device[0]",
          "main-loop": "/machine/peripheral-anon/device[0]"}  # QEMU's qdev path of the lab's guest device


@pytest.fixture(scope="module", params=SETUPS)
def vm(request, tmp_path_factory):
    require_tracing()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d, setup=request.param)
    yield info
    lab.down(d)


def test_spans_match_the_guest_on_each_device_setup(vm, output_dir):
    out = output_dir / f"devices-{vm.setup}-spans.json"
    proc = start_traced("attach", "--pid", str(vm.pid), "--duration", "20", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 500 --verify --log")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["verify"] == "ok" and res.summary["errors"] == 0, res.output[-500:]
    guest = guest_requests(res.output)
    assert len(guest) == 500
    doc = json.loads(out.read_text())
    assert doc["trace"]["end"]["lost_events"] == 0
    threads = {t["tid"]: t for t in doc["target"]["threads"]}
    writes = [s for s in doc["spans"] if s["op"] == "write"]
    assert len(writes) == 500 and {("write", s["offset"]) for s in writes} == set(guest)
    # Watched from attach: iothread0, the event loop qspan expects requests on. With main-loop
    # the disk is not on it: its requests run in the main loop, which their first submission
    # makes watched (tracers/probes.txt, filter "submit"), so their waits are explained too.
    (iothread,) = doc["target"]["watched_tids"]
    assert threads[iothread]["role"] == "iothread"
    runs_on = next(t for t in threads if threads[t]["role"] == "main") if vm.setup == "main-loop" else iothread
    unexplained = 0
    for s in writes:
        assert s["complete"] and s["tid"] == runs_on
        assert sum(p["dur_ns"] for p in s["phases"]) == s["dur_ns"]
        for h in s["handoffs"]:
            assert sum(h["instead_ns"].values()) == h["delay_ns"]
            unexplained += h["instead_ns"]["unwatched"] > 0
        lat = guest[("write", s["offset"])]
        assert s["dur_ns"] <= lat + lat // 100 + 5_000, (s["id"], s["dur_ns"], lat)  # bound: test_e2e.py
    # (the first requests, as many as are in flight (4), may wait before the main loop's first
    # watched event: that part of their wait is 'unwatched', and the categories still add up)
    assert unexplained <= (4 if vm.setup == "main-loop" else 0), unexplained
    phases = {tuple(p["name"] for p in s["phases"] if p["name"] != "kick") for s in writes}
    if vm.setup == "main-loop":
        # aio=threads: a worker thread does the I/O and hands the completion back to the main loop
        assert phases == {("submit", "queue", "device", "handoff", "complete")}, phases
        assert all(len(s["handoffs"]) == 1 for s in writes)
    elif vm.setup == "virtio-scsi":
        # io_uring completes on the iothread itself: no handoff, the wait for the device and for
        # the loop to get to the completion are one phase (not split yet)
        assert phases == {("submit", "wait", "complete")}, phases
    else:
        # qcow2 over Linux AIO: the same "wait" for the data, and for a cluster's first write
        # qcow2's own metadata work (runs, waits, handoffs) between submit and complete
        assert all(p[0] == "submit" and p[-1] == "complete" and "wait" in p for p in phases), phases
    if vm.setup == "qcow2-native":
        # a guest write visits the qcow2 node, then its file node
        assert all([n["node"] for n in s["nodes"]][:2] == ["disk0", "file0"] for s in writes)


def test_qemu_s_histogram_agrees_on_each_device_setup(vm, output_dir):
    out = output_dir / f"devices-{vm.setup}-crosscheck.json"
    proc = start_traced("crosscheck", "--pid", str(vm.pid), "--duration", "15", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 600")
    printed, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["errors"] == 0, res.output[-500:]
    rep = json.loads(out.read_text())
    ((dev, ops),) = rep["devices"].items()
    assert dev.startswith(DEVICE[vm.setup]), dev
    w = ops["write"]
    assert w["qemu_requests"] == w["qspan_requests"] == 600, w
    assert w["acct_moved"] <= 600 * 5 // 100, (printed, w["qemu_bins"], w["acct_bins"])  # the 5 %
