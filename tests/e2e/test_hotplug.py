"""A QEMU that changes while traced: a disk hot-plugged on a new iothread after attach.

Real parts: the lab QEMU (one disk on iothread0), qspan attached through the CLI,
then over QMP a new iothread, a block node and a virtio-blk device on that iothread;
the guest finds /dev/vdb and writes to it. Every write to it must be a span whose
waits are explained by the new iothread's own timeline (it was followed), not
'unwatched'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import guest_requests, require_tracing
from qspan.target.qmp import QMPClient
from qspanlab import lab
from qspanlab.harness import start_traced

pytestmark = pytest.mark.e2e


def _hotplug(info: lab.LabInfo, d: Path) -> None:
    disk = d / "disk1.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    with QMPClient(info.qmp) as q:
        q.execute("object-add", **{"qom-type": "iothread", "id": "iothread1"})
        q.execute("blockdev-add", driver="file", filename=str(disk), aio="threads", **{"node-name": "disk1"})
        q.execute("device_add", driver="virtio-blk-pci", drive="disk1", iothread="iothread1", id="vdb",
                  **{"request-merging": False})


def _load_when_present(info: lab.LabInfo, args: str, timeout_s: float = 30.0) -> lab.LoadResult:
    """The guest sees the new disk once its PCI hot-plug handler has run (a second or so under TCG)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return lab.load(info, args)
        except lab.LabError as err:
            if "No such file" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(1)


def test_a_disk_hot_plugged_on_a_new_iothread_is_followed(tmp_path, output_dir):
    require_tracing()
    d = tmp_path / "lab"
    info = lab.up(d)
    try:
        out = output_dir / "hotplug-spans.json"
        proc = start_traced("attach", "--pid", str(info.pid), "--duration", "40", "--out", str(out))
        _hotplug(info, d)
        res = _load_when_present(info, "--dev /dev/vdb --op write --qd 4 --count 300 --verify --log")
        first = lab.load(info, "--op write --qd 4 --count 100")  # and the disk that was there at attach
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert lab.status(d) is not None  # QEMU and its guest unharmed
    finally:
        lab.down(d)
    assert res.rc == 0 and res.summary["verify"] == "ok" and res.summary["errors"] == 0, res.output[-500:]
    assert first.rc == 0
    doc = json.loads(out.read_text())
    end = doc["trace"]["end"]
    assert end["lost_events"] == 0
    (followed,) = end["followed_threads"]
    assert followed["name"] == "iothread1" and followed["followed"], followed
    assert "iothread iothread1" in err and "watched from then on" in err
    new_tid = followed["tid"]
    guest = guest_requests(res.output)
    on_new = [s for s in doc["spans"] if s["tid"] == new_tid]
    writes = [s for s in on_new if s["op"] == "write"]
    assert len(writes) == len(guest) == 300 and {("write", s["offset"]) for s in writes} == set(guest)
    # the verify reads, and the guest kernel's own look at the new disk (its partition table at
    # offset 0: one read here) when the disk appears
    reads = len([s for s in on_new if s["op"] == "read"])
    assert res.summary["verify_reads"] <= reads <= res.summary["verify_reads"] + 8
    assert len([s for s in doc["spans"] if s["tid"] != new_tid and s["op"] == "write"]) == 100
    waits = [h for s in on_new for h in s["handoffs"]]
    assert waits and all(sum(h["instead_ns"].values()) == h["delay_ns"] for h in waits)
    # Followed: the guest's writes' waits are explained by the new iothread's own timeline. Only
    # what came before qspan looked at QEMU's threads again (within FOLLOW_S of the hot-plug: the
    # guest kernel's first read of the new disk) may say 'unwatched', and says so.
    write_waits = [h for s in writes for h in s["handoffs"]]
    assert sum(h["instead_ns"]["unwatched"] for h in write_waits) == 0
    assert sum(h["instead_ns"]["asleep"] + h["instead_ns"]["event_loop"] for h in write_waits) > 0
    early = [s for s in on_new if any(h["instead_ns"]["unwatched"] for h in s["handoffs"])]
    assert all(s["op"] == "read" and s["offset"] == 0 for s in early), early
