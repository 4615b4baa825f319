"""Attach probes inside QEMU's functions, where bpftrace 0.17 will not (it takes function entries only).

bpftrace attaches each site's program to a symbol of the anchor, a small ELF
file that no process maps (so those probes never fire). Once it has, qspan
finds each of those programs among bpftrace's perf events (BPF_TASK_FD_QUERY:
the file and offset an event probes) and attaches the same program, through
the kernel's uprobe PMU, at the site inside QEMU's binary, for QEMU's process
only. The program, its maps and its output stay bpftrace's: nothing else about
the session changes. Closing the returned perf event fds detaches the sites,
and the kernel does that itself if qspan dies.

The sites' code was matched byte for byte before this runs (program/sites.py);
the offset goes to the kernel as is.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from pathlib import Path

from qspan.errors import TracerError
from qspan.program.sites import ANCHOR_SYMBOL, ANCHOR_SYMBOLS, Site
from qspan.transport.bpfmaps import GetFdById, bpf_call

_SYS_PERF_EVENT_OPEN = 298  # x86_64
_BPF_PROG_GET_FD_BY_ID, _BPF_TASK_FD_QUERY = 13, 20
_BPF_FD_TYPE_UPROBE = 4
_PERF_EVENT_IOC_ENABLE, _PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
_PERF_FLAG_FD_CLOEXEC = 8
_UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")

# What BPF_TASK_FD_QUERY says of an fd that is no perf event with a program (ENOTSUPP is 524).
_NOT_A_BPF_PROBE = {errno.ENOENT, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP, 524}

_TEXT_AT, _SLOT = 0x80, 16  # the anchor's functions: one 16-byte slot each from file offset 0x80
_libc = ctypes.CDLL(None, use_errno=True)


def anchor_offset(index: int) -> int:
    """The file offset of the anchor's symbol ANCHOR_SYMBOL.format(index)."""
    return _TEXT_AT + _SLOT * index


def anchor_elf() -> bytes:
    """The anchor file: an x86-64 ELF shared object whose only content is ANCHOR_SYMBOLS functions.

    One loadable segment maps the file at address 0, so each symbol's address is its
    file offset, whichever way a tool converts one to the other.
    """
    names = [ANCHOR_SYMBOL.format(i) for i in range(ANCHOR_SYMBOLS)]
    text = b"\xc3" * (_SLOT * ANCHOR_SYMBOLS)  # ret: never run
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    name_at = [1 + sum(len(n) + 1 for n in names[:i]) for i in range(len(names))]
    symtab = b"\0" * 24 + b"".join(
        struct.pack("<IBBHQQ", name_at[i], 0x12, 0, 1, anchor_offset(i), _SLOT) for i in range(len(names))
    )  # STB_GLOBAL | STT_FUNC, in section 1 (.text)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    sym_at = _TEXT_AT + len(text)
    str_at = sym_at + len(symtab)
    shstr_at = str_at + len(strtab)
    sh_at = (shstr_at + len(shstrtab) + 7) & ~7
    size = sh_at + 64 * 5
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, sh_at, 0, 64, 56, 1, 64, 5, 4)  # ET_DYN, x86-64
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)  # PT_LOAD, R+X, the whole file
    sections = b"\0" * 64 + b"".join(struct.pack("<IIQQQQIIQQ", *s) for s in (
        (1, 1, 6, _TEXT_AT, _TEXT_AT, len(text), 0, 0, 16, 0),  # .text: PROGBITS, ALLOC|EXEC
        (7, 2, 0, 0, sym_at, len(symtab), 3, 1, 8, 24),  # .symtab, strings in section 3
        (15, 3, 0, 0, str_at, len(strtab), 0, 0, 1, 0),  # .strtab
        (23, 3, 0, 0, shstr_at, len(shstrtab), 0, 0, 1, 0),  # .shstrtab
    ))
    body = header + phdr
    body += b"\0" * (_TEXT_AT - len(body)) + text + symtab + strtab + shstrtab
    return body + b"\0" * (sh_at - len(body)) + sections


def write_anchor(path: str) -> None:
    """Put the anchor at `path` (a root-only directory) unless it is there already."""
    want = anchor_elf()
    p = Path(path)
    try:
        if p.read_bytes() == want:
            return
    except OSError:
        pass
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}")
        tmp.write_bytes(want)
        tmp.chmod(0o755)  # bpftrace attaches uprobes to executable files only
        tmp.replace(p)
    except OSError as err:
        raise TracerError(f"cannot write the probe-site anchor {path}: {err.strerror}") from err


