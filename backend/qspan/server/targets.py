"""The QEMU processes on this host, each inspected once (what /api/processes lists)."""

from __future__ import annotations

import logging
import os
import threading
import time

from qspan import catalogue, program, target
from qspan.errors import QspanError

log = logging.getLogger("qspan.server")

Identity = tuple[int, str, int]  # (PID, binary, start time in clock ticks since boot)


def process_exe(pid: int) -> str:
    return os.readlink(target.PROC / str(pid) / "exe")


def process_start_time(pid: int) -> int:
    """When `pid` started, in clock ticks after boot (/proc/PID/stat field 22)."""
    with open(target.PROC / str(pid) / "stat") as f:
        # comm (field 2) may hold spaces and parentheses: count from the last ")"; field 3 comes first
        return int(f.read().rsplit(")", 1)[1].split()[22 - 3])


def process_identity(pid: int) -> Identity | None:
    """What tells this process from a later one with the same PID, or an exec'd binary; None once gone."""
    try:
        return pid, process_exe(pid), process_start_time(pid)
    except (OSError, ValueError, IndexError):
        return None


class TargetCache:
    """target.inspect per process, kept while (PID, binary, start time) stays the same.

    Inspecting parses the QEMU binary's ELF file and talks QMP: a listing
    refreshed every few seconds does it once per process, not once per refresh.
    A PID reused by a new process, or a process that exec'd another binary, is
    inspected again; entries of PIDs that are gone are dropped. Errors are
    cached like results. What is cached is what the listing shows (binary,
    version, QMP socket, probe source, the profile auto would choose); attaching
    always inspects afresh. An entry older than `max_age_s` is inspected again:
    QEMU may load a profile's library (or become inspectable) after it started.
    """

    def __init__(self, max_age_s: float = 30.0, clock=time.monotonic):
        self._entries: dict[int, tuple[Identity, dict, float]] = {}
        self._lock = threading.Lock()  # two refreshes at once inspect a new process once
        self.max_age_s = max_age_s
        self._clock = clock

    def rows(self) -> list[dict]:
        """One row per QEMU process: {"pid", "exe", "version", "qmp", "probe_source", "profile"} or {"pid", "error"}."""
        with self._lock:
            pids = target.list_qemu_pids()
            out = []
            for pid in pids:
                key = process_identity(pid)
                if key is None:
                    continue  # exited since it was listed
                hit = self._entries.get(pid)
                now = self._clock()
                if hit is None or hit[0] != key or now - hit[2] > self.max_age_s:
                    hit = self._entries[pid] = (key, _describe(pid), now)
                out.append(dict(hit[1]))
            listed = {row["pid"] for row in out}
            for pid in [p for p in self._entries if p not in listed]:
                del self._entries[pid]
            return out

    def __len__(self) -> int:
        return len(self._entries)


def _describe(pid: int) -> dict:
    try:
        t = target.inspect(pid)
        profile = program.choose_profile(catalogue.load(), t).name
        return {"pid": pid, "exe": t.exe, "version": t.version, "qmp": t.monitor,
                "probe_source": t.probe_source, "profile": profile}
    except QspanError as err:
        log.info("PID %d is listed as not traceable: %s", pid, err)
        return {"pid": pid, "error": str(err)}
    except Exception as err:
        log.exception("inspecting PID %d failed", pid)
        return {"pid": pid, "error": f"internal error: {err!r}"}
