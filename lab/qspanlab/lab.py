"""The reproducible QEMU lab: a tiny guest on a virtio-blk disk served by an iothread.

`up` starts QEMU (TCG) daemonized with a QMP socket and a pidfile, its
console in a file and a command port on a second serial line; `load` asks
the guest's qspan-load to run a workload and returns what the guest measured;
`down` stops QEMU through QMP.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qspan.errors import QspanError
from qspan.target.qmp import QMPClient, QMPError
from qspan.target import process_alive

# The lab runs from a checkout: its scripts sit beside this package, its outputs in build/.
LAB = Path(__file__).resolve().parents[1]
REPO = LAB.parent
BUILD = Path(os.environ.get("QSPAN_BUILD", REPO / "build"))
DEFAULT_DIR = Path(os.environ.get("QSPAN_LAB_DIR", "/tmp/qspan-lab"))
# stock: virtio-blk -> file node (aio=threads) on iothread0.
# seed, seed-mitigated: virtio-blk -> driver O (lab/driver-o) -> file node B, O's replica on tmpfs.
SCENARIOS = ("stock", "seed", "seed-mitigated")
# The stock scenario's device setups (issue 11's list of what users run; _stock_disk_args):
# virtio-blk: on iothread0, a raw file node with aio=threads (the default);
# virtio-scsi: a scsi-hd on a virtio-scsi controller on iothread0, the file node with aio=io_uring;
# qcow2-native: virtio-blk on iothread0, qcow2 over a file node with aio=native (O_DIRECT);
# main-loop: virtio-blk on no iothread (the VM has iothread0, unused): its requests run in the main loop.
SETUPS = ("virtio-blk", "virtio-scsi", "qcow2-native", "main-loop", "two-disks")
# QEMU builds the lab can run: Debian's installed 7.2, 10.0 from bookworm-backports
# unpacked by lab/qemu10/fetch.sh (run in a private mount namespace, see there), or 7.2
# built with USDT probes by lab/qemu-dtrace/build.sh.
QEMU_BUILDS = ("7.2", "10.0", "7.2-dtrace", "7.2-stripped")
SYSTEM_MODULE_DIR = "/usr/lib/x86_64-linux-gnu/qemu"


class LabError(QspanError):
    exit_code = 7


@dataclass
class LabInfo:
    pid: int
    qmp: str
    console: str
    command_socket: str
    dir: str
    scenario: str
    qemu: str
    argv: list[str] = field(default_factory=list)
    replica: str | None = None
    setup: str = "virtio-blk"  # SETUPS
    guest_dev: str = "/dev/vda"  # the disk as the guest names it (load's default --dev)
    libvirt: str | None = None  # the URI of the libvirtd that started QEMU (qspanlab.libvirt); qmp is "" then


@dataclass
class LoadResult:
    summary: dict  # fields of the guest's "QSPAN-LOAD done" line
    requests: list[tuple[str, int, int]]  # (op, offset, latency_ns) per request, with --log
    rc: int
    output: str


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def sigterm_takes_lab_down():
    """Make SIGTERM raise KeyboardInterrupt, so `finally: lab.down(...)` runs (timeout, CI, and
    uvicorn, which re-raises SIGTERM after its shutdown, all send it). Returns the old handler."""
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def build_guest(out: Path = BUILD / "guest") -> Path:
    script = LAB / "guest" / "build.sh"
    proc = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"building the lab guest failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return out


def qemu_command(build: str) -> tuple[list[str], list[str]]:
    """(wrapper, qemu argv prefix) for a lab QEMU build."""
    if build == "7.2":
        return [], ["qemu-system-x86_64"]
    if build == "10.0":
        out = BUILD / "qemu-10.0"
        proc = subprocess.run(["bash", str(LAB / "qemu10" / "fetch.sh"), str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"preparing QEMU 10.0 failed: {proc.stderr.strip()[-500:]}")
        root = out / "root"
        wrapper = ["unshare", "-m", "sh", "-c",
                   f'mount --bind "{out / "empty"}" {SYSTEM_MODULE_DIR} 2>/dev/null || true; exec "$@"', "qemu10"]
        return wrapper, [str(root / "usr/bin/qemu-system-x86_64"), "-L", str(root / "usr/share/qemu")]
    if build in ("7.2-dtrace", "7.2-stripped"):
        binary = build_qemu_dtrace() if build == "7.2-dtrace" else build_qemu_stripped()
        return [], [str(binary), "-L", "/usr/share/qemu", "-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu"]
    raise LabError(f"unknown QEMU build {build!r} (one of {', '.join(QEMU_BUILDS)})")


def build_qemu_stripped() -> Path:
    """The dtrace build as a distribution ships a binary: stripped (no .symtab, and its USDT notes
    removed too, so that function names are all qspan can probe by), its debug info split out to
    a file of its own that a user would install by build-id (-dbgsym, -debuginfo packages):
    OUT/qemu-system-x86_64 and OUT/qemu-system-x86_64.debug. objcopy, ~2 s."""
    full = build_qemu_dtrace()
    out = BUILD / "qemu-7.2-stripped"
    binary, debug = out / "qemu-system-x86_64", out / "qemu-system-x86_64.debug"
    if binary.exists() and debug.exists() and binary.stat().st_mtime >= full.stat().st_mtime:
        return binary
    out.mkdir(parents=True, exist_ok=True)
    for argv, made in ((["objcopy", "--only-keep-debug", str(full)], debug),
                       (["objcopy", "--strip-all", "--remove-section=.note.stapsdt", str(full)], binary)):
        proc = subprocess.run([*argv, f"{made}.new"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"splitting the debug info off QEMU 7.2 failed: {proc.stderr.strip()[-500:]}")
        os.replace(f"{made}.new", made)
    return binary


@dataclass
class SeedKnobs:
    """Driver O's knobs for the seed scenarios (see lab/driver-o/block-o.c)."""

    replica_delay_us: int = 100
    b_cpu_us: int = 200


