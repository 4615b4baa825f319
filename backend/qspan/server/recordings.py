"""Session recordings on disk: what the server keeps, and how much room it leaves.

Each live session records its raw stream to the record directory. Three limits keep that
from filling the disk a traced QEMU may live on: each recording's own cap (--record-max-mb),
all of qspan's recordings there together (--record-total-mb: the oldest finished ones are
removed first to make room for a new session), and the filesystem's free space
(--record-keep-free-mb: a recording stops growing below it, checked as it grows). A
recording that stops for any of these says why in its status and end marker; tracing and
the live view go on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("qspan.server")
MiB = 1 << 20
# what LiveSession names its recordings: <date>-<time>-pid<PID>-<session>-<server pid>.qspan
RECORDING_NAME = re.compile(r"\d{8}-\d{6}-pid\d+-s\d+-\d+\.qspan")


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def room_check(directory: Path, keep_free_bytes: int):
    """A recording writer's check (Capped.room_check): a reason to stop once the filesystem of
    `directory` has less than `keep_free_bytes` free, else None."""
    def check() -> str | None:
        try:
            free = free_bytes(directory)
        except OSError as err:
            return f"cannot read the free space of {directory}: {err.strerror}"
        if free < keep_free_bytes:
            return (f"{free // MiB} MiB free in {directory}, under the {keep_free_bytes // MiB} MiB qspan leaves "
                    "free (--record-keep-free-mb)")
        return None
    return check


@dataclass
class Room:
    max_bytes: int | None  # the new session's cap (None: no limit)
    removed: list[str]  # recordings removed to make room, oldest first
    note: str | None  # why the cap is below --record-max-mb, if it is


def _ours(directory: Path) -> str | None:
    """Why qspan must not remove files in `directory`, if it must not: it removes only in a
    directory of its own user's that nobody else may write to (not a symlink)."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return f"{directory} is a symlink, not this user's, or writable by others: qspan removes nothing there"
    return None


def _busy(path: Path) -> bool:
    """Another writer holds it (open_writer locks every recording while it writes): a running
    session, of this server or of another one sharing the directory."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return True  # not ours to judge
    return False


def make_room(directory: Path, total_cap_bytes: int | None, session_max_bytes: int | None,
              running: dict[Path, int | None]) -> Room:
    """Before a new session records: remove qspan's oldest finished recordings in `directory` until
    all of them, the running sessions' at their caps (`running`: path -> cap, None if none) and
    the new one at its cap fit in `total_cap_bytes`; the new session's cap, lowered to what is
    left if that is not enough (a session without a cap of its own gets what is left). Files qspan
    did not name and recordings still being written (locked) are never removed."""
    if not total_cap_bytes:
        return Room(session_max_bytes, [], None)
    refused = _ours(directory)
    files = []
    for p in directory.iterdir():
        if RECORDING_NAME.fullmatch(p.name) and p.is_file():
            try:
                st = p.stat()
            except OSError:
                continue  # removed meanwhile
            files.append((st.st_mtime, p, max(st.st_size, running.get(p) or 0) if p in running else st.st_size))
    files.sort()
    total = sum(size for _, _, size in files)
    want = session_max_bytes or 0
    removed = []
    for _, p, size in files:
        if total + want <= total_cap_bytes or refused:
            break
        if p in running or _busy(p):
            continue
        try:
            p.unlink()
        except OSError as err:
            log.warning("could not remove the old recording %s: %s", p, err.strerror)
            continue
        removed.append(p.name)
        total -= size
    left = max(0, total_cap_bytes - total)
    if session_max_bytes is not None and left >= session_max_bytes:
        return Room(session_max_bytes, removed, None)
    if session_max_bytes is None and not refused and left > 0:
        return Room(left, removed, None)  # no cap of its own: what the total leaves
    why = f"; {refused}" if refused else ""
    return Room(left, removed, f"{left // MiB} MiB left of --record-total-mb ({total_cap_bytes // MiB} MiB for all "
                               f"recordings in {directory}; {total // MiB} MiB are running sessions' caps or could "
                               f"not be removed{why})")
