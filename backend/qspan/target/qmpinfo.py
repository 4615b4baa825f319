"""What QEMU's monitor says about it: version, thread roles, block nodes, and each guest disk's root node.

Read once when qspan looks at a QEMU (target.inspect); the answers are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qspan.target.qmp import QMPError


@dataclass
class MonitorInfo:
    version: str = ""
    nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (node-name, driver, file)
    devices: dict[str, str] = field(default_factory=dict)  # a guest disk's root node-name -> the disk's name


def disk_name(entry: dict) -> str:
    """A guest disk's name from its query-block entry: its qdev id, its drive id (-drive id=),
    or else its root node's name (a -blockdev disk on a device without an id)."""
    qdev = entry.get("qdev") or ""
    if qdev and not qdev.startswith("/"):
        return qdev  # QEMU gives the id when the device has one
    if qdev.startswith("/machine/peripheral/"):
        return qdev.split("/")[3]  # ... or its QOM path, which holds the id
    return entry.get("device") or (entry.get("inserted") or {}).get("node-name") or qdev


def read(qmp, threads) -> MonitorInfo:
    """Ask the monitor; thread roles are set on `threads` (ThreadInfo, by tid) as a side effect."""
    info = MonitorInfo()
    v = qmp.execute("query-version")["qemu"]
    info.version = f"{v['major']}.{v['minor']}.{v['micro']}"
    by_tid = {t.tid: t for t in threads}
    for it in qmp.execute("query-iothreads"):
        if it["thread-id"] in by_tid:
            by_tid[it["thread-id"]].role = "iothread"
            by_tid[it["thread-id"]].name = it["id"]
    for cpu in qmp.execute("query-cpus-fast"):
        if cpu["thread-id"] in by_tid:
            by_tid[cpu["thread-id"]].role = "vcpu"
            by_tid[cpu["thread-id"]].name = str(cpu["cpu-index"])
    for n in qmp.execute("query-named-block-nodes", flat=True):
        info.nodes.append((n["node-name"], n["drv"], n.get("file", "")))
    try:
        blocks = qmp.execute("query-block")
    except QMPError:  # disks named by their node then; what was read above stands
        blocks = []
    for b in blocks:
        root = (b.get("inserted") or {}).get("node-name")
        if root and (b.get("qdev") or b.get("device")):
            info.devices[root] = disk_name(b)
    return info


def guest_name(argv: list[str]) -> str | None:
    """The VM's name from QEMU's `-name NAME,...` or `-name guest=NAME,...` (libvirt's form)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-name":
            first = value.split(",")[0]
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            return first if "=" not in first else None
    return None
