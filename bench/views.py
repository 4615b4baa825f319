"""What the dashboard's views cost the server: adding spans, building a view's charts, memory, frame size.

Lays the test recording's real spans out again over a long stretch at a chosen rate, on two
disks (every other copy on a second disk's node), and feeds them to a SpanStore as the live
path does, in batches. Prints, one run on one core:

- the store's time a span (the ring, the timelines, the per-second and per-minute rollups per
  VM, disk, node and op, each second's slowest), and the same without the rollups (the ring only);
- the time to build a view's charts (the whole VM and one disk; 10 s, 10 min and all) and the
  size of their JSON, what a client is sent once a second;
- the rollups' memory after the stretch (tracemalloc), per-second rows, per-minute rows and the
  kept slowest spans.

    .venv/bin/python bench/views.py [--minutes 30] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from qspan import runtime
from qspan.correlate import Correlator, in_time_order
from qspan.live import SpanStore
from qspan.live.views import View, charts
from qspan.output import recording

REPO = Path(__file__).resolve().parents[1]
DEVICES = {"disk0": "vda", "disk1": "vdb"}


def laid_out(minutes: float, rate: int):
    """The recording's spans, copied and shifted to `rate` a second for `minutes` (a generator)."""
    rec = recording.read(REPO / "tests/support/data/stock-qd4-w100.qspan.gz")
    c = Correlator(rec.header)
    for ev in in_time_order(rec.events):
        c.add(ev)
    base = sorted(c.take_spans()[0], key=lambda s: s.end_ns)
    first = base[0].end_ns
    per_copy_ns = int(len(base) / rate * 1e9)  # each copy holds len(base) requests: rate a second
    k = 0
    while k * per_copy_ns < minutes * 60e9:
        batch = []
        for s in base:
            shift = k * per_copy_ns + int((s.end_ns - first) * per_copy_ns / max(1, base[-1].end_ns - first)) - (s.end_ns - first)
            nodes = [replace(v, node="disk1") for v in s.nodes] if k % 2 else s.nodes
            batch.append(replace(s, id=k * 1000 + s.id, start_ns=s.start_ns + shift, end_ns=s.end_ns + shift, nodes=nodes))
        yield sorted(batch, key=lambda s: s.end_ns)
        k += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="the stretch laid out (default %(default)s)")
    ap.add_argument("--rate", type=int, default=1000, help="requests a second (default %(default)s)")
    args = ap.parse_args()
    runtime.tune_gc()
    batches = list(laid_out(args.minutes, args.rate))
    n = sum(len(b) for b in batches)
    print(f"{n:,} spans over {args.minutes:g} min at {args.rate}/s, two disks; one run, one core")

    ring_only = SpanStore(devices=DEVICES)
    ring_only.windows.add = lambda s: None  # the ring alone: what the store did before the rollups
    ring_only.windows.close = lambda upto: None
    t = time.perf_counter()
    for b in batches:
        ring_only.add(b, {})
    base_us = (time.perf_counter() - t) / n * 1e6

    store = SpanStore(devices=DEVICES)
    t = time.perf_counter()
    for b in batches:
        store.add(b, {})
    full_us = (time.perf_counter() - t) / n * 1e6
    print(f"store, a span: {full_us:.2f} us with the rollups, {base_us:.2f} us the ring alone (+{full_us - base_us:.2f} us)")
    # memory apart (tracemalloc slows every allocation): the spans exist already, so what is
    # counted is what the store adds, the rollups above all
    tracemalloc.start()
    again = SpanStore(devices=DEVICES)
    for b in batches:
        again.add(b, {})
    added = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    w = again.windows
    rows_s = sum(len(r) for r in w.seconds.values())
    rows_m = sum(len(r) for r in w.minutes.values())
    kept = sum(len(x[2]) for x in w.slow_seconds) + sum(len(x[2]) for x in w.slow_minutes)
    print(f"memory the store adds after {args.minutes:g} min: {added / 2**20:.1f} MiB: {rows_s:,} per-second rows, "
          f"{rows_m:,} per-minute rows, {kept:,} slowest spans kept (the spans themselves not counted: ~2.4 KB each)")
    print(f"{'view':<30}{'build (ms)':>12}{'JSON (KiB)':>12}{'points':>8}")
    for scope in ("all", "disk:vdb"):
        for window in (10, 600, 0):
            view = View(scope=scope, window_s=window)
            t = time.perf_counter()
            for _ in range(5):
                c = charts(w, view)
            ms = (time.perf_counter() - t) / 5 * 1e3
            label = f"{scope}, {'all' if window == 0 else f'{window} s'}"
            print(f"{label:<30}{ms:>12.1f}{len(json.dumps(c)) / 1024:>12.1f}{len(c['t_s']):>8}")


if __name__ == "__main__":
    main()
