"""A file opened so that its reader is told how far it got: the progress of opening a
recording of hundreds of MiB, which takes a minute (`qspan serve --open`)."""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Told the file's position and its size (of a gzipped one, in its compressed bytes)
OnBytes = Callable[[int, int], None]


class _Counting(io.RawIOBase):
    """A raw file that tells on_bytes its position and size after each read (a version 2 reader seeks)."""

    def __init__(self, raw: io.FileIO, on_bytes: OnBytes):
        self.raw, self.on_bytes = raw, on_bytes
        self.size = os.fstat(raw.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        n = self.raw.readinto(buffer)
        self.on_bytes(self.raw.tell(), self.size)
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _GzipOwning(gzip.GzipFile):
    """A GzipFile that closes the file it was given (gzip leaves a given fileobj open)."""

    def close(self) -> None:
        inner = self.fileobj
        super().close()
        if inner is not None:
            inner.close()


def open_counted(path: Path, on_bytes: OnBytes) -> IO[bytes]:
    """`path` for reading (gunzipped when it ends in .gz), telling on_bytes the file's position and size after each MiB."""
    raw = io.BufferedReader(_Counting(open(path, "rb", buffering=0), on_bytes), 1 << 20)
    return _GzipOwning(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
