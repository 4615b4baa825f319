"""The ring transport's record decoding (pure): layouts from the program text, records to entries.

Records are built here the way the kernel lays them out (perf_event_header,
then the sample's u32 size, then bpftrace's printf id and arguments, padded to
8 bytes); tests/e2e run the real thing against QEMU.
"""

import struct

import pytest

from helpers import offsets_for

from qspan import catalogue, program
from qspan.errors import TracerError
from qspan.transport.ringdecode import (ASYNC_ACTIONS, RECORD_LOST, RECORD_SAMPLE, RecordCounter, RingDecoder,
                                       printf_layouts)


def _program():
    cat = catalogue.load()
    symbols = frozenset(p.target for p in cat.probes if p.source == "uprobe")
    inp = program.ProgramInput(pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2),
                               version_text="7.2.22", symbols=symbols, usdt=False, watched_tids=(4242, 4244),
                               offsets=offsets_for((7, 2)))
    return cat, program.generate(cat, inp, transport="ring")


def sample(printf_id: int, payload: bytes) -> bytes:
    raw = struct.pack("<Q", printf_id) + payload
    pad = (-(8 + 4 + len(raw))) % 8
    raw += b"\0" * pad
    return struct.pack("<IHHI", RECORD_SAMPLE, 0, 8 + 4 + len(raw), len(raw)) + raw


def event(printf_id: int, ts: int, tid: int, *args: int) -> bytes:
    return sample(printf_id, struct.pack("<Qqqqqq", ts, tid, *args))


def lost(n: int) -> bytes:
    return struct.pack("<IHHQQ", RECORD_LOST, 0, 24, 0, n)


def test_layouts_follow_the_programs_printfs_in_text_order():
    cat, prog = _program()
    lays = printf_layouts(prog.text)
    assert len(lays) == prog.text.count("printf(")
    assert lays[0].code is None and lays[0].sizes == ()  # the BEGIN mark
    codes = {lay.code for lay in lays if lay.code is not None}
    assert cat.events["co.switch"].code in codes and cat.events["trace.window"].code in codes
    names = [lay for lay in lays if any(lay.strings)]
    # node.name on the read, write and copy paths (name and driver), job.name at its start and four of its steps (its id)
    assert [n.sizes for n in names if n.strings.count(True) == 2] == [(8, 8, 8, 8, 64, 64, 8)] * 3
    assert [n.sizes for n in names if n.strings.count(True) == 1] == [(8, 8, 8, 8, 64, 8, 8)] * 5
    assert all(n.code is None for n in names)
    assert all(lay.payload == 56 for lay in lays if lay.code is not None)


def test_a_run_of_event_records_becomes_entries_in_time_order():
    cat, prog = _program()
    lays = printf_layouts(prog.text)
    ids = [i for i, lay in enumerate(lays) if lay.code == cat.events["co.switch"].code]
    dec = RingDecoder(lays)
    data = event(ids[0], 200, 7, 1, 2, 3, 0) + event(ids[0], 100, 7, 4, 5, 6, 0)
    assert dec.add_records(1, data) == []
    lost_now, entries = dec.release(1000, hold_ns=0)
    assert lost_now == 0
    code = cat.events["co.switch"].code
    assert entries == [(100, 1, 0, 7, code, 4, 5, 6, 0), (200, 1, 0, 7, code, 1, 2, 3, 0)]


def test_names_losses_and_bpftraces_own_actions_among_events():
    cat, prog = _program()
    lays = printf_layouts(prog.text)
    name_id = next(i for i, lay in enumerate(lays) if any(lay.strings))
    ev_id = next(i for i, lay in enumerate(lays) if lay.code is not None)
    name = struct.pack("<qQqq", 6, 50, 7, 0xABC) + b"drive0".ljust(64, b"\0") + b"file".ljust(64, b"\0") + struct.pack("<q", 0)
    data = (event(ev_id, 10, 7, 1, 2, 3, 4) + sample(name_id, name) + lost(5)
            + sample(ASYNC_ACTIONS + 2, struct.pack("<I", 0)) + event(ev_id, 20, 7, 1, 2, 3, 4))
    dec = RingDecoder(lays)
    assert dec.add_records(0, data) == ["6 50 7 2748 drive0 file 0"]  # what bpftrace would print
    lost_now, entries = dec.release(1000, hold_ns=0)
    assert lost_now == 5 and dec.lost == 5
    assert [e[0] for e in entries] == [10, 20]


