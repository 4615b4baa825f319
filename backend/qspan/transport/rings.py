"""Perf rings of qspan's own in bpftrace's perf event array (transport "ring", program/ring.py).

bpftrace's printf writes a record with bpf_perf_event_output() into the ring
that its perf event array holds for the current CPU. bpftrace opens those
rings asking to be woken after every record; on the traced thread that
wake-up (and, on the other core, bpftrace formatting the record) costs
several times the record itself. Here qspan opens one BPF_OUTPUT perf event
per CPU whose ring wakes no one (a wake-up watermark as large as the ring),
maps it, and stores its fd in bpftrace's array (BPF_MAP_UPDATE_ELEM on a fd
of the map opened by id, as bpfmaps.py does). Records then land in qspan's
rings, which it reads on its own schedule.

The kernel ties an array entry to the map file it was stored through: when
qspan exits, however it exits, its entries go, and the probes' printfs fail
quietly. bpftrace itself is then stopped by the parent-death signal it was
started with (bpftrace.py), so no probe stays attached to QEMU.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import time
from collections import deque

from qspan.errors import TracerError
from qspan.transport.bpfmaps import BPF_MAP_UPDATE_ELEM, Elem, bpf_call, map_info, process_maps

SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_ATTR_WATERMARK = 1 << 14  # flags bit: wake-ups count bytes, not records
PERF_FLAG_FD_CLOEXEC = 8
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
PAGE = mmap.PAGESIZE
# 8 MiB a CPU: ~110,000 event records, about half a second of the lab's full rate
# on one CPU, so a reader stalled that long (a GC pass, a slow disk) loses nothing.
RING_PAGES = 2048
# What RingReader keeps of records read and not yet taken before it leaves them in the rings
# (where the kernel then counts what it drops): ~3.7 M records, tens of seconds at full rate.
MAX_BACKLOG_BYTES = 256 << 20
_HEAD_TAIL = struct.Struct("<QQ")  # perf_event_mmap_page.data_head, data_tail
_HEAD_AT = 1024


def bpftrace_clock_ns() -> int:
    """Now, on the clock of bpftrace's `nsecs`: bpf_ktime_get_boot_ns (CLOCK_BOOTTIME) from
    Linux 5.8 on, ktime_get_ns (CLOCK_MONOTONIC) before; they differ by the time suspended."""
    return time.clock_gettime_ns(_NSECS_CLOCK)


def _nsecs_clock() -> int:
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return time.CLOCK_BOOTTIME
    return time.CLOCK_BOOTTIME if (major, minor) >= (5, 8) else time.CLOCK_MONOTONIC


_NSECS_CLOCK = _nsecs_clock()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _PerfAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_watermark", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
                ("rest", ctypes.c_uint64 * 8)]


class Ring:
    """One CPU's ring: open, mapped, read from the tail to the head."""

    def __init__(self, cpu: int, pages: int = RING_PAGES):
        attr = _PerfAttr(type=PERF_TYPE_SOFTWARE, size=112, config=PERF_COUNT_SW_BPF_OUTPUT, sample_period=1,
                         sample_type=PERF_SAMPLE_RAW, flags=PERF_ATTR_WATERMARK, wakeup_watermark=1 << 31)
        fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise TracerError(f"cannot open a perf ring for CPU {cpu}: {os.strerror(err)}")
        self.cpu, self.fd, self.size = cpu, fd, pages * PAGE
        try:
            self._map = mmap.mmap(fd, PAGE + self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as err:
            os.close(fd)
            raise TracerError(f"cannot map a {self.size >> 20} MiB perf ring for CPU {cpu}: {err}") from err

    def read(self) -> bytes:
        """Everything written since the last read (records whole: the kernel publishes the head after them)."""
        head, tail = _HEAD_TAIL.unpack_from(self._map, _HEAD_AT)
        data = ring_bytes(self._map, PAGE, self.size, head, tail)
        if data:
            # Tell the kernel the space is free (data_tail): only after the copy.
            struct.pack_into("<Q", self._map, _HEAD_AT + 8, head)
        return data

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


def ring_bytes(buf, start: int, size: int, head: int, tail: int) -> bytes:
    """The bytes from `tail` to `head` of a ring of `size` bytes at buf[start:] (pure; head, tail grow for ever)."""
    if head == tail:
        return b""
    if head - tail > size:
        raise TracerError(f"perf ring overrun: head {head} is more than the ring's {size} bytes past tail {tail}")
    a, b = start + tail % size, start + head % size
    if b <= a:  # wrapped, or exactly full
        return bytes(buf[a:start + size]) + bytes(buf[start:b])
    return bytes(buf[a:b])


class Rings:
    """qspan's rings, one per CPU, in the perf event array of bpftrace process `pid`."""

    def __init__(self, bpftrace_pid: int, pages: int = RING_PAGES):
        self.rings: list[Ring] = []
        self._array_fd = _perf_array(bpftrace_pid)
        try:
            for cpu in range(map_info(self._array_fd).max_entries):  # bpftrace sizes it to the possible CPUs
                if not _online(cpu):
                    continue  # nothing runs there (a CPU brought online later would print into bpftrace's ring)
                ring = Ring(cpu, pages)
                self.rings.append(ring)
                key, value = ctypes.c_uint32(cpu), ctypes.c_uint32(ring.fd)
                try:
                    bpf_call(BPF_MAP_UPDATE_ELEM,
                             Elem(self._array_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
                except OSError as err:
                    raise TracerError(f"cannot put qspan's ring into bpftrace's perf array (CPU {cpu}): {err}") from err
        except BaseException:
            self.close()
            raise

    def read(self) -> list[tuple[int, bytes]]:
        """(cpu, records) for every ring with something new."""
        out = []
        for ring in self.rings:
            data = ring.read()
            if data:
                out.append((ring.cpu, data))
        return out

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
        if self._array_fd is not None:
            os.close(self._array_fd)
            self._array_fd = None


def _online(cpu: int) -> bool:
    try:
        return cpu == 0 or open(f"/sys/devices/system/cpu/cpu{cpu}/online").read().strip() == "1"
    except OSError:
        return False


def _perf_array(pid: int) -> int:
    for fd, _name, info in process_maps(pid):
        if info.type == BPF_MAP_TYPE_PERF_EVENT_ARRAY:
            return fd
        os.close(fd)
    raise TracerError(f"bpftrace (PID {pid}) has no perf event array: cannot read its events (--transport maps works without)")



class RingReader:
    """Empties the rings every `period_s` on a thread of its own, into memory.

    The runner's thread also correlates (the live server) and may stall for a second
    or more before sampling relieves it: read there, the rings filled and the kernel
    dropped records (4,586 in the first 10 s of a full-rate live run). Read here, a
    slow consumer makes a backlog in memory instead, up to MAX_BACKLOG_BYTES, and the
    lag the live path measures (the read time of what it handles) says how far behind
    it is. Copying a ring is quick; the GIL is handed over every few milliseconds.
    """

    def __init__(self, rings: Rings, period_s: float, max_bytes: int = MAX_BACKLOG_BYTES):
        self._rings = rings
        self.period_s = period_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._reads: deque[tuple[int, list[tuple[int, bytes]]]] = deque()  # (clock before the read, its records)
        self._bytes = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qspan-rings", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.period_s):
                self.read_once()
        except BaseException as err:  # handed to the runner's thread by take()
            self._error = err

    def read_once(self, force: bool = False) -> None:
        """One read of every ring (force: even past max_bytes, as the last one must)."""
        if self._bytes >= self.max_bytes and not force:
            return  # the consumer is far behind: leave the records to the kernel, which counts its drops
        now = bpftrace_clock_ns()  # before the read: every record stamped earlier is in it
        got = self._rings.read()
        with self._lock:
            self._reads.append((now, got))
            self._bytes += sum(len(data) for _, data in got)

    def take(self) -> tuple[int | None, list[tuple[int, bytes]]]:
        """What was read since the last take, in read order, and the clock before its last read
        (None: nothing was read since)."""
        with self._lock:
            reads, self._reads, self._bytes = self._reads, deque(), 0
        if self._error is not None:
            raise _failed(self._error)
        if not reads:
            return None, []
        return reads[-1][0], [chunk for _, got in reads for chunk in got]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def last_read(self) -> None:
        """Stop the thread and read what came after its last read, even past max_bytes: nothing
        would count those records lost."""
        self.stop()
        try:
            self.read_once(force=True)
        except OSError as err:
            raise _failed(err) from err


def _failed(err: BaseException) -> TracerError:
    return TracerError(f"reading qspan's perf rings failed: {err}")
