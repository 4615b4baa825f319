"""What both recording writers (text and raw) share: a byte count, and when to stop writing."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import IO


# How often (bytes written) a writer with a room check asks it again (Capped): a statvfs (~1 us)
# per MiB, 5 a second at the lab's full rate
ROOM_CHECK_EVERY = 1 << 20


class Capped:
    """What both writers share: a byte count, and when to stop writing.

    A recording stops growing, and says where and why in its end marker, past `max_bytes`
    (a long live session must not fill the disk the traced QEMU may live on), when
    `room_check` (asked every ROOM_CHECK_EVERY bytes) gives a reason (the disk's free space
    below what qspan leaves free), or when a write fails (ENOSPC: something else filled it).
    Tracing goes on either way.
    """

    f: IO  # the file written (each writer's own)

    def __init__(self, max_bytes: int | None, room_check: Callable[[], str | None] | None = None):
        self.max_bytes = max_bytes
        self.written = 0  # bytes (text recordings are ASCII but for the header)
        self.capped_at_line: str | None = None  # what was first not written, once capped
        self.stopped_why: str | None = None  # "size cap", the room check's reason, or the write error
        self._room_check = room_check
        self._next_check = 0  # asked before the first write too

    def _room(self, n: int, first: str) -> bool:
        if self.capped_at_line is not None:
            return False
        if self.max_bytes is not None and self.written + n > self.max_bytes:
            return self._stop(first, f"size cap ({self.max_bytes} bytes)")
        if self._room_check is not None and self.written + n >= self._next_check:
            self._next_check = self.written + n + ROOM_CHECK_EVERY
            why = self._room_check()
            if why:
                return self._stop(first, why)
        return True

    def _stop(self, first: str, why: str) -> bool:
        self.capped_at_line, self.stopped_why = first, why
        return False

    def _failed(self, first: str, err: OSError) -> None:
        # What the file's buffer held when its flush failed was counted but never reached the
        # disk: from here on the count is what the file holds (a 4 MiB disk said 4,197,191 bytes).
        try:
            self.written = os.fstat(self.f.fileno()).st_size
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass  # not a file of the OS's (a test's stand-in): the count stays as it was
        self._stop(first, f"write failed: {err.strerror or err}")

    @property
    def capped(self) -> bool:
        return self.capped_at_line is not None

    def _end_summary(self, summary: dict) -> dict:
        if self.capped:
            summary = dict(summary, capped={"max_bytes": self.max_bytes, "first_line_dropped": self.capped_at_line,
                                            "why": self.stopped_why})
        return summary

    def _end(self, f, data, summary: dict) -> dict:
        if self.stopped_why is not None and self.stopped_why.startswith("write failed"):
            # a frame may be half on disk: an end marker after it would read as corruption, none as a cut
            return dict(summary, recording_error="no end marker after the failed write: the file reads as cut")
        try:
            f.write(data)
            f.flush()
        except OSError as err:  # the end marker cannot go in: the file reads as truncated
            summary = dict(summary, recording_error=f"the end marker was not written: {err.strerror or err}")
        return summary
