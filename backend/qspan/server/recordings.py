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

import logging
import os
import re
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


def make_room(directory: Path, total_cap_bytes: int | None, session_max_bytes: int | None,
              in_use: set[Path]) -> Room:
    """Before a new session records: remove qspan's oldest finished recordings in `directory` until
    all of them together and the new one at its cap fit in `total_cap_bytes`; the new session's
    cap, lowered if removing every finished one is not enough. Files qspan did not name, and
    recordings of sessions still running (`in_use`), are never removed."""
    if not total_cap_bytes:
        return Room(session_max_bytes, [], None)
    files = []
    for p in directory.iterdir():
        if RECORDING_NAME.fullmatch(p.name) and p.is_file():
            try:
                st = p.stat()
            except OSError:
                continue  # removed meanwhile
            files.append((st.st_mtime, p, st.st_size))
    files.sort()
    total = sum(size for _, _, size in files)
    want = session_max_bytes if session_max_bytes is not None else total_cap_bytes
    removed = []
    for _, p, size in files:
        if total + want <= total_cap_bytes:
            break
        if p in in_use:
            continue
        try:
            p.unlink()
        except OSError as err:
            log.warning("could not remove the old recording %s: %s", p, err.strerror)
            continue
        removed.append(p.name)
        total -= size
    left = max(0, total_cap_bytes - total)
    if left >= want:
        return Room(session_max_bytes, removed, None)
    return Room(left, removed, f"{left // MiB} MiB left of --record-total-mb ({total_cap_bytes // MiB} MiB for all "
                               f"recordings in {directory}; {total // MiB} MiB are running sessions' or could not "
                               "be removed)")
