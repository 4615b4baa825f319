"""Drain bpftrace's event maps ourselves, with one batch syscall per dump.

bpftrace prints a map with two bpf() syscalls per entry and clears it with two
more, and formats every entry as text: at ~20 events per guest request that
was most of the tracer's CPU, on the same two cores as the guest. Instead,
qspan opens the maps bpftrace created (by id, found in /proc/PID/fdinfo; root
only, like tracing itself) and empties one with BPF_MAP_LOOKUP_AND_DELETE_BATCH
(Linux >= 5.6): a handful of syscalls for thousands of events, decoded with
struct. Holding our own file descriptors also keeps the maps alive after
bpftrace exits, so the last events are read after the probes are gone.

The map layout is program/maps.py's: key (TS_NS u64, CPU u64), value (SEQ u64, TID,
CODE, ARG0..ARG3 as s64).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from qspan.errors import TracerError

SYS_BPF = 321  # x86_64
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_MAP_UPDATE_ELEM = 2

KEY = struct.Struct("<QQ")
VALUE = struct.Struct("<Qqqqqqq")
BATCH = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class GetFdById(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class InfoByFd(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


class Elem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _Batch(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def bpf_call(cmd: int, attr: ctypes.Structure) -> int:
    """The bpf() syscall with `attr`; OSError on failure (transport/sites.py uses it too)."""
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def map_ids(pid: int) -> list[int]:
    """Ids of the BPF maps process `pid` holds open."""
    ids = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            info = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("map_id:"):
                ids.append(int(line.split()[1]))
    return ids


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return info


def process_maps(pid: int) -> Iterator[tuple[int, str, MapInfo]]:
    """An fd of our own, the name and the info of each BPF map process `pid` holds, opened one
    at a time as the caller asks (it closes those it does not keep). bpftrace 0.17 names a
    kernel map "AT_" + its name, of which the kernel keeps 15 characters: match on the end."""
    try:
        ids = map_ids(pid)
    except OSError as err:
        raise TracerError(f"cannot list bpftrace's maps (PID {pid}): {err}") from err
    for map_id in ids:
        try:
            fd = bpf_call(BPF_MAP_GET_FD_BY_ID, GetFdById(map_id, 0, 0))
        except OSError:
            continue  # gone since it was listed
        try:
            info = map_info(fd)
        except OSError:
            os.close(fd)
            continue
        yield fd, info.name.decode(errors="replace"), info


def write_elem(fd: int, key: int, value: int) -> None:
    """Set `@map[key] = value` in a bpftrace map of 8-byte keys and values; OSError on failure."""
    k, v = ctypes.c_uint64(key), ctypes.c_uint64(value)
    bpf_call(BPF_MAP_UPDATE_ELEM, Elem(fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))


def write_scalar(fd: int, value: int) -> None:
    """Set a bpftrace scalar map (`@name = N`: an 8-byte key 0, an 8-byte value); OSError on failure."""
    write_elem(fd, 0, value)


def _is_map(found: str, name: str, info: MapInfo) -> bool:
    """Whether kernel map `found` is bpftrace's `name` ("@qspan_skip") of 8-byte keys and values."""
    return bool(found) and found.endswith(name.lstrip("@")) and (info.key_size, info.value_size) == (8, 8)


def open_map(pid: int, name: str) -> int:
    """An fd of bpftrace process `pid`'s map `name` ("@qspan_watch") of 8-byte keys and values."""
    for fd, found, info in process_maps(pid):
        if _is_map(found, name, info):
            return fd
        os.close(fd)
    raise TracerError(f"bpftrace (PID {pid}) has no map {name}")


def open_scalars(pid: int, names: tuple[str, ...]) -> dict[str, int]:
    """fds of bpftrace process `pid`'s scalar maps called `names` ("@qspan_skip", ...)."""
    out: dict[str, int] = {}
    for fd, name, info in process_maps(pid):
        want = next((n for n in names if n not in out and _is_map(name, n, info)), None)
        if want is None:
            os.close(fd)
            continue
        out[want] = fd
    missing = [n for n in names if n not in out]
    if missing:
        for fd in out.values():
            os.close(fd)
        raise TracerError(f"bpftrace (PID {pid}) has no map {', '.join(missing)}: cannot control its probes")
    return out