class _TaskFdQuery(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("fd", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("buf_len", ctypes.c_uint32), ("buf", ctypes.c_uint64), ("prog_id", ctypes.c_uint32),
                ("fd_type", ctypes.c_uint32), ("probe_offset", ctypes.c_uint64), ("probe_addr", ctypes.c_uint64)]


def _uprobe_of(tracer_pid: int, fd: int) -> tuple[str, int, int] | None:
    """(file, offset, program id) of a uprobe perf event fd of the tracer, else None."""
    name = ctypes.create_string_buffer(4096)
    attr = _TaskFdQuery(tracer_pid, fd, 0, len(name), ctypes.addressof(name))
    try:
        bpf_call(_BPF_TASK_FD_QUERY, attr)
    except OSError as err:
        if err.errno in _NOT_A_BPF_PROBE:
            return None  # a perf event without a BPF program, or gone since the listing
        raise
    if attr.fd_type != _BPF_FD_TYPE_UPROBE:
        return None
    return name.value.decode(errors="replace"), attr.probe_offset, attr.prog_id


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def anchored_programs(tracer_pid: int, anchor_path: str) -> dict[int, list[int]]:
    """Anchor offset -> the ids of the programs bpftrace attached there.

    The anchor is recognised by its inode, not its name: with -p, bpftrace opens a
    path through the target's mount namespace (/proc/PID/root/...).
    """
    anchor = _file_id(anchor_path)
    out: dict[int, list[int]] = {}
    seen: dict[str, bool] = {}
    for entry in Path(f"/proc/{tracer_pid}/fd").iterdir():
        try:
            if os.readlink(entry) != "anon_inode:[perf_event]":
                continue
        except OSError:
            continue
        probe = _uprobe_of(tracer_pid, int(entry.name))
        if probe is None:
            continue
        name, offset, prog_id = probe
        if name not in seen:
            seen[name] = anchor is not None and _file_id(name) == anchor
        if seen[name]:
            out.setdefault(offset, []).append(prog_id)
    return out


def _open_uprobe(binary: str, offset: int, pid: int) -> int:
    path = ctypes.create_string_buffer(binary.encode())
    attr = bytearray(128)
    struct.pack_into("<IIQ", attr, 0, int(_UPROBE_PMU.read_text()), len(attr), 0)  # type, size, config: entry
    struct.pack_into("<Q", attr, 40, 1)  # disabled until the program is set
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(path), offset)  # config1: path, config2: offset
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = _libc.syscall(_SYS_PERF_EVENT_OPEN, buf, pid, -1, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def attach(sites: tuple[Site, ...], tracer_pid: int, anchor_path: str, pid: int) -> list[int]:
    """Attach each site's programs inside QEMU PID `pid`; the perf event fds (close them to detach)."""
    if not sites:
        return []
    fds: list[int] = []
    try:
        found = anchored_programs(tracer_pid, anchor_path)
        for site in sites:
            progs = found.get(anchor_offset(site.index))
            if not progs:
                raise TracerError(f"bpftrace attached nothing at {anchor_path}:{site.anchor_symbol} "
                                  f"(the program for {site.function}); cannot attach its site")
            for prog_id in progs:
                prog = bpf_call(_BPF_PROG_GET_FD_BY_ID, GetFdById(prog_id, 0, 0))
                try:
                    fd = _open_uprobe(f"/proc/{pid}/exe", site.file_offset, pid)
                    fds.append(fd)
                    fcntl.ioctl(fd, _PERF_EVENT_IOC_SET_BPF, prog)
                    fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE, 0)
                finally:
                    os.close(prog)
    except OSError as err:
        detach(fds)
        if err.errno == errno.ESRCH:
            raise TracerError(f"QEMU PID {pid} exited while its probe sites were being attached") from err
        if isinstance(err, FileNotFoundError) and err.filename and str(tracer_pid) in str(err.filename):
            raise TracerError("bpftrace exited while qspan attached the probe sites") from err
        raise TracerError(f"cannot attach a probe site inside QEMU PID {pid}: {err.strerror}") from err
    except TracerError:
        detach(fds)
        raise
    return fds


def detach(fds: list[int]) -> None:
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass
