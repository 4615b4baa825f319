"""What the CLI's commands share: progress lines, the parent parsers of shared options, output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qspan import program
from qspan.errors import QspanError


def run(fn, args, prog: str = "qspan") -> int:
    """Run a command: a QspanError is one line on stderr and its exit code, never a traceback."""
    try:
        return fn(args)
    except QspanError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qspan ... | head`
        return 0


def progress(msg: str) -> None:
    print(f"qspan: {msg}", file=sys.stderr, flush=True)


def name_value(text: str, flag: str) -> tuple[str, str]:
    """NAME=VALUE (an HTTP header given on the command line)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise QspanError(f"{flag} {text!r}: expected NAME=VALUE")
    return name, value


def write_json(path: str | Path, doc: dict, indent: int | None = 1) -> None:
    Path(path).write_text(json.dumps(doc, indent=indent) + "\n")


def _parent(*adders) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(p)
    return p


def _pid(p) -> None:
    p.add_argument("--pid", type=int, required=True, help="PID of the running QEMU")


def _profile(p) -> None:
    p.add_argument("--profile", help="profile from tracers/profiles (default: the one whose library QEMU has loaded, else stock)")


def _transport(p) -> None:
    p.add_argument("--transport", default=program.DEFAULT_TRANSPORT, choices=program.TRANSPORTS,
                   help="ring: events printed into perf rings that qspan reads itself every "
                        f"{program.ring.POLL_MS} ms, {program.ring.RECORD_POLL_MS} ms for a recording (default, the cheapest "
                        "for QEMU); maps: events batched in "
                        f"BPF maps, dumped every {program.FLUSH_MS} ms; printf: one print per event, read by bpftrace")


def _probe_sites(p) -> None:
    p.add_argument("--probe-sites", choices=("on", "off"), default="on",
                   help="on: where tracers/sites.txt knows a function's code, probe an instruction inside it "
                        "that the kernel emulates rather than an entry it would single-step (default); "
                        "off: function entries only")


def _qemu_accounting(p) -> None:
    p.add_argument("--qemu-accounting", action="store_true",
                   help="also give each span the interval QEMU's own block accounting measures "
                        "(block_acct_start to block_acct_done: query-blockstats, its latency histograms); "
                        "one more probe hit a request")


def _duration(p) -> None:
    p.add_argument("--duration", type=float, default=10.0, help="seconds to trace (default %(default)s)")


def _sample_every(p) -> None:
    p.add_argument("--sample-every", type=int, default=1, metavar="N",
                   help=f"trace one {program.WINDOW_MS} ms window in N (whole requests; default 1: everything)")


def _print_program(p) -> None:
    # bcc's --ebpf: see exactly what would be attached, attach nothing
    p.add_argument("--print-program", action="store_true", help="print the generated bpftrace program and exit")


def _recording(p) -> None:
    p.add_argument("recording", help="a recording (.qspan, or .qspan.gz)")
    p.add_argument("--allow-truncated", action="store_true", help="analyse a recording that has no end marker")


TARGET = _parent(_pid)
GENERATE = _parent(_pid, _profile, _transport, _probe_sites, _qemu_accounting)  # what chooses the program
TRACE = _parent(_duration, _sample_every, _print_program)  # what running it takes
PRINT = _parent(_print_program)
RECORDING = _parent(_recording)
