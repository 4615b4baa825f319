"""Commands that look and attach nothing: ps, inspect, doctor, tracer --print."""

from __future__ import annotations

import json
import sys

from qspan import pipeline, target
from qspan.errors import QspanError


def cmd_ps(args) -> int:
    pids = target.list_qemu_pids()
    if not pids:
        print("no QEMU processes running")
        return 0
    print(f"{'PID':>8}  {'VERSION':<8} {'PROBES':<7} {'QMP':<28} BINARY")
    for pid in pids:
        try:
            t = target.inspect(pid)
            print(f"{pid:>8}  {t.version or '?':<8} {t.probe_source:<7} {t.monitor or '-':<28} {t.exe}")
        except QspanError as err:
            print(f"{pid:>8}  {'?':<8} {'-':<7} {'-':<28} ({err})")
    return 0


def cmd_inspect(args) -> int:
    t = target.inspect(args.pid)
    print(json.dumps(t.header() | {"exported_symbols": len(t.symbols)}, indent=2))
    return 0


def cmd_doctor(args) -> int:
    from qspan import doctor

    text, code = doctor.run(args.pid)
    print(text)
    return code


def print_program(p: pipeline.Plan) -> int:
    """The generated program, and why catalogue lines were left out, on stdout."""
    sys.stdout.write(p.program.text)
    for why in p.program.skipped:
        print(f"// skipped {why}")
    return 0


def cmd_tracer(args) -> int:
    if not args.print:
        print("nothing to do: use --print", file=sys.stderr)
        return 2
    return print_program(pipeline.plan(args.pid, args.profile, args.transport, sites=args.probe_sites == "on",
                                       accounting=args.qemu_accounting))


def add(sub, parents) -> None:
    sub.add_parser("ps", help="list running QEMU processes and how they can be traced").set_defaults(fn=cmd_ps)
    s = sub.add_parser("inspect", parents=[parents.TARGET], help="show what qspan knows about one QEMU process")
    s.set_defaults(fn=cmd_inspect)
    s = sub.add_parser("doctor", parents=[parents.TARGET],
                       help="what qspan can and cannot see of one QEMU process, and what would work instead")
    s.set_defaults(fn=cmd_doctor)
    s = sub.add_parser("tracer", parents=[parents.GENERATE], help="show the generated bpftrace program")
    s.add_argument("--print", action="store_true", help="print the program (nothing is attached)")
    s.set_defaults(fn=cmd_tracer)
