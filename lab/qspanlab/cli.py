"""qspan-lab: the reproducible QEMU lab (up, down, status, load) and the demo.

Not part of qspan: the lab boots QEMUs qspan then traces like any other.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from qspan.cli.common import run
from qspan.cli.serve import add_server_options, settings_from
from qspan.server.run import serve
from qspanlab import lab

EXAMPLES = """\
examples:
  qspan-lab up                                 stock lab: virtio-blk on iothread0, file node aio=threads
  qspan-lab load --op write --qd 4 --count 2000 --verify
  qspan-lab down
  qspan-lab --dir /tmp/qspan-libvirt up --libvirt   the same guest, started by libvirt
  qspan-lab up --scenario seed --replica-delay-us 200 --b-cpu-us 600
  qspan-lab demo                               seed lab, guest writes, dashboard on http://127.0.0.1:8321/
"""


def _progress(msg: str) -> None:
    print(f"qspan-lab: {msg}", file=sys.stderr, flush=True)


def cmd_demo(args) -> int:
    """Lab up, a steady guest workload, the server attached to it: the README's first command."""
    settings = settings_from(args)
    d = Path(args.dir)
    info = lab.status(d) or lab.up(d, scenario=args.scenario, progress=_progress)
    lab.send_command(info, f"loop --op write --qd 4 --duration 5 --rate {args.rate} --verify")
    _progress(f"lab QEMU PID {info.pid} ({args.scenario}); guest writing 4 KiB, 4 in flight, {args.rate}/s")
    print(f"open http://{settings.host}:{settings.port}/  (Ctrl-C stops the demo and the lab)", flush=True)
    old = lab.sigterm_takes_lab_down()
    try:
        serve(settings, attach_pid=info.pid)
    finally:
        signal.signal(signal.SIGTERM, old)
        _progress("stopping the lab")
        lab.down(d)
    return 0


def cmd_up(args) -> int:
    if args.libvirt:
        if args.scenario != "stock" or args.qemu != "7.2":
            raise lab.LabError("--libvirt runs the stock scenario on Debian's installed QEMU 7.2 only")
        from qspanlab import libvirt

        info = libvirt.up(Path(args.dir), progress=_progress)
        print(f"pid {info.pid}")
        print(f"libvirt {info.libvirt}  (export LIBVIRT_DEFAULT_URI='{info.libvirt}' for virsh and qspan)")
        print(f"console {info.console}")
        return 0
    knobs = lab.SeedKnobs(args.replica_delay_us, args.b_cpu_us)
    info = lab.up(Path(args.dir), scenario=args.scenario, qemu=args.qemu, knobs=knobs, progress=_progress,
                  setup=args.setup, name=args.name)
    print(f"pid {info.pid}")
    print(f"qmp {info.qmp}")
    print(f"console {info.console}")
    return 0


def cmd_down(args) -> int:
    print("lab stopped" if lab.down(Path(args.dir)) else "no lab running")
    return 0


def cmd_status(args) -> int:
    info = lab.status(Path(args.dir))
    print(json.dumps(info.__dict__, indent=1) if info else "no lab running")
    return 0 if info else 1


def cmd_load(args) -> int:
    info = lab.status(Path(args.dir))
    if info is None:
        raise lab.LabError(f"no lab running in {args.dir}: run 'qspan-lab up' first")
    res = lab.load(info, " ".join(args.load_args))
    print(res.output.strip())
    return res.rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qspan-lab", description="qspan's reproducible QEMU lab.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=str(lab.DEFAULT_DIR), help="lab state directory (default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start a lab QEMU and boot its guest")
    u.add_argument("--scenario", default="stock", choices=lab.SCENARIOS)
    u.add_argument("--qemu", default="7.2", choices=lab.QEMU_BUILDS,
                   help="7.2: Debian's installed QEMU; 10.0: bookworm-backports, unpacked under build/; "
                        "7.2-dtrace: 7.2 built with USDT probes under build/ (default 7.2)")
    u.add_argument("--name", default="qspan-lab", help="the VM's -name (several labs at once: --dir and --name "
                                                      "each; default %(default)s)")
    u.add_argument("--setup", default="virtio-blk", choices=lab.SETUPS,
                   help="the stock scenario's device setup: virtio-blk (aio=threads), virtio-scsi (aio=io_uring), "
                        "qcow2-native (qcow2 over aio=native), main-loop (no iothread), two-disks (vda and vdb on "
                        "one iothread); default %(default)s")
    u.add_argument("--libvirt", action="store_true",
                   help="start the stock lab through a private libvirtd (qspanlab/libvirt.py): QEMU as libvirt-qemu, "
                        "its monitor libvirt's; --dir must be reachable by that user (e.g. under /tmp)")
    u.add_argument("--replica-delay-us", type=int, default=lab.SeedKnobs.replica_delay_us,
                   help="seed scenarios: driver O's replica latency (default %(default)s)")
    u.add_argument("--b-cpu-us", type=int, default=lab.SeedKnobs.b_cpu_us,
                   help="seed scenarios: B's CPU time per write on the iothread (default %(default)s)")
    u.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the lab QEMU").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="show the running lab").set_defaults(fn=cmd_status)
    ld = sub.add_parser("load", help="run qspan-load in the guest, e.g. --op write --qd 4 --count 2000 --verify")
    ld.set_defaults(fn=cmd_load, load_args=[])  # everything after "load" goes to qspan-load verbatim (see main)
    d = sub.add_parser("demo", help="boot the seed lab, drive guest writes, serve the dashboard attached to it")
    add_server_options(d)
    d.add_argument("--scenario", default="seed", choices=lab.SCENARIOS)
    d.add_argument("--rate", type=int, default=300, help="guest writes per second (default %(default)s)")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    load_args: list[str] = []
    if "load" in argv:
        # qspan-load's own options (--op, --qd, ...) would confuse argparse: pass them through.
        i = argv.index("load")
        argv, load_args = argv[: i + 1], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    if load_args:
        args.load_args = load_args
    return run(args.fn, args, prog="qspan-lab")


if __name__ == "__main__":
    sys.exit(main())
