"""Paths across mount namespaces: what a QEMU in its own namespace (libvirt's, a container's) sees."""

from __future__ import annotations

import os

from qspan.program.sites import ANCHOR_PATH


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def site_anchor_view(pid: int, anchor: str = ANCHOR_PATH) -> str | None:
    """The path of qspan's probe-site anchor file as seen from QEMU `pid`'s mount namespace.

    bpftrace -p opens every uprobe file through /proc/PID/root. A QEMU in its own mount
    namespace (libvirt's, a container's) may not see qspan's /run at all (the libvirt lab
    mounts its own there), but one that shares qspan's PID namespace sees qspan's root
    through /proc/<qspan's PID>/root. None where neither works (another PID namespace too).
    """
    if _same_file(f"/proc/{pid}/ns/mnt", "/proc/self/ns/mnt"):
        return anchor
    via_self = f"/proc/{os.getpid()}/root{anchor}"
    # our own /proc entry, looked up inside QEMU's namespace, is ours: then so is its root
    if _same_file(f"/proc/{pid}/root/proc/{os.getpid()}/ns/mnt", "/proc/self/ns/mnt"):
        return via_self
    return None