class EventMaps:
    """The event maps of one bpftrace process, by side number."""

    def __init__(self, fds: dict[int, int], skip_fd: int | None = None):
        self._fds = fds
        self._skip_fd = skip_fd
        self._keys = ctypes.create_string_buffer(KEY.size * BATCH)
        self._values = ctypes.create_string_buffer(VALUE.size * BATCH)
        self._in = ctypes.c_uint32(0)
        self._out = ctypes.c_uint32(0)

    @classmethod
    def of_process(cls, pid: int, names: tuple[str, ...], skip_name: str | None = None) -> "EventMaps":
        """Open the maps called `names` (side 0, 1, ...) that bpftrace process `pid` created,
        and the sampling control map `skip_name` (a bpftrace scalar: 8-byte key 0, 8-byte value)."""
        wanted = {n.lstrip("@"): i for i, n in enumerate(names)}
        fds: dict[int, int] = {}
        skip_fd = None
        for fd, name, info in process_maps(pid):
            ksize, vsize = info.key_size, info.value_size
            if skip_name and name and name.endswith(skip_name.lstrip("@")) and (ksize, vsize) == (8, 8) and skip_fd is None:
                skip_fd = fd
                continue
            side = next((i for n, i in wanted.items() if name and name.endswith(n)), None)
            if side is None or side in fds or (ksize, vsize) != (KEY.size, VALUE.size):
                os.close(fd)
                continue
            fds[side] = fd
        if len(fds) != len(names) or (skip_name and skip_fd is None):
            for fd in [*fds.values(), *([skip_fd] if skip_fd is not None else [])]:
                os.close(fd)
            raise TracerError(f"found {len(fds)} of bpftrace's {len(names)} event maps"
                              f"{'' if not skip_name or skip_fd is not None else ' and not its sampling map'}"
                              f" (PID {pid}); cannot read events")
        return cls(fds, skip_fd)

    def set_skip(self, skip: int) -> None:
        """Trace one sampling window in skip + 1 (the probes read it at each window's start)."""
        if self._skip_fd is None:
            raise TracerError("this program has no sampling map")
        try:
            write_scalar(self._skip_fd, skip)
        except OSError as err:
            raise TracerError(f"setting the sampling factor in bpftrace's map failed: {err}") from err

    def drain(self, side: int) -> list[tuple]:
        """Take every entry out of one map: (ts_ns, cpu, seq, tid, code, a0, a1, a2, a3) tuples, unsorted."""
        fd = self._fds[side]
        out: list[tuple] = []
        first = True
        while True:
            attr = _Batch(0 if first else ctypes.addressof(self._in), ctypes.addressof(self._out),
                          ctypes.addressof(self._keys), ctypes.addressof(self._values), BATCH, fd, 0, 0)
            done = False
            try:
                bpf_call(BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise TracerError(
                        f"reading bpftrace's event map failed: {err} (batch map reads need Linux >= 5.6; "
                        "--transport printf works without them)") from err
                done = True
            n = attr.count
            if n:
                keys = KEY.iter_unpack(self._keys.raw[: n * KEY.size])
                vals = VALUE.iter_unpack(self._values.raw[: n * VALUE.size])
                out.extend(k + v for k, v in zip(keys, vals))
            if done:
                return out
            self._in.value = self._out.value
            first = False

    def drain_all(self) -> list[tuple]:
        out = []
        for side in sorted(self._fds):
            out += self.drain(side)
        return out

    def close(self) -> None:
        for fd in [*self._fds.values(), *([self._skip_fd] if self._skip_fd is not None else [])]:
            os.close(fd)
        self._fds, self._skip_fd = {}, None
