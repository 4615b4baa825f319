"""The lab guest started by libvirt, the way most production VMs run.

libvirt owns QEMU's monitor (a socket it passes QEMU by file descriptor: no path qspan could
open), runs QEMU as its own user (libvirt-qemu) in a private mount namespace under seccomp,
and names the block nodes itself (libvirt-1-format, libvirt-1-storage). The lab's own guest
boots in it with the same command channel, so `lab.load` drives it as it drives `lab.up`'s.

Setup installs libvirt's daemon and client only (libvirt-daemon, libvirt-daemon-driver-qemu,
libvirt-clients: no service, no init script, no user). This module starts a private libvirtd
for the lab (lab/libvirt/libvirtd.sh) in a mount namespace of its own: its /run, its writes
under /var and the libvirt-qemu user exist only there, and vanish when it stops. Its client
socket is in the lab directory: `virsh -c URI` with URI from `uri(lab_dir)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from xml.sax.saxutils import escape

from qspan.target import process_alive
from qspanlab.lab import LAB, LabError, LabInfo, build_guest, status, wait_booted

DOMAIN = "qspan-lab"
# Debian's libvirt-daemon-system reserves uid/gid 64055 for libvirt-qemu; libvirtd.sh adds the
# user under that id, in its namespace only, where the host has none.
QEMU_UID = 64055
PACKAGES = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients")
LIBVIRTD = "/usr/sbin/libvirtd"


def uri(lab_dir: Path) -> str:
    """libvirt's URI for the lab's private libvirtd (its socket is in the lab directory)."""
    return f"qemu:///system?socket={lab_dir / 'libvirt' / 'sock' / 'libvirt-sock'}"


def virsh(lab_dir: Path, *args: str, timeout_s: float = 60.0) -> str:
    try:
        proc = subprocess.run(["virsh", "-c", uri(lab_dir), *args], capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError as err:
        raise LabError(f"virsh is not installed (Debian: apt-get install {' '.join(PACKAGES)})") from err
    except subprocess.TimeoutExpired as err:
        raise LabError(f"virsh {' '.join(args)} did not answer within {timeout_s:.0f} s") from err
    if proc.returncode != 0:
        raise LabError(f"virsh {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def domain_xml(lab_dir: Path) -> str:
    """The lab guest as a libvirt domain: TCG, one vCPU of two (the reason: lab._qemu_argv),
    one iothread, the disk on it (aio=threads, request merging off, as the stock lab), the
    console in a file and the command channel on a second serial port. ACPI on, as every
    production domain has it: without it (libvirt passes -no-acpi) the guest has no HPET or ACPI
    PM timer to fall back on when its TCG TSC is found unstable, its clock becomes jiffies, and
    its own latencies read 0 or 4 ms (seen: 417 of 500 writes timed 0)."""
    d = lambda name: escape(str(lab_dir / name))  # noqa: E731
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>256</memory>
  <vcpu placement='static' current='1'>2</vcpu>
  <iothreads>1</iothreads>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{d('vmlinuz')}</kernel>
    <initrd>{d('initramfs.gz')}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' io='threads' iothread='1'/>
      <source file='{d('disk.img')}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-disk0'/>
    </disk>
    <serial type='file'><source path='{d('console.log')}'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{d('cmd.sock')}'/><target port='1'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-disk0'>
      <qemu:frontend><qemu:property name='request-merging' type='bool' value='false'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


def _libvirtd_pid(lab_dir: Path) -> int | None:
    try:
        pid = int((lab_dir / "libvirt" / "libvirtd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return pid if exe == LIBVIRTD and process_alive(pid) else None


def _stop_libvirtd(lab_dir: Path, timeout_s: float = 15.0) -> None:
    pid = _libvirtd_pid(lab_dir)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _start_libvirtd(lab_dir: Path, timeout_s: float = 30.0) -> None:
    if not os.access(LIBVIRTD, os.X_OK):
        raise LabError(f"{LIBVIRTD} is not installed (Debian: apt-get install {' '.join(PACKAGES)})")
    state = lab_dir / "libvirt"
    config = state / "etc"
    (state / "sock").mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    for name in ("libvirt.conf", "libvirt-admin.conf"):
        src = Path("/etc/libvirt") / name
        (config / name).write_text(src.read_text() if src.exists() else "")
    (config / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{state / "sock"}"\n'
        'unix_sock_rw_perms = "0700"\n'
        f'log_outputs = "3:file:{state / "libvirtd.log"}"\n')
    # QEMU writes the console file itself (libvirt would hand it to virtlogd, another daemon).
    (config / "qemu.conf").write_text('stdio_handler = "file"\n')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private",
                           "bash", str(LAB / "libvirt" / "libvirtd.sh"), str(state), str(config)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"starting libvirtd failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _libvirtd_pid(lab_dir) and (state / "sock" / "libvirt-sock").exists():
            try:
                virsh(lab_dir, "version", timeout_s=10)
                return
            except LabError:
                pass
        time.sleep(0.2)
    log = state / "libvirtd.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
    _stop_libvirtd(lab_dir)
    raise LabError(f"libvirtd did not answer within {timeout_s:.0f} s; its log: {tail}")


def up(lab_dir: Path, disk_mb: int = 64, boot_timeout_s: float = 180.0,
       progress=lambda msg: None) -> LabInfo:
    """Start a private libvirtd, define the lab guest as a domain and boot it.

    `lab_dir` must be reachable by the libvirt-qemu user (not under a 0700 directory such as
    pytest's tmp_path): QEMU opens the disk, kernel and sockets there as that user."""
    if status(lab_dir):
        raise LabError(f"a lab is already running in {lab_dir}; run 'qspan-lab down' first")
    guest = build_guest()
    lab_dir.mkdir(parents=True, exist_ok=True)
    for parent in [lab_dir, *lab_dir.parents]:
        if parent.stat().st_mode & 0o005 != 0o005:
            raise LabError(f"{parent} is not readable by others: libvirt's QEMU user could not reach the lab "
                           f"in {lab_dir} (choose a --dir outside it)")
    _stop_libvirtd(lab_dir)  # one a killed lab left behind
    for name in ("console.log", "cmd.sock", "lab.json", "domain.xml"):
        (lab_dir / name).unlink(missing_ok=True)
    for name in ("vmlinuz", "initramfs.gz"):
        (lab_dir / name).write_bytes((guest / name).read_bytes())
    with open(lab_dir / "disk.img", "wb") as f:
        f.truncate(disk_mb << 20)
    # QEMU creates the command socket here as libvirt-qemu; libvirt gives the other files to it.
    os.chown(lab_dir, QEMU_UID, QEMU_UID)
    progress(f"starting a private libvirtd (state in {lab_dir / 'libvirt'})")
    _start_libvirtd(lab_dir)
    (lab_dir / "domain.xml").write_text(domain_xml(lab_dir))
    progress(f"starting domain {DOMAIN} (QEMU 7.2 through libvirt)")
    try:
        virsh(lab_dir, "create", str(lab_dir / "domain.xml"))
        pid = _domain_pid(lab_dir)
    except LabError:
        _stop_libvirtd(lab_dir)
        raise
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    info = LabInfo(pid, "", str(lab_dir / "console.log"), str(lab_dir / "cmd.sock"), str(lab_dir),
                   "stock", "7.2", argv, None, uri(lab_dir))
    (lab_dir / "lab.json").write_text(json.dumps(asdict(info), indent=1))
    progress("booting the guest")
    return wait_booted(info, lab_dir, boot_timeout_s, " under libvirt")


def _domain_pid(lab_dir: Path) -> int:
    """QEMU's PID, from the pidfile libvirt keeps in its own /run (read through libvirtd's root)."""
    libvirtd = _libvirtd_pid(lab_dir)
    path = Path(f"/proc/{libvirtd}/root/run/libvirt/qemu/{DOMAIN}.pid")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise LabError(f"libvirt started {DOMAIN} but its pidfile {path} is unreadable: {err}") from err


def down(lab_dir: Path, timeout_s: float = 15.0) -> bool:
    """Destroy the domain (QEMU is killed by libvirt) and stop the private libvirtd."""
    state = lab_dir / "lab.json"
    if not state.exists() and _libvirtd_pid(lab_dir) is None:
        return False
    pid = None
    if state.exists():
        pid = json.loads(state.read_text()).get("pid")
    if _libvirtd_pid(lab_dir) is not None:
        try:
            virsh(lab_dir, "destroy", DOMAIN, timeout_s=timeout_s)
        except LabError:
            pass  # not running any more: libvirtd still has to go
    if pid and process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    _stop_libvirtd(lab_dir, timeout_s)
    state.unlink(missing_ok=True)
    return True
