"""Following a QEMU that changes while traced: iothreads created after attach are watched.

The program filters the scheduler, poll and worker-syscall tracepoints by a map of
watched threads (program/probes.py, WATCH_MAP) that the runner fills at attach. Every
FOLLOW_S the runner asks ThreadFollower to look at QEMU's threads again; an iothread it
has not seen (named "IO <id>" by QEMU with -name debug-threads=on, as libvirt starts it)
goes into the map, and from its next poll on the correlator keeps its timeline
(correlate/threads.py, ThreadEvents._watch). What was followed, and what could not be,
is in the trace's end summary (`followed_threads`), the live status and the spans file.
"""

from __future__ import annotations

import os

from qspan.errors import TracerError
from qspan.program import WATCH_MAP
from qspan.target import threads_from_proc
from qspan.transport.bpfmaps import open_map, write_elem

FOLLOW_S = 1.0  # how often QEMU's threads are looked at again


class ThreadFollower:
    def __init__(self, pid: int, watched: tuple[int, ...]):
        self.pid = pid
        self.watched = set(watched)
        self.followed: list[dict] = []  # one entry per thread that appeared: tid, name, at_s, followed, why
        self._fd: int | None = None
        self._error: str | None = None

    def open(self, bpftrace_pid: int) -> None:
        if not self.watched:
            return  # a program that watches no thread (aggregate mode): nothing to follow
        try:
            self._fd = open_map(bpftrace_pid, WATCH_MAP)
        except TracerError as err:
            self._error = str(err)  # tracing goes on; a thread created later is then reported, not followed

    def check(self, at_s: float) -> None:
        """QEMU's iothreads now; the new ones are watched from here on (and listed in `followed`)."""
        if not self.watched:
            return
        try:
            threads = threads_from_proc(self.pid)
        except OSError:
            return  # QEMU is exiting: the runner sees it next
        for t in threads:
            if t.role != "iothread" or t.tid in self.watched:
                continue
            self.watched.add(t.tid)
            entry: dict = {"tid": t.tid, "name": t.name, "at_s": round(at_s, 3), "followed": False}
            if self._fd is None:
                entry["why"] = self._error or "no map of watched threads"
            else:
                try:
                    write_elem(self._fd, t.tid, 1)
                    entry["followed"] = True
                except OSError as err:
                    entry["why"] = f"cannot add it to {WATCH_MAP}: {err.strerror or err}"
            if not entry["followed"]:
                entry["why"] += ": its waits show as 'unwatched'"
            self.followed.append(entry)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
