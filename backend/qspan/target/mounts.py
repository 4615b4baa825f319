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


def _nearest_existing(path: str) -> str:
    while path != "/" and not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def site_anchor_view(pid: int, anchor: str = ANCHOR_PATH) -> str | None:
    """The path of qspan's probe-site anchor file as seen from QEMU `pid`'s mount namespace.

    bpftrace -p opens every uprobe file through /proc/PID/root. Most QEMUs see qspan's /run
    (the same namespace, or one that only hides other folders: the lab's QEMU 10.0): the
    path as it is, the same in every run. A QEMU whose namespace has a /run of its own
    (the libvirt lab's, a container's) but shares qspan's PID namespace sees qspan's root
    through /proc/<qspan's PID>/root. None where neither works.
    """
    here = _nearest_existing(os.path.dirname(anchor))  # the anchor itself is written when tracing starts
    if _same_file(f"/proc/{pid}/root{here}", here):
        return anchor
    via_self = f"/proc/{os.getpid()}/root{anchor}"
    # our own /proc entry, looked up inside QEMU's namespace, is ours: then so is its root
    if _same_file(f"/proc/{pid}/root/proc/{os.getpid()}/ns/mnt", "/proc/self/ns/mnt"):
        return via_self
    return None
