"""`qspan crosscheck`: trace with QEMU's accounting on, and bin the same requests as QEMU does.

The QMP side: turn on QEMU's latency histograms for every guest device once the probes are
attached (setting the boundaries clears the bins, so they count from then on), read them
again shortly before the trace ends, and compare what QEMU counted with the spans whose
accounting ended between the two (output/crosscheck.py).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from qspan import pipeline
from qspan.cli.common import progress, write_json
from qspan.errors import QspanError
from qspan.model.spans import span_dict
from qspan.output import crosscheck, recording
from qspan.target.histograms import QemuHistograms
from qspan.transport.bpftrace import check_can_trace


def _boundaries(text: str) -> list[int]:
    try:
        us = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise QspanError(f"--boundaries-us: integers in us, comma separated, not {text!r}") from None
    if not us or any(b <= a for a, b in zip(us, us[1:])) or us[0] <= 0:
        raise QspanError(f"--boundaries-us: increasing positive integers, not {text!r}")
    return [u * 1000 for u in us]


def cmd_crosscheck(args) -> int:
    boundaries = _boundaries(args.boundaries_us)
    if args.duration < 2:
        raise QspanError("--duration: at least 2 s (QEMU's histograms are read 1 s before the end)")
    check_can_trace()
    p = pipeline.plan(args.pid, args.profile, args.transport, sites=args.probe_sites == "on", accounting=True)
    if "req.acct" not in {pr.event for pr in p.program.probes}:
        raise QspanError(f"QEMU PID {args.pid} does not export block_acct_done: its accounting cannot be traced")
    if not p.target.monitor:
        raise QspanError(f"QEMU PID {args.pid} has no QMP socket on its command line (-qmp unix:PATH) and was "
                         "not started by libvirt: qspan cannot turn on its latency histograms")
    hist = QemuHistograms(p.target, boundaries)
    read_after_s = args.duration - 1.0

    def attached() -> None:
        hist.start()
        if hist.error is None:
            progress(f"QEMU's latency histograms set on {', '.join(hist.devices) or 'no device'}")
            timer = threading.Timer(read_after_s, hist.read)
            timer.daemon = True
            timer.start()

    with tempfile.TemporaryDirectory(prefix="qspan-crosscheck-") as tmp:
        rec_path = Path(args.record) if args.record else Path(tmp) / "crosscheck.qspan"
        result = pipeline.record(p, rec_path, args.duration, progress=progress, on_attached=attached)
        pipeline.check_ended(result, args.pid, rec_path)
        if hist.error:
            raise QspanError(hist.error)
        if hist.read_at is None or hist.start_ns is None:
            raise QspanError("QEMU's latency histograms were not read before the trace ended")
        rec = recording.read(rec_path)
        corr = pipeline.correlate_recording(rec)
    report = crosscheck.compare(hist.bins, hist.node_device, boundaries, [span_dict(s) for s in corr.spans],
                                (hist.start_ns, hist.read_at[0]), crosscheck.qemu_ends(rec.events))
    for line in crosscheck.text(report):
        print(line)
    if args.out:
        write_json(args.out, report)
    return 0


def add(sub, parents) -> None:
    s = sub.add_parser("crosscheck", parents=[parents.GENERATE],
                       help="trace with QEMU's own latency histograms on, and say how many requests "
                            "qspan bins differently")
    s.add_argument("--duration", type=float, default=10.0, help="seconds to trace (default %(default)s)")
    s.add_argument("--boundaries-us", default=",".join(map(str, crosscheck.DEFAULT_BOUNDARIES_US)),
                   help="the histograms' bin boundaries in us (default %(default)s)")
    s.add_argument("--out", help="also write the report as JSON")
    s.add_argument("--record", help="keep the recording here (default: not kept)")
    s.set_defaults(fn=cmd_crosscheck)
