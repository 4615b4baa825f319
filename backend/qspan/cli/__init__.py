"""The qspan command line. Every failure is one line on stderr and a non-zero exit.

One module per group of commands (inspect.py, trace.py, offline.py, serve.py);
options they share come from the parent parsers in common.py.
"""

from __future__ import annotations

import argparse
import sys

from qspan import __version__, runtime
from qspan.cli import common, crosscheck, inspect, offline, serve, trace

EXAMPLES = """\
examples:
  qspan ps                                     list running QEMU processes
  qspan doctor --pid 1234                      what qspan can trace of PID 1234, and what it cannot
  qspan tracer --pid 1234 --print              show the bpftrace program for PID 1234
  qspan record --pid 1234 --duration 10 --out trace.qspan
  qspan record --pid 1234 --print-program      the same program, nothing attached
  qspan spans trace.qspan --out spans.json     correlate a recording into spans
  qspan summary spans.json                     the latency breakdown in the terminal
  qspan perfetto trace.qspan --out trace.json  the same as a Perfetto / chrome://tracing file
  qspan attach --pid 1234 --duration 10 --out spans.json
  qspan aggregate --pid 1234 --duration 60     always-on latency histograms, no spans
  qspan crosscheck --pid 1234 --duration 20    QEMU's own latency histograms against qspan's
  qspan serve                                  the live dashboard on http://127.0.0.1:8321/
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qspan", description="Per-request latency tracing for QEMU block I/O.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qspan {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in (inspect, trace, crosscheck, offline, serve):
        group.add(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.tune_gc()  # the live server and `qspan spans` handle an object or more per event
    return common.run(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
