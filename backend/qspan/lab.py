"""The reproducible QEMU lab: a tiny guest on a virtio-blk disk served by an iothread.

`up` starts QEMU (TCG) daemonized with a QMP socket and a pidfile, its
console in a file and a command port on a second serial line; `load` asks
the guest's qspan-load to run a workload and returns what the guest measured;
`down` stops QEMU through QMP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import QspanError
from .paths import BUILD, LAB
from .qmp import QMPClient, QMPError

DEFAULT_DIR = Path(os.environ.get("QSPAN_LAB_DIR", "/tmp/qspan-lab"))
SCENARIOS = ("stock",)
# QEMU builds the lab can run: Debian's installed 7.2, or 10.0 from bookworm-backports
# unpacked by lab/qemu10/fetch.sh (run in a private mount namespace, see there).
QEMU_BUILDS = ("7.2", "10.0")
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


@dataclass
class LoadResult:
    summary: dict  # fields of the guest's "QSPAN-LOAD done" line
    requests: list[tuple[str, int, int]]  # (op, offset, latency_ns) per request, with --log
    rc: int
    output: str


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
    raise LabError(f"unknown QEMU build {build!r} (one of {', '.join(QEMU_BUILDS)})")


def _qemu_argv(qemu: list[str], d: Path, guest: Path, scenario: str) -> list[str]:
    if scenario not in SCENARIOS:
        raise LabError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    return [
        *qemu, "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot", "-nodefaults",
        "-name", "qspan-lab,debug-threads=on",
        "-kernel", str(guest / "vmlinuz"), "-initrd", str(guest / "initramfs.gz"),
        "-append", "console=ttyS0 quiet panic=-1",
        "-object", "iothread,id=iothread0",
        "-blockdev", f"driver=file,filename={d / 'disk.img'},node-name=disk0,aio=threads",
        "-device", "virtio-blk-pci,drive=disk0,iothread=iothread0,request-merging=off",
        "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(d / "qemu.pid"),
        "-serial", f"file:{d / 'console.log'}",
        "-serial", f"unix:{d / 'cmd.sock'},server=on,wait=off",
        "-daemonize",
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def status(lab_dir: Path = DEFAULT_DIR) -> LabInfo | None:
    state = lab_dir / "lab.json"
    if not state.exists():
        return None
    info = LabInfo(**json.loads(state.read_text()))
    return info if _alive(info.pid) else None


def up(lab_dir: Path = DEFAULT_DIR, scenario: str = "stock", qemu: str = "7.2",
       disk_mb: int = 64, boot_timeout_s: float = 180.0, progress=lambda msg: None) -> LabInfo:
    running = status(lab_dir)
    if running:
        raise LabError(f"a lab is already running in {lab_dir} (PID {running.pid}); run 'qspan lab down' first")
    guest = build_guest()
    lab_dir.mkdir(parents=True, exist_ok=True)
    for name in ("console.log", "qemu.pid", "qmp.sock", "cmd.sock", "lab.json"):
        (lab_dir / name).unlink(missing_ok=True)
    disk = lab_dir / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(disk_mb << 20)
    wrapper, qemu_prefix = qemu_command(qemu)
    argv = _qemu_argv(qemu_prefix, lab_dir, guest, scenario)
    progress(f"starting QEMU {qemu} ({scenario} scenario) in {lab_dir}")
    proc = subprocess.run(wrapper + argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"QEMU failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    pid = int((lab_dir / "qemu.pid").read_text().strip())
    info = LabInfo(pid, str(lab_dir / "qmp.sock"), str(lab_dir / "console.log"), str(lab_dir / "cmd.sock"),
                   str(lab_dir), scenario, qemu, argv)
    (lab_dir / "lab.json").write_text(json.dumps(asdict(info), indent=1))
    progress("booting the guest")
    deadline = time.monotonic() + boot_timeout_s
    console = Path(info.console)
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if "QSPAN-GUEST ready" in text:
            return info
        if "QSPAN-GUEST error" in text or not _alive(pid):
            down(lab_dir)
            raise LabError(f"lab guest failed to boot; console: {text.strip().splitlines()[-3:]}")
        time.sleep(0.2)
    down(lab_dir)
    raise LabError(f"lab guest did not boot within {boot_timeout_s:.0f} s (see {console})")


def down(lab_dir: Path = DEFAULT_DIR, timeout_s: float = 15.0) -> bool:
    """Stop the lab's QEMU. Returns False when no lab was running."""
    state = lab_dir / "lab.json"
    if not state.exists():
        return False
    info = LabInfo(**json.loads(state.read_text()))
    if _alive(info.pid):
        try:
            with QMPClient(info.qmp) as qmp:
                qmp.execute("quit")
        except QMPError:
            os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
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
        if not _alive(info.pid):
            raise LabError("the lab QEMU exited while the guest was running a command")
        time.sleep(0.1)
    raise LabError(f"the guest did not finish the command within {timeout_s:.0f} s")


def load(info: LabInfo, args: str, timeout_s: float = 600.0) -> LoadResult:
    """Run qspan-load in the guest with `args` and return what it measured."""
    cmd_id, start = send_command(info, f"load {args}")
    rc, output = wait_command(info, cmd_id, start, timeout_s)
    m = _DONE_RE.search(output)
    if not m:
        raise LabError(f"qspan-load printed no result (rc={rc}): {output.strip()[-300:]}")
    reqs = [(op, int(off), int(lat)) for op, off, lat in _REQ_RE.findall(output)]
    return LoadResult(_parse_summary(m.group(1)), reqs, rc, output)
