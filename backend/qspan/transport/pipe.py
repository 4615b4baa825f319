"""bpftrace's stdout, moved into memory by a thread of its own (bpftrace.py's runner reads it from there).

A thread only moves the pipe's bytes, so bpftrace never waits on a full pipe
while qspan correlates: it would stop draining its perf buffers and the maps
it prints and clears, and events would be lost.
"""

from __future__ import annotations

import os
import queue


def pump(stream, chunks: "queue.SimpleQueue[bytes]") -> None:
    """Read a pipe until EOF into `chunks`; an empty chunk marks the end."""
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.put(chunk)
    except OSError:
        pass
    finally:
        chunks.put(b"")


def take(chunks: "queue.SimpleQueue[bytes]", wait_s: float) -> tuple[bytes, bool]:
    """What the pump has read (waiting up to wait_s for something), and whether the pipe ended."""
    parts: list[bytes] = []
    try:
        parts.append(chunks.get(timeout=wait_s))
        while parts[-1]:  # take everything already read, then split once
            parts.append(chunks.get_nowait())
    except queue.Empty:
        pass
    return b"".join(parts), bool(parts) and not parts[-1]
