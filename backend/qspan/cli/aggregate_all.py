"""qspan aggregate --all: always-on histograms for every QEMU on the host, ones started later too.

One aggregate-mode bpftrace per QEMU (its probes fire only in that process), each in a thread
of this command; the host's QEMUs are listed again every --interval, and a new one is followed
from then on. Lines are printed per VM and interval, as `qspan aggregate` prints them.
"""

from __future__ import annotations

import signal
import threading
import time

from qspan import pipeline, target
from qspan.cli.common import progress, write_json
from qspan.errors import QspanError
from qspan.transport.bpftrace import check_can_trace


class _Followed:
    def __init__(self, pid: int, interval_s: int, printer_cls):
        self.pid = pid
        self.target, text = pipeline.aggregate_plan(pid, interval_s)
        self.label = self.target.name or f"pid{pid}"
        self.printer = printer_cls(prefix=f"{self.label} ({pid}) ")
        self.session = pipeline.aggregate_session(pid, text)
        self.result = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"qspan-aggregate-{pid}", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.session.run(self.printer.line, None,
                                           on_attached=lambda: progress(f"{self.label} (PID {self.pid}): attached; following it"))
        except QspanError as err:  # this VM's tracer; the others go on
            self.error = str(err)
            progress(f"{self.label} (PID {self.pid}): {err}")


def cmd_aggregate_all(args, printer_cls) -> int:
    check_can_trace()
    followed: dict[int, _Followed] = {}
    refused: dict[int, str] = {}
    stop = threading.Event()
    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration
    progress(f"aggregate mode on every QEMU on this host for {args.duration:g} s (Ctrl-C stops)")
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            for pid in target.list_qemu_pids():
                if pid in followed or pid in refused:
                    continue
                try:
                    f = followed[pid] = _Followed(pid, args.interval, printer_cls)
                    f.thread.start()
                except QspanError as err:
                    refused[pid] = str(err)
                    progress(f"PID {pid}: not followed: {err}")
                except OSError:  # it went away while qspan looked at it
                    followed.pop(pid, None)
            stop.wait(min(args.interval, max(0.0, deadline - time.monotonic())))
    finally:
        signal.signal(signal.SIGINT, old)
        for f in followed.values():
            f.session.stop()
        for f in followed.values():
            f.thread.join(timeout=60)
    vms = []
    for f in followed.values():
        doc = f.printer.finish(f.target, f.result) if f.result is not None else {"pid": f.pid, "error": f.error}
        vms.append({"vm": f.label, **doc})
    if args.out:
        write_json(args.out, {"mode": "aggregate-all", "vms": vms,
                              "not_followed": [{"pid": p, "error": e} for p, e in sorted(refused.items())]})
    if not followed:
        raise QspanError("no traceable QEMU ran on this host while it watched" +
                         (f" ({len(refused)} refused: see above)" if refused else ""))
    return 0