def build_driver_o() -> Path:
    out = BUILD / "driver-o"
    proc = subprocess.run(["bash", str(LAB / "driver-o" / "build.sh"), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"building driver O failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return out / "libqspan-o.so"


def build_qemu_dtrace() -> Path:
    """QEMU 7.2 with USDT probes (the dtrace trace backend), built from the source package that
    driver O's build fetches (lab/qemu-dtrace/build.sh; ~3 min the first time)."""
    build_driver_o()
    tree = next((BUILD / "driver-o" / "src").glob("qemu-*/configure"), None)
    if tree is None:
        raise LabError(f"no QEMU source package under {BUILD / 'driver-o' / 'src'}")
    out = BUILD / "qemu-7.2-dtrace"
    proc = subprocess.run(["bash", str(LAB / "qemu-dtrace" / "build.sh"), str(tree.parent), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"building QEMU 7.2 with dtrace probes failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return out / "qemu-system-x86_64"


def o_timing_path(d: Path) -> Path:
    """Where driver O writes, when QEMU quits, each write's replica submission and callback times."""
    return d / "o-timing.txt"


def replica_path(d: Path) -> Path:
    """Driver O's replica for the lab in `d`: the "fast device", on tmpfs when there is one.

    Named by a digest of d's absolute path, the same in every process (hash() of a str is
    salted per process), so a later `up` finds and removes what an earlier run left."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else d
    digest = hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:16]
    return base / f"qspan-replica-{digest}.img"


def _stock_disk_args(d: Path, setup: str) -> list[str]:
    blk = "virtio-blk-pci,drive=disk0,request-merging=off"
    if setup == "virtio-blk":
        return ["-blockdev", f"driver=file,filename={d / 'disk.img'},node-name=disk0,aio=threads",
                "-device", f"{blk},iothread=iothread0"]
    if setup == "virtio-scsi":
        return ["-blockdev", f"driver=file,filename={d / 'disk.img'},node-name=disk0,aio=io_uring",
                "-device", "virtio-scsi-pci,id=scsi0,iothread=iothread0",
                "-device", "scsi-hd,drive=disk0,bus=scsi0.0,id=sd0"]
    if setup == "qcow2-native":
        return ["-blockdev", f"driver=file,filename={d / 'disk.qcow2'},node-name=file0,aio=native,cache.direct=on",
                "-blockdev", "driver=qcow2,file=file0,node-name=disk0",
                "-device", f"{blk},iothread=iothread0"]
    if setup == "two-disks":
        # two guest disks (vda, vdb) on one iothread: the dashboard's per-disk views, and one
        # disk's requests running instead of the other's
        return ["-blockdev", f"driver=file,filename={d / 'disk.img'},node-name=disk0,aio=threads",
                "-device", f"{blk},iothread=iothread0,id=vda",
                "-blockdev", f"driver=file,filename={d / 'disk1.img'},node-name=disk1,aio=threads",
                "-device", "virtio-blk-pci,drive=disk1,request-merging=off,iothread=iothread0,id=vdb"]
    if setup == "main-loop":
        return ["-blockdev", f"driver=file,filename={d / 'disk.img'},node-name=disk0,aio=threads",
                "-device", blk]
    raise LabError(f"unknown device setup {setup!r} (one of {', '.join(SETUPS)})")


def _disk_args(d: Path, scenario: str, knobs: SeedKnobs, setup: str = "virtio-blk") -> list[str]:
    if scenario == "stock":
        return _stock_disk_args(d, setup)
    # -blockdev driver=o is refused (QEMU's QAPI driver list is fixed): -drive takes any registered driver.
    mitigation = "on" if scenario == "seed-mitigated" else "off"
    return ["-drive", f"if=none,id=drive-o,driver=o,node-name=o,replica={replica_path(d)},timing={o_timing_path(d)},"
                      f"replica-delay-us={knobs.replica_delay_us},b-cpu-us={knobs.b_cpu_us},mitigation={mitigation},"
                      f"file.driver=file,file.filename={d / 'disk.img'},file.node-name=b,file.aio=threads",
            "-device", "virtio-blk-pci,drive=drive-o,iothread=iothread0,request-merging=off"]


# One vCPU runs; the machine may have two. Why: _qemu_argv. (bench/guest_stall.py --max-cpus 1 shows
# what one alone does.)
MAX_CPUS = 2


def _qemu_argv(qemu: list[str], d: Path, guest: Path, scenario: str, knobs: SeedKnobs = SeedKnobs(),
               max_cpus: int = MAX_CPUS, setup: str = "virtio-blk", name: str = "qspan-lab") -> list[str]:
    if scenario not in SCENARIOS:
        raise LabError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    return [
        # maxcpus=2 (one vCPU runs; MAX_CPUS): QEMU 7.2's TCG drops the guest's memory barriers when the
        # machine can have only one vCPU (tcg_gen_mb emits nothing without CF_PARALLEL, which
        # max_cpus > 1 sets), and virtio's notification handshake with the iothread needs them:
        # the guest's update of used_event and QEMU's of the used index pass each other in the
        # host's store buffers, no interrupt is sent, and the guest waits for ever (4 writes in
        # flight in the guest, every one completed and signalled in QEMU). Fixed upstream in
        # 8.1 (c914d46d0a "tcg: Do not elide memory barriers for !CF_PARALLEL in system mode").
        *qemu, "-accel", "tcg", "-smp", f"1,maxcpus={max_cpus}", "-m", "256", "-display", "none", "-no-reboot", "-nodefaults",
        "-name", f"{name},debug-threads=on",
        "-kernel", str(guest / "vmlinuz"), "-initrd", str(guest / "initramfs.gz"),
        "-append", "console=ttyS0 quiet panic=-1",
        # (main-loop too: a VM with an iothread whose disk is not on it, the case where qspan
        # must find the main loop's requests itself: the "submit" filter in tracers/probes.txt)
        "-object", "iothread,id=iothread0",
        *_disk_args(d, scenario, knobs, setup),
        "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(d / "qemu.pid"),
        "-serial", f"file:{d / 'console.log'}",
        "-serial", f"unix:{d / 'cmd.sock'},server=on,wait=off",
        "-daemonize",
    ]


def _clear_stale(lab_dir: Path) -> None:
    """Remove what a lab that ended without `down` (killed, crashed) left in lab_dir and on tmpfs:
    its replica, as its lab.json recorded it and as replica_path names it."""
    state = lab_dir / "lab.json"
    replicas = {replica_path(lab_dir)}
    try:
        recorded = json.loads(state.read_text()).get("replica")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and Path(recorded).name.startswith("qspan-replica-"):
        replicas.add(Path(recorded))
    for path in replicas:
        path.unlink(missing_ok=True)
    for name in ("console.log", "qemu.pid", "qmp.sock", "cmd.sock", "lab.json", "disk.qcow2"):
        (lab_dir / name).unlink(missing_ok=True)


def status(lab_dir: Path = DEFAULT_DIR) -> LabInfo | None:
    state = lab_dir / "lab.json"
    if not state.exists():
        return None
    info = LabInfo(**json.loads(state.read_text()))
    return info if process_alive(info.pid) else None


def up(lab_dir: Path = DEFAULT_DIR, scenario: str = "stock", qemu: str = "7.2",
       disk_mb: int = 64, boot_timeout_s: float = 180.0, knobs: SeedKnobs = SeedKnobs(),
       progress=lambda msg: None, max_cpus: int = MAX_CPUS, setup: str = "virtio-blk",
       name: str = "qspan-lab") -> LabInfo:
    running = status(lab_dir)
    if running:
        raise LabError(f"a lab is already running in {lab_dir} (PID {running.pid}); run 'qspan-lab down' first")
    guest = build_guest()
    lab_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale(lab_dir)
    for name_ in ("disk.img", "disk1.img") if setup == "two-disks" else ("disk.img",):
        with open(lab_dir / name_, "wb") as f:
            f.truncate(disk_mb << 20)
    if scenario not in SCENARIOS:
        raise LabError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    if setup not in SETUPS or (setup != "virtio-blk" and scenario != "stock"):
        raise LabError(f"device setup {setup!r}: one of {', '.join(SETUPS)}; the seed scenarios have their own")
    if setup == "qcow2-native":
        img = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(lab_dir / "disk.qcow2"), f"{disk_mb}M"],
                             capture_output=True, text=True)
        if img.returncode != 0:
            raise LabError(f"qemu-img create failed: {img.stderr.strip()}")
    env = dict(os.environ)
    if scenario.startswith("seed"):
        if qemu != "7.2":
            raise LabError("the seed scenarios run driver O, which is built for Debian's installed QEMU 7.2 only")
        progress("building driver O (first time: fetches the QEMU source package, ~1 min)")
        # LD_PRELOAD reaches QEMU alone: this environment is only for its process.
        env["LD_PRELOAD"] = str(build_driver_o())
    wrapper, qemu_prefix = qemu_command(qemu)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise LabError(f"VM name {name!r}: letters, digits, '_', '.' and '-' only")
    argv = _qemu_argv(qemu_prefix, lab_dir, guest, scenario, knobs, max_cpus, setup, name)
    progress(f"starting QEMU {qemu} ({scenario} scenario, {setup}) in {lab_dir}")
    proc = subprocess.run(wrapper + argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise LabError(f"QEMU failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    pid = int((lab_dir / "qemu.pid").read_text().strip())
    info = LabInfo(pid, str(lab_dir / "qmp.sock"), str(lab_dir / "console.log"), str(lab_dir / "cmd.sock"),
                   str(lab_dir), scenario, qemu, argv,
                   str(replica_path(lab_dir)) if scenario.startswith("seed") else None, setup=setup)
    (lab_dir / "lab.json").write_text(json.dumps(asdict(info), indent=1))
    progress("booting the guest")
    return wait_booted(info, lab_dir, boot_timeout_s)


def wait_booted(info: LabInfo, lab_dir: Path, boot_timeout_s: float, how: str = "") -> LabInfo:
    """Wait for the guest's "ready" on its console (it names its disk); the lab goes down on failure.
    `how`: said in the errors (" under libvirt")."""
    deadline = time.monotonic() + boot_timeout_s
    console = Path(info.console)
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        ready = re.search(r"QSPAN-GUEST ready(?: disk=\d+)?(?: dev=(\S+))?", text)
        if ready:
            if ready.group(1):
                info.guest_dev = ready.group(1)
                (lab_dir / "lab.json").write_text(json.dumps(asdict(info), indent=1))
            return info
        if "QSPAN-GUEST error" in text or not process_alive(info.pid):
            down(lab_dir)
            raise LabError(f"lab guest failed to boot{how}; console: {text.strip().splitlines()[-3:]}")
        time.sleep(0.2)
    down(lab_dir)
    raise LabError(f"lab guest did not boot{how} within {boot_timeout_s:.0f} s (see {console})")


def down(lab_dir: Path = DEFAULT_DIR, timeout_s: float = 15.0) -> bool:
    """Stop the lab's QEMU. Returns False when no lab was running."""
    state = lab_dir / "lab.json"
    if not state.exists():
        return False
    info = LabInfo(**json.loads(state.read_text()))
    if info.libvirt:
        from qspanlab import libvirt  # it builds on this module

        return libvirt.down(lab_dir, timeout_s)
    if process_alive(info.pid):
        try:
            with QMPClient(info.qmp) as qmp:
                qmp.execute("quit")
        except QMPError:
            os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    if info.replica:
        Path(info.replica).unlink(missing_ok=True)
    return True


_DONE_RE = re.compile(r"QSPAN-LOAD done (.*)")
_REQ_RE = re.compile(r"QSPAN-REQ (\w+) (\d+) (\d+)")


def _parse_summary(line: str) -> dict:
    out: dict = {}
    for kv in line.split():
        k, _, v = kv.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def send_command(info: LabInfo, command: str) -> tuple[str, int]:
    """Send one command line to the guest; returns (command id, console offset before it)."""
    console = Path(info.console)
    start = console.stat().st_size
    cmd_id = f"c{time.monotonic_ns()}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(info.command_socket)
            s.sendall(f"{cmd_id} {command}\n".encode())
            time.sleep(0.2)  # let QEMU read it before the connection closes
    except OSError as err:
        raise LabError(f"cannot reach the lab guest's command port {info.command_socket}: {err}") from err
    return cmd_id, start


def wait_command(info: LabInfo, cmd_id: str, start: int, timeout_s: float) -> tuple[int, str]:
    console = Path(info.console)
    marker = re.compile(rf"QSPAN-CMD {cmd_id} rc=(\d+)")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(console, errors="replace") as f:
            f.seek(start)
            text = f.read()
        m = marker.search(text)
        if m:
            return int(m.group(1)), text[: m.start()]
        if not process_alive(info.pid):
            raise LabError("the lab QEMU exited while the guest was running a command")
        time.sleep(0.1)
    raise LabError(f"the guest did not finish the command within {timeout_s:.0f} s")


def load(info: LabInfo, args: str, timeout_s: float = 600.0) -> LoadResult:
    """Run qspan-load in the guest with `args` (on the lab's disk unless --dev says) and return what it measured."""
    if "--dev" not in args.split() and info.guest_dev != "/dev/vda":
        args = f"--dev {info.guest_dev} {args}"
    cmd_id, start = send_command(info, f"load {args}")
    rc, output = wait_command(info, cmd_id, start, timeout_s)
    m = _DONE_RE.search(output)
    if not m:
        raise LabError(f"qspan-load printed no result (rc={rc}): {output.strip()[-300:]}")
    reqs = [(op, int(off), int(lat)) for op, off, lat in _REQ_RE.findall(output)]
    return LoadResult(_parse_summary(m.group(1)), reqs, rc, output)
