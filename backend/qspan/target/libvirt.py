"""QMP through libvirt, for a QEMU whose monitor libvirt owns.

libvirt hands QEMU its monitor socket as a file descriptor (`-chardev socket,fd=N`): there is
no path qspan could open, and QEMU serves one client per monitor anyway. libvirt passes
commands on for us: `virsh qemu-monitor-command DOMAIN '{"execute": ...}'`. virsh connects
to the URI in LIBVIRT_DEFAULT_URI, else qemu:///system. Read-only queries only: libvirt marks
a domain "tainted" by monitor commands, which is harmless for queries but worth knowing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from qspan.target.qmp import QMPError


def domain_name(argv: list[str]) -> str | None:
    """The libvirt domain's name from QEMU's `-name guest=NAME,...` (how libvirt names QEMUs)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-name":
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
    return None


def started_by_libvirt(argv: list[str]) -> bool:
    """libvirt's monitor: a control monitor on a chardev socket it passed by file descriptor."""
    return domain_name(argv) is not None and any(
        flag == "-chardev" and value.startswith("socket,id=charmonitor,fd=") for flag, value in zip(argv, argv[1:]))


class LibvirtMonitor:
    """QMPClient's execute(), through virsh; a context manager like QMPClient."""

    def __init__(self, domain: str, timeout_s: float = 10.0):
        self.domain = domain
        self.timeout_s = timeout_s
        self.path = f"libvirt domain {domain} ({os.environ.get('LIBVIRT_DEFAULT_URI', 'qemu:///system')})"

    def __enter__(self) -> "LibvirtMonitor":
        if shutil.which("virsh") is None:
            raise QMPError(f"{self.path}: virsh is not installed (Debian: libvirt-clients)")
        return self

    def __exit__(self, *exc) -> None:
        pass

    def execute(self, command: str, **arguments: Any) -> Any:
        request = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
        try:
            proc = subprocess.run(["virsh", "qemu-monitor-command", self.domain, request],
                                  capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise QMPError(f"{self.path}: {command}: no answer within {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            message = "; ".join(ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip())
            raise QMPError(f"{self.path}: {command}: {message}")
        try:
            reply = json.loads(proc.stdout)
        except ValueError:
            raise QMPError(f"{self.path}: {command}: not a QMP reply: {proc.stdout.strip()[:200]}") from None
        if "error" in reply:
            raise QMPError(f"{self.path}: {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")
