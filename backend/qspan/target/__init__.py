"""Inspect a running QEMU: is it QEMU, which binary and version, which probes, which threads.

Everything here reads /proc, the binary's ELF file and (when found) QMP. It
never stops or signals the process.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qspan.errors import NoSuchProcess, NotQemu, TargetError
from qspan.program.sites import ANCHOR_PATH
from qspan.target.elf import debug_path, elf_facts
from qspan.target.libvirt import LibvirtMonitor, domain_name, started_by_libvirt
from qspan.target.mounts import site_anchor_view
from qspan.target import qmpinfo
from qspan.target.qmp import QMPClient, QMPError

PROC = Path("/proc")


@dataclass
class ThreadInfo:
    tid: int
    comm: str
    role: str  # main, iothread, vcpu, worker, other
    name: str = ""  # iothread id or vCPU index from QMP


@dataclass
class BlockNode:
    node_name: str
    driver: str
    file: str


@dataclass
class Target:
    pid: int
    exe: str  # path of the binary inside the process's mount namespace
    probe_path: str  # path bpftrace opens (through /proc/PID/root, so namespaces work)
    version: str
    build_id: str
    usdt_probes: int
    qmp_path: str | None
    threads: list[ThreadInfo] = field(default_factory=list)
    nodes: list[BlockNode] = field(default_factory=list)
    symbols: frozenset[str] = field(default_factory=frozenset, repr=False)
    notes: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)  # shared objects mapped in the process (paths in its namespace)
    # the probe-site anchor (transport/sites.py) as bpftrace, which opens paths in QEMU's mount
    # namespace, must name it; None where QEMU cannot see it (site_anchor_view)
    site_anchor: str | None = ANCHOR_PATH
    libvirt_domain: str | None = None  # libvirt owns the monitor: QMP through virsh (target/libvirt.py)
    name: str | None = None  # the VM's name (-name), for people and metrics' labels
    devices: dict[str, str] = field(default_factory=dict)  # a guest disk's root node-name -> the disk's name (QMP)

    def library(self, name: str) -> str | None:
        """Path (through /proc/PID/root) of a mapped shared object whose file name is `name`."""
        for lib in self.libraries:
            if os.path.basename(lib) == name:
                return f"/proc/{self.pid}/root{lib}"
        return None

    @property
    def monitor(self) -> str | None:
        """Where QMP is reached: the socket's path, or libvirt's domain; None without either."""
        return self.qmp_path or (f"libvirt:{self.libvirt_domain}" if self.libvirt_domain else None)

    @property
    def version_tuple(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def probe_source(self) -> str:
        return "usdt" if self.usdt_probes else "uprobe"

    @property
    def watched_tids(self) -> list[int]:
        """Threads whose scheduling we trace: event-loop threads, where coroutines run.

        With iothreads, devices' requests run there, and the main loop's scheduler and
        poll events (over a quarter of all events in the lab) would only cost: leave it out.
        """
        iothreads = sorted(t.tid for t in self.threads if t.role == "iothread")
        return iothreads or sorted(t.tid for t in self.threads if t.role == "main")

    def header(self) -> dict:
        """What a recording stores about its target (no symbol table)."""
        d = asdict(self)
        d.pop("symbols")
        d["probe_source"] = self.probe_source
        d["watched_tids"] = self.watched_tids
        return d


def process_cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used so far (all its threads, exited ones too); 0 once it is gone."""
    try:
        with open(PROC / str(pid) / "stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited QEMU its parent has not reaped)."""
    try:
        with open(PROC / str(pid) / "stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _check_pid(pid: int) -> Path:
    proc = PROC / str(pid)
    if pid <= 0 or not proc.is_dir():
        raise NoSuchProcess(f"no process with PID {pid}")
    return proc


def _exe_of(pid: int) -> str:
    proc = _check_pid(pid)
    try:
        return os.readlink(proc / "exe")
    except PermissionError as err:
        raise TargetError(f"PID {pid}: permission denied reading /proc/{pid}/exe (run qspan as root)") from err
    except FileNotFoundError as err:
        if not proc.is_dir():
            raise NoSuchProcess(f"no process with PID {pid} (it exited)") from err
        raise NotQemu(f"PID {pid} is a kernel thread, not QEMU") from err


def looks_like_qemu(exe: str) -> bool:
    return os.path.basename(exe.removesuffix(" (deleted)")).startswith("qemu-system-")


def list_qemu_pids() -> list[int]:
    pids = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if looks_like_qemu(exe):
            pids.append(int(entry.name))
    return sorted(pids)


def find_qmp_socket(pid: int) -> str | None:
    """The QMP socket path from QEMU's command line (-qmp unix:PATH or -chardev + -mon mode=control)."""
    try:
        argv = _read(PROC / str(pid) / "cmdline").split("\0")
    except OSError:
        return None
    chardevs: dict[str, str] = {}
    control: list[str] = []
    for flag, value in zip(argv, argv[1:]):
        opts = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in value.split(","))
        if flag in ("-qmp", "-qmp-pretty") and value.startswith("unix:"):
            return value[5:].split(",")[0]
        if flag == "-chardev" and value.startswith("socket") and "path" in opts and "id" in opts:
            chardevs[opts["id"]] = opts["path"]
        if flag == "-mon" and opts.get("mode") == "control" and "chardev" in opts:
            control.append(opts["chardev"])
    for cid in control:
        if cid in chardevs:
            path = chardevs[cid]
            # a relative path is relative to QEMU's working directory
            return path if path.startswith("/") else os.path.join(os.readlink(PROC / str(pid) / "cwd"), path)
    return None


def threads_from_proc(pid: int) -> list[ThreadInfo]:
    """QEMU's threads and their roles by name (QMP, where inspect() can ask it, names iothreads exactly)."""
    threads = []
    for task in sorted((PROC / str(pid) / "task").iterdir(), key=lambda p: int(p.name)):
        tid = int(task.name)
        try:
            comm = _read(task / "comm").strip()
        except OSError:
            continue  # the thread exited while we looked
        if tid == pid:
            role, name = "main", ""
        elif comm.startswith("IO ") and comm != "IO mon_iothread":
            role, name = "iothread", comm[3:]
        elif comm.startswith("CPU "):
            role, name = "vcpu", comm.split()[1].split("/")[0]
        elif comm == "worker":
            role, name = "worker", ""
        else:
            role, name = "other", ""
        threads.append(ThreadInfo(tid, comm, role, name))
    return threads


def _mapped_libraries(pid: int) -> list[str]:
    libs: list[str] = []
    try:
        with open(PROC / str(pid) / "maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and ".so" in parts[5] and parts[5].strip() not in libs:
                    libs.append(parts[5].strip())
    except OSError:
        pass
    return libs


def open_monitor(t: Target, timeout_s: float = 2.0) -> QMPClient | LibvirtMonitor:
    """A QMP client for `t` (use it as a context manager): its socket, else libvirt's virsh."""
    if t.qmp_path:
        return QMPClient(t.qmp_path, timeout_s=timeout_s)
    if t.libvirt_domain:
        return LibvirtMonitor(t.libvirt_domain, timeout_s=max(timeout_s, 10.0))
    raise QMPError(f"QEMU PID {t.pid} has no QMP socket on its command line and was not started by libvirt")


def _cmdline(pid: int) -> list[str]:
    try:
        return _read(PROC / str(pid) / "cmdline").split("\0")
    except OSError:
        return []


def _version_from_binary(probe_path: str) -> str:
    try:
        out = subprocess.run([probe_path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    return m.group(1) if m else ""


def inspect(pid: int, use_qmp: bool = True) -> Target:
    """Everything qspan needs to know about QEMU process `pid` before tracing it."""
    exe = _exe_of(pid)
    if not looks_like_qemu(exe):
        raise NotQemu(f"PID {pid} is not QEMU (its binary is {exe})")
    notes = []
    if exe.endswith(" (deleted)"):
        exe = exe.removesuffix(" (deleted)")
        notes.append("the binary was replaced on disk after QEMU started; probing the running image")
        probe_path = f"/proc/{pid}/exe"
    else:
        probe_path = f"/proc/{pid}/root{exe}"
    symbols, usdt, build_id = elf_facts(f"/proc/{pid}/exe")
    if "qemu_coroutine_switch" not in symbols and not usdt:
        debug = f", no separate debug info at {debug_path(build_id)}" if build_id else ""
        raise TargetError(
            f"PID {pid} ({exe}) has no qemu_coroutine_switch in its symbol tables (.dynsym, .symtab{debug}) "
            "and no qemu USDT probes: qspan cannot trace this build (qspan doctor says what would)"
        )
    threads = threads_from_proc(pid)
    qmp_path = find_qmp_socket(pid)
    argv = _cmdline(pid)
    libvirt_domain = domain_name(argv) if not qmp_path and started_by_libvirt(argv) else None
    monitor = Target(pid, exe, probe_path, "", build_id, usdt, qmp_path, libvirt_domain=libvirt_domain)
    info = qmpinfo.MonitorInfo()
    if use_qmp and monitor.monitor:
        try:
            with open_monitor(monitor) as qmp:
                info = qmpinfo.read(qmp, threads)
        except QMPError as err:
            notes.append(f"QMP unavailable ({err}); thread roles from thread names, node names from QEMU's memory")
    version = info.version or _version_from_binary(probe_path)
    anchor = site_anchor_view(pid)
    if anchor is None:
        notes.append("QEMU runs in other mount and PID namespaces: probe sites inside functions are off "
                     "(their anchor file is out of its sight), function entries are probed instead")
    return Target(pid, exe, probe_path, version, build_id, usdt, qmp_path, threads,
                  [BlockNode(*n) for n in info.nodes], symbols, notes, _mapped_libraries(pid), anchor, libvirt_domain,
                  qmpinfo.guest_name(argv), info.devices)
