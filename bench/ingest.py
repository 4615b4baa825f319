"""Ingest benchmark: how many events per second qspan's pipeline stages sustain on one core.

Replays a real recording (default: the test stream; pass a bigger one from
`qspan record`) through the same functions the live server uses, repeated
until each has run for --seconds, and prints events/s and spans/s for:

- decode: events as the kernel hands them over to ordered tuples: perf ring
  records (transport.ringdecode.RingDecoder, the ring transport) and map
  entries (bpfmaps' struct layout + transport.decode.MapDumpDecoder, the
  maps transport);
- record: what `qspan record` does with a poll or a dump (RingOutput or
  MapOutput to the recording's writer, a null file here): the ring
  transport's raw frames (version 2) and, for comparison, the text lines
  it wrote before;
- parse: text lines to events (recordings, the printf transport);
- correlate: events to spans (the pure correlator alone), and with each span's
  own probe cost accounted (a calibration in the header);
- read v2 + correlate: a version-2 recording of the same events read back
  (decoded) and correlated, what `qspan spans` does;
- live (ring, maps): decoded records to events, correlated with thread
  timelines, stored in the bounded span store: what the server does per
  read of the rings or per dump;
- live (text): the same from text lines (replay, printf transport).

    .venv/bin/python bench/ingest.py [RECORDING] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from qspan import compiled, pipeline, runtime
from qspan.correlate import in_time_order
from qspan.live import LiveFeed
from qspan.model.events import Event
from qspan.output import recording
from qspan.output.recording import RecordingWriter
from qspan.output.ringrecording import RawRecordingWriter
from qspan.program import FLUSH_MARK
from qspan.transport.bpfmaps import KEY, VALUE
from qspan.transport.decode import MapDumpDecoder
from qspan.transport.outputs import MapOutput, RingOutput
from qspan.transport.ringdecode import EVENT_RECORD, RECORD_SAMPLE, STRLEN, RingDecoder, printf_formats, printf_layouts
from qspan.transport.rings import RingReader
from qspan.transport.text import parse_lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", nargs="?", default=str(REPO / "tests/support/data/stock-qd4-w100.qspan.gz"))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    runtime.tune_gc()  # as the CLI and the server run (qspan/runtime.py)
    path = Path(args.recording)
    rec = recording.read(path)
    lines = list(recording.body_lines(path))
    events = in_time_order([*rec.events, *rec.lost])

    def timed(fn) -> tuple[float, int, int]:
        n_ev = n_sp = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            e, s = fn()
            n_ev += e
            n_sp += s
        return time.perf_counter() - t0, n_ev, n_sp

    def parse_only():
        return sum(1 for _ in parse_lines(lines, rec.codes, rec.string_kinds)), 0

    def correlate_only():
        return len(events), len(pipeline.correlate(events, rec.header).spans)

    # ... and with each span's own cost accounted (correlate/selfcost.py): a calibration in the
    # header as `qspan record` writes it (recordings made before it have none)
    costed = dict(rec.header, self_cost=rec.header.get("self_cost") or {
        "ns": {name: 1600 for name in rec.codes.values()},
        "kind": {name: "tracepoint" if name.startswith(("sys.", "sched.", "loop.", "notify")) else "uprobe"
                 for name in rec.codes.values()}})

    def correlate_costed():
        return len(events), len(pipeline.correlate(events, costed).spans)

    # The recording's events as the kernel would hand them over: packed (key, value) arrays,
    # one dump per 1,000 events; node names (strings) travel as text and are left out.
    ints = [e for e in events if isinstance(e, Event) and e.kind != "node.name"]
    names = [e for e in events if isinstance(e, Event) and e.kind == "node.name"]
    code_of = {v: k for k, v in rec.codes.items()}
    dumps = []
    seq = [0, 0]  # per-CPU sequence numbers, as the probes take them (two CPUs, alternating)
    for i in range(0, len(ints), 1000):
        chunk = ints[i:i + 1000]
        keys, vals = [], []
        for j, e in enumerate(chunk):
            cpu = j % 2
            seq[cpu] += 1
            keys.append(KEY.pack(e.ts_ns, cpu))
            vals.append(VALUE.pack(seq[cpu], e.tid, code_of[e.kind], *e.args))
        dumps.append((b"".join(keys), b"".join(vals), len(chunk), chunk[-1].ts_ns + 1))

    # ... and as perf ring records (the ring transport): one poll per 1,000 events, ids as in
    # the generated program (any program will do: one event printf per code is enough).
    ring_program = "\n".join(f'printf("{c} %llu %d %lld %lld %lld %lld\\n", nsecs);' for c in rec.codes)
    layouts = printf_layouts(ring_program)
    id_of = {lay.code: i for i, lay in enumerate(layouts)}
    polls = []
    for i in range(0, len(ints), 1000):
        chunk = ints[i:i + 1000]
        polls.append((b"".join(EVENT_RECORD.pack(RECORD_SAMPLE, 0, EVENT_RECORD.size, EVENT_RECORD.size - 12,
                                                 id_of[code_of[e.kind]], e.ts_ns, e.tid, *e.args) for e in chunk),
                      chunk[-1].ts_ns + 1))

    def decode_ring():
        d = RingDecoder(layouts)
        out = 0
        for data, mark in polls:
            d.add_records(0, data)
            out += len(d.release(mark, hold_ns=0)[1])
        return out, 0

    class Polls:  # stands in for qspan's perf rings (transport/rings.py): one poll a read
        def __init__(self):
            self.next = iter(polls)

        def read(self):
            return [(0, next(self.next)[0])]

    def polled(out: RingOutput) -> int:
        out.rings = Polls()
        out.reader = RingReader(out.rings, out.poll_s)  # its thread not started: one read per poll, here
        for _ in polls:
            out.reader.read_once()
            out.poll()
        return out.lines

    def record_ring():
        # a version-2 recording: the rings' bytes as read, records counted (ringrecording.py)
        with open(os.devnull, "wb") as f:
            writer = RawRecordingWriter(f, rec.header, printf_formats(ring_program), STRLEN)
            return polled(RingOutput(writer.line, None, None, writer.lines, ring_program, on_raw=writer.ring)), 0

    def record_ring_text():
        # ... and as version-1 text lines, as `qspan record` wrote ring recordings before
        with open(os.devnull, "w") as f:
            writer = RecordingWriter(f, rec.header)
            return polled(RingOutput(writer.line, None, None, writer.lines, ring_program)), 0

    def live_ring():
        # what LiveSession does per read of the rings (the default transport): decode, release
        # in order, events to the feed (node names as text lines, as RingOutput hands them on)
        feed = LiveFeed(rec.header)
        for ev in names:
            feed.line("%d %d %d %d %s %s %d" % (code_of[ev.kind], ev.ts_ns, ev.tid, *ev.args))
        d = RingDecoder(layouts)
        for data, mark in polls:
            d.add_records(0, data)
            feed.batch(*d.release(mark, hold_ns=0))
            feed.watermark(mark)
        feed.drain()
        return len(ints), feed.store.requests

    def read_raw():
        # a version-2 recording read back and correlated: `qspan spans` on what `qspan record` wrote
        r = recording.read(raw_path)
        return len(r.events), len(pipeline.correlate_recording(r).spans)

    def decode():
        d = MapDumpDecoder()
        out = 0
        for keys, vals, n, mark in dumps:
            d.add([k + v for k, v in zip(KEY.iter_unpack(keys), VALUE.iter_unpack(vals))])
            out += len(d.release(mark, hold_ns=0)[1])
        return out, 0

    def live_maps():
        # what LiveSession does per dump: node names come as text lines, events as batches
        feed = LiveFeed(rec.header)
        for ev in names:
            feed.line("%d %d %d %d %s %s %d" % (code_of[ev.kind], ev.ts_ns, ev.tid, *ev.args))
        d = MapDumpDecoder()
        for keys, vals, n, mark in dumps:
            d.add([k + v for k, v in zip(KEY.iter_unpack(keys), VALUE.iter_unpack(vals))])
            feed.batch(*d.release(mark, hold_ns=0))
            feed.watermark(mark)
        feed.drain()
        return len(ints), feed.store.requests

    def record():
        # what `qspan record` does per dump: MapOutput drains a map, the writer gets the lines
        class Dumps:  # stands in for the BPF maps MapOutput drains (transport/bpfmaps.py)
            def __init__(self):
                self.next = iter(dumps)

            def drain(self, _side):
                keys, vals, _n, _mark = next(self.next)
                return [k + v for k, v in zip(KEY.iter_unpack(keys), VALUE.iter_unpack(vals))]

        writer = RecordingWriter(open(os.devnull, "w"), rec.header)
        out = MapOutput(writer.line, None, None, writer.lines)
        out.maps = Dumps()
        for _keys, _vals, _n, mark in dumps:
            out.handle(f"{FLUSH_MARK} {mark} 0")
        return out.lines, 0

    def live_text():
        # what ReplaySession does (and the printf transport's live path): text lines, reordered
        feed = LiveFeed(rec.header)
        for line in lines:
            feed.line(line)
        feed.drain()
        return len(lines), feed.store.requests

    # the recording's events as a version-2 recording (one frame a poll), for read_raw
    tmp = tempfile.TemporaryDirectory(prefix="qspan-ingest-")  # removed when main() returns
    raw_path = Path(tmp.name) / "raw.qspan"
    with open(raw_path, "wb") as f:
        w = RawRecordingWriter(f, rec.header, printf_formats(ring_program), STRLEN)
        for ev in names:
            w.line("%d %d %d %d %s %s %d" % (code_of[ev.kind], ev.ts_ns, ev.tid, *ev.args))
        for data, _mark in polls:
            w.ring(0, data)
        w.end(rec.end)

    print(f"recording: {path.name}: {len(lines)} lines, {len(rec.events)} events; one core, {args.seconds:g} s each")
    print(f"correlator: {compiled.state}")
    for name, fn in (("decode (ring transport)", decode_ring), ("record (ring, raw: v2)", record_ring),
                     ("record (ring, as text: v1)", record_ring_text),
                     ("decode (maps transport)", decode), ("record (maps transport)", record),
                     ("parse (text)", parse_only), ("correlate", correlate_only),
                     ("correlate, self-cost", correlate_costed),
                     ("read v2 + correlate", read_raw),
                     ("live path, ring transport", live_ring),
                     ("live path, maps transport", live_maps), ("live path, text replay", live_text)):
        dt, n_ev, n_sp = timed(fn)
        print(f"{name:<30} {n_ev / dt:>12,.0f} events/s" + (f"  {n_sp / dt:>10,.0f} spans/s" if n_sp else ""))

if __name__ == "__main__":
    main()
