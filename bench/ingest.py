"""Ingest benchmark: how many tracer lines per second parse + correlate sustain on one core.

Replays a real recording (default: the test stream; pass a bigger one from
`qspan record`) through the same functions the live server uses, repeated
until it has run for --seconds, and prints events/s and spans/s for parsing
alone, correlation alone, and both.

    .venv/bin/python bench/ingest.py [RECORDING] [--seconds 5]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from qspan import recording  # noqa: E402
from qspan.correlate import Correlator, in_time_order  # noqa: E402
from qspan.parse import parse_lines  # noqa: E402


def raw_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [ln for ln in f if not ln.startswith("#")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", nargs="?", default=str(REPO / "tests/data/stock-qd4-w100.qspan.gz"))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    path = Path(args.recording)
    rec = recording.read(path)
    lines = raw_lines(path)
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
        return sum(1 for _ in parse_lines(lines, rec.codes)), 0

    def correlate_only():
        c = Correlator(rec.header)
        for ev in events:
            c.add(ev)
        return len(events), len(c.finish().spans)

    def both():
        c = Correlator(rec.header, capture_timeline=True)
        for ev in in_time_order(parse_lines(lines, rec.codes)):
            c.add(ev)
        spans, _ = c.take_spans()
        return len(lines), len(spans)

    print(f"recording: {path.name}: {len(lines)} lines, {len(rec.events)} events")
    for name, fn in (("parse", parse_only), ("correlate", correlate_only), ("parse+correlate (live path)", both)):
        dt, n_ev, n_sp = timed(fn)
        print(f"{name:<30} {n_ev / dt:>12,.0f} events/s" + (f"  {n_sp / dt:>10,.0f} spans/s" if n_sp else ""))


if __name__ == "__main__":
    main()