def test_counting_records_without_decoding_them_agrees_with_the_decoder():
    """A recording counts what it writes from the records' headers alone (ringdecode.RecordCounter)."""
    cat, prog = _program()
    lays = printf_layouts(prog.text)
    name_id = next(i for i, lay in enumerate(lays) if any(lay.strings))
    ev_id = next(i for i, lay in enumerate(lays) if lay.code is not None)
    counter = RecordCounter(lays)
    events = b"".join(event(ev_id, 10 + i, 7, i, 0, 0, 0) for i in range(500))
    assert counter.count(0, events) == (500, 0)  # the stride check: no walk
    name = sample(name_id, b"\0" * 8 * 4 + b"\0" * 128 + b"\0" * 8)
    mixed = events[:72 * 3] + name + lost(9) + sample(ASYNC_ACTIONS + 2, struct.pack("<I", 0)) + events[72 * 3:]
    assert counter.count(0, mixed) == (501, 9)  # the name is a line as well; bpftrace's own action is not
    dec = RingDecoder(lays)
    assert len(dec.add_records(0, mixed)) == 1 and dec.release(1 << 62, hold_ns=0)[0] == 9
    assert dec.pending == 0
    # a lost record's size is a multiple of 8, not of an event's: a run of 72-byte
    # records that is not all samples must not pass the stride check
    three_lost = lost(1) * 3
    assert len(three_lost) == 72 and counter.count(0, three_lost) == (0, 3)
    with pytest.raises(TracerError, match="malformed perf record"):
        counter.count(0, events + struct.pack("<IHH", RECORD_SAMPLE, 0, 4000))


def test_a_record_that_does_not_match_the_program_is_an_error_not_garbage():
    _, prog = _program()
    dec = RingDecoder(printf_layouts(prog.text))
    with pytest.raises(TracerError, match="does not match the program"):
        dec.add_records(0, sample(len(dec.layouts) + 3, b"\0" * 8))
    with pytest.raises(TracerError, match="malformed perf record"):
        dec.add_records(0, struct.pack("<IHH", RECORD_SAMPLE, 0, 4000) + b"\0" * 64)


def test_ring_bytes_returns_records_whole_across_the_ring_end():
    # A ring as the kernel lays it out after a metadata page: records of mixed sizes written
    # through a small ring many times over, read back at random moments, come out intact.
    import random

    from qspan.transport.rings import ring_bytes

    rnd = random.Random(7)
    start, size = 64, 256
    buf = bytearray(start + size)
    head = tail = 0
    written, read = bytearray(), bytearray()
    for _ in range(2000):
        rec = bytes([rnd.randrange(256)]) * rnd.choice((8, 24, 72))
        if head + len(rec) - tail <= size:
            for i, b in enumerate(rec):
                buf[start + (head + i) % size] = b
            head += len(rec)
            written += rec
        if rnd.random() < 0.3:
            read += ring_bytes(buf, start, size, head, tail)
            tail = head
    read += ring_bytes(buf, start, size, head, tail)
    assert read == written and len(written) > 20 * size
    with pytest.raises(TracerError, match="overrun"):
        ring_bytes(buf, start, size, size + 8, 0)


class _Rings:
    """Stands in for transport.rings.Rings: hands out what a test put in, per CPU, once."""

    def __init__(self):
        self.pending: list[tuple[int, bytes]] = []
        self.fail: Exception | None = None

    def read(self):
        if self.fail is not None:
            raise self.fail
        out, self.pending = self.pending, []
        return out


def test_the_ring_reader_keeps_reads_in_order_and_stops_reading_past_its_backlog():
    from qspan.transport.rings import RingReader

    rings = _Rings()
    reader = RingReader(rings, period_s=3600, max_bytes=10)  # read_once by hand: no thread started
    assert reader.take() == (None, [])  # nothing read: no clock to go by
    rings.pending = [(0, b"aaaa"), (1, b"bb")]
    reader.read_once()
    rings.pending = [(0, b"cccc")]
    reader.read_once()
    rings.pending = [(1, b"dddd")]
    reader.read_once()  # 10 bytes kept: this read is left in the rings, for the kernel to count
    assert rings.pending == [(1, b"dddd")]
    now, chunks = reader.take()
    assert chunks == [(0, b"aaaa"), (1, b"bb"), (0, b"cccc")] and now > 0
    reader.read_once()  # taken: room again
    assert reader.take()[1] == [(1, b"dddd")]


def test_a_failing_ring_read_on_the_reader_thread_is_raised_to_the_consumer():
    from qspan.transport.rings import RingReader

    rings = _Rings()
    rings.fail = OSError("ring unmapped")
    reader = RingReader(rings, period_s=0.001)
    reader.start()
    reader._thread.join(5)
    with pytest.raises(TracerError, match="reading qspan's perf rings failed: ring unmapped"):
        reader.take()


def test_the_last_read_of_the_rings_is_made_even_past_the_backlog():
    from qspan.transport.rings import RingReader

    rings = _Rings()
    reader = RingReader(rings, period_s=3600, max_bytes=4)
    rings.pending = [(0, b"aaaa")]
    reader.read_once()
    rings.pending = [(0, b"tail")]
    reader.read_once()  # past the backlog: left in the ring ...
    assert rings.pending == [(0, b"tail")]
    reader.last_read()  # ... but the final read takes it, or nothing would count it lost
    assert reader.take()[1] == [(0, b"aaaa"), (0, b"tail")]
