"""QEMU's own latency histograms over QMP (a socket, or libvirt's virsh): set, then read.

Setting a device's boundaries (block-latency-histogram-set) clears its bins, so they count
from then on; query-blockstats reads them. Used by `qspan crosscheck` and the server's live
cross-check (live/crosscheck.py); the comparison itself is pure (output/crosscheck.py).
"""

from __future__ import annotations

from qspan.output import crosscheck
from qspan.target import Target, open_monitor
from qspan.target.qmp import QMPError
from qspan.transport.rings import bpftrace_clock_ns  # the spans' clock: the window must be on it


class QemuHistograms:
    """QEMU's latency histograms over QMP: set on every device with a guest device, then read."""

    def __init__(self, target: Target, boundaries_ns: list[int]):
        self.target = target
        self.boundaries_ns = boundaries_ns
        self.devices: list[str] = []
        self.start_ns: int | None = None
        self.read_at: tuple[int, int] | None = None  # around the last query (bpftrace's clock, as the spans)
        self.bins: dict[str, dict[str, list[int]]] = {}  # device -> op -> bins
        self.node_device: dict[str, str] = {}  # a device's root node -> the device
        self.error: str | None = None

    def _qmp(self):
        return open_monitor(self.target, timeout_s=5.0)

    def start(self) -> None:
        try:
            with self._qmp() as qmp:
                self.devices = [d["qdev"] for d in qmp.execute("query-blockstats") if d.get("qdev")]
                for dev in self.devices:
                    qmp.execute("block-latency-histogram-set", id=dev, boundaries=self.boundaries_ns)
                self.start_ns = bpftrace_clock_ns()
        except QMPError as err:
            self.error = f"cannot set QEMU's latency histograms: {err}"

    def read(self) -> None:
        try:
            with self._qmp() as qmp:
                before = bpftrace_clock_ns()
                stats = qmp.execute("query-blockstats")
                self.read_at = (before, bpftrace_clock_ns())
        except QMPError as err:
            self.error = f"cannot read QEMU's latency histograms: {err}"
            return
        for d in stats:
            dev = d.get("qdev")
            if dev not in self.devices:
                continue
            if d.get("node-name"):
                self.node_device[d["node-name"]] = dev
            for op, key in crosscheck.HISTOGRAM_KEYS.items():
                h = d["stats"].get(key)
                if h is None:
                    continue
                if h["boundaries"] != self.boundaries_ns:
                    self.error = f"{dev}: its histogram's boundaries changed while traced (someone else set them)"
                    return
                self.bins.setdefault(dev, {})[op] = h["bins"]
