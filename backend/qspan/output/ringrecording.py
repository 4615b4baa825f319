"""Version-2 recordings: the ring transport's records kept as read, decoded when read back.

After the two text lines every recording starts with (recording.py), a
version-2 recording is binary frames, each a tag byte and a little-endian
u32 length:

    R <u16 cpu> <perf records exactly as that CPU's ring held them>
    L <a line bpftrace printed on stdout, UTF-8>
    E <the end summary, JSON>

The header also holds the program's printf formats (`ring_printfs`, in
bpftrace's id order) and string size (`ring_strlen`): with them every record
decodes as the live path decodes a read (transport/ringdecode.py).
"""

from __future__ import annotations

import fcntl
import json
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from qspan.errors import RecordingError, TracerError
from qspan.model.events import Event, Lost
from qspan.output.capped import Capped
from qspan.output.recording import MAGIC_RAW, RecordingWriter, codes, string_kinds
from qspan.transport.ringdecode import STRLEN, RingDecoder, layout_of, printf_formats
from qspan.transport.text import MalformedLine, parse_line

_FRAME = struct.Struct("<cI")  # tag, length of what follows
_CPU = struct.Struct("<H")
RING, LINE, END = b"R", b"L", b"E"


class RawRecordingWriter(Capped):
    """Writes a version-2 recording (the ring transport's bytes as read); the caller owns the binary file.

    `printf_formats` are the program's, in bpftrace's id order (ringdecode.printf_formats):
    with `strlen` they say how to decode every record.
    """

    def __init__(self, f: IO[bytes], header: dict, printf_formats: tuple[str, ...], strlen: int,
                 max_bytes: int | None = None, room_check: Callable[[], str | None] | None = None):
        super().__init__(max_bytes, room_check)
        self.f = f
        header = dict(header, ring_printfs=list(printf_formats), ring_strlen=strlen)
        self._put((MAGIC_RAW + "\n#header " + json.dumps(header, sort_keys=True) + "\n").encode())

    def _put(self, data: bytes) -> None:
        self.f.write(data)
        self.written += len(data)

    def ring(self, cpu: int, data: bytes) -> None:
        """One read of CPU `cpu`'s ring: whole perf records."""
        what = f"{len(data)} bytes of CPU {cpu}'s ring"
        if data and self._room(_FRAME.size + _CPU.size + len(data), what):
            try:
                self._put(_FRAME.pack(RING, _CPU.size + len(data)) + _CPU.pack(cpu))
                self._put(data)
            except OSError as err:
                self._failed(what, err)

    @property
    def on_raw(self):
        """What the tracer hands each ring read to (TraceSession.run's on_raw)."""
        return self.ring

    def line(self, raw: str) -> None:
        data = raw.rstrip("\n").encode("utf-8", "replace")
        if self._room(_FRAME.size + len(data), raw):
            try:
                self._put(_FRAME.pack(LINE, len(data)) + data)
            except OSError as err:
                self._failed(raw, err)

    def lines(self, raws: list[str]) -> None:
        for raw in raws:
            self.line(raw)

    def end(self, summary: dict) -> dict:
        summary = self._end_summary(summary)
        data = json.dumps(summary, sort_keys=True).encode()
        return self._end(self.f, _FRAME.pack(END, len(data)) + data, summary)


@contextmanager
def open_writer(path: Path, header: dict, transport: str, program_text: str, exclusive: bool = False,
                max_bytes: int | None = None, room_check: Callable[[], str | None] | None = None
                ) -> Iterator[RecordingWriter | RawRecordingWriter]:
    """The recording a trace of `program_text` writes to `path`: version 2 (the rings' bytes) with
    the ring transport, version 1 (text) otherwise; `exclusive`: the file must not exist yet.
    Write errors after the header stop the recording, not the trace (Capped); closing is the same."""
    raw = transport == "ring"
    f = open(path, ("x" if exclusive else "w") + ("b" if raw else ""))
    # held while it is written: a server making room (--record-total-mb) leaves a locked one alone
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        if raw:
            yield RawRecordingWriter(f, header, printf_formats(program_text), STRLEN, max_bytes, room_check)
        else:
            yield RecordingWriter(f, header, max_bytes, room_check)
    finally:
        try:
            f.close()
        except OSError:
            pass  # its buffer could not be written (the disk is full): the writer said so already


def _frames(f: IO[bytes], state: dict) -> Iterator[tuple[bytes, bytes]]:
    """A version-2 recording's frames, up to its end frame (kept in state["end"])."""
    path, at = state["path"], f.tell()
    while True:
        head = f.read(_FRAME.size)
        if not head:
            return
        tag, n = _FRAME.unpack(head) if len(head) == _FRAME.size else (b"", 0)
        payload = f.read(n)
        if len(head) < _FRAME.size or len(payload) < n:
            state["partial"] = at
            return
        if tag == END:
            try:
                state["end"] = json.loads(payload)
            except ValueError:
                raise RecordingError(f"{path}: malformed end frame at byte {at}") from None
            return
        if tag not in (RING, LINE) or (tag == RING and n < _CPU.size):
            raise RecordingError(f"{path}: corrupted recording: no frame can start at byte {at} ({head!r})")
        yield tag, payload
        at += _FRAME.size + n


def raw_events(f: IO[bytes], header: dict, state: dict) -> Iterator[Event | Lost]:
    """A version-2 recording's events: each ring frame decoded as the live path decodes a read."""
    path = state["path"]
    code_table, strings = codes(header), string_kinds(header)
    decoder = RingDecoder(tuple(layout_of(fmt, int(header["ring_strlen"])) for fmt in header["ring_printfs"]),
                          mark_losses=True)
    for tag, payload in _frames(f, state):
        if tag == LINE:
            texts = [payload.decode("utf-8", "replace")]
        else:
            try:
                texts = decoder.add_records(_CPU.unpack_from(payload)[0], payload[_CPU.size:])
            except TracerError as err:
                raise RecordingError(f"{path}: corrupted recording: {err}") from None
            for after_ts, count in decoder.take_loss_marks():
                yield Lost(count, after_ts)
        for text in texts:
            try:
                # a "Lost N events" bpftrace printed belongs after the newest record read so far
                rec = parse_line(text, code_table, strings, 0, decoder.last_ts)
            except MalformedLine as err:
                raise RecordingError(f"{path}: corrupted recording: {err}") from None
            if rec is not None:
                yield rec
    _, entries = decoder.release(1 << 62, hold_ns=0, in_order=False)
    for e in entries:
        kind = code_table.get(e[4])
        if kind is None:
            raise RecordingError(f"{path}: corrupted recording: unknown event code {e[4]} in a ring record")
        yield Event(kind, e[0], e[3], e[5:])  # (TS, CPU, SEQ, TID, CODE, ARG0..ARG3)
