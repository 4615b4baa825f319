"""The maps transport's decoder: drained map entries back into ordered event lines (pure)."""

import pytest

from qspan.transport.decode import MapDumpDecoder
from qspan.transport.text import MalformedLine, parse_flush_mark


def _e(ts, cpu, seq, tid=7, code=1, args=(1, 2, 3, 0)):
    return (ts, cpu, seq, tid, code, *args)


def test_a_dump_comes_out_in_time_order_across_cpus():
    d = MapDumpDecoder()
    d.add([_e(300, 1, 2), _e(100, 0, 1), _e(200, 1, 1), _e(0, 0, 1, tid=0, code=0, args=(0, 0, 0, 0))])
    assert d.pending == 3  # the sentinel (ts 0) is not an event
    assert d.flush(400) == ["1 100 7 1 2 3 0", "1 200 7 1 2 3 0", "1 300 7 1 2 3 0"]
    assert d.watermark_ns == 400 and d.lost == 0 and d.pending == 0


def test_sequence_gaps_are_lost_only_once_they_are_late_enough():
    late = MapDumpDecoder.LATE_NS
    d = MapDumpDecoder()
    d.add([_e(1000 + seq, 0, seq) for seq in (1, 2, 5)])  # 3 and 4 missing (a full map, or a late store)
    assert not d.flush(2000)[0].startswith("Lost")  # not yet: they may still come
    d.add([_e(3000, 0, 6)])
    assert d.flush(2000 + late + 1)[0] == "Lost 2 events"
    d.add([_e(4000, 0, 7)])
    assert d.flush(2000 + 2 * late) == ["1 4000 7 1 2 3 0"]  # not re-reported
    assert d.lost == 2


def test_a_late_store_fills_its_gap_and_is_not_lost():
    d = MapDumpDecoder()
    d.add([_e(100, 1, 1), _e(300, 1, 3)])  # seq 2 was preempted before its store
    assert d.flush(400) == ["1 100 7 1 2 3 0", "1 300 7 1 2 3 0"]
    d.add([_e(200, 1, 2)])  # it lands a rotation later
    assert d.flush(400 + MapDumpDecoder.LATE_NS * 2) == ["1 200 7 1 2 3 0"]  # recordings keep it
    assert d.lost == 0


def test_in_order_release_drops_a_late_event_and_counts_it():
    d = MapDumpDecoder()
    d.add([_e(100, 1, 1), _e(300, 1, 3)])
    assert d.release(400, hold_ns=0) == (0, [_e(100, 1, 1), _e(300, 1, 3)])
    d.add([_e(200, 1, 2), _e(500, 1, 4)])
    lost, events = d.release(600, hold_ns=0)
    assert (lost, events) == (1, [_e(500, 1, 4)])  # the live correlator never sees time go back
    assert d.late == 1


def test_events_from_a_later_dump_keep_their_own_order():
    d = MapDumpDecoder()
    d.add([_e(50, 0, 2)])
    d.add([_e(40, 0, 1)])  # stored just before a flip, emptied with the next map
    assert d.flush(60) == ["1 40 7 1 2 3 0", "1 50 7 1 2 3 0"]


def test_negative_arguments_and_big_pointers_survive():
    d = MapDumpDecoder()
    d.add([_e(5, 1, 1, code=16, args=(-4, 94772783300468, 0, 0))])
    assert d.flush(9) == ["16 5 7 -4 94772783300468 0 0"]


def test_flush_marks():
    assert parse_flush_mark("QSPAN-FLUSH 123 2") == (123, 2)
    for bad in ("QSPAN-FLUSH soon 1", "QSPAN-FLUSH 123"):
        with pytest.raises(MalformedLine):
            parse_flush_mark(bad)


def test_a_late_store_inside_a_long_gap_splits_it():
    late = MapDumpDecoder.LATE_NS
    d = MapDumpDecoder()
    d.add([_e(100, 0, 1), _e(200, 0, 10_001)])  # a full map: 9,999 numbers missing
    d.add([_e(150, 0, 5000)])  # one of them was only late
    d.flush(300)
    assert d.flush(300 + late) == ["Lost 9998 events"]
    assert d.lost == 9998


def test_a_dump_in_hash_order_leaves_no_gaps_behind():
    """A map hands its entries back in hash order; numbers out of order within one dump are not gaps."""
    import random
    entries = [_e(1000 + seq, cpu, seq) for cpu in (0, 1) for seq in range(1, 65_537)]
    random.Random(5).shuffle(entries)
    d = MapDumpDecoder()
    d.add(entries)
    assert d._missing == {}  # nothing missing: the whole dump was contiguous per CPU
    out = d.flush(1 << 62)
    assert len(out) == 2 * 65_536 and d.lost == 0


def test_a_rewound_sequence_counter_is_neither_loss_nor_gap():
    """A preempted probe writing back a stale count makes later numbers repeat: duplicates, not gaps."""
    late = MapDumpDecoder.LATE_NS
    d = MapDumpDecoder()
    d.add([_e(100 + i, 0, seq) for i, seq in enumerate([1, 2, 3, 4, 5, 3, 4, 5, 6, 8])])
    assert d._missing == {0: [[7, 8, 109]]}  # stamped by the event that showed the hole
    d.flush(200)
    assert d.flush(200 + late) == ["Lost 1 events"]  # only 7; the repeated 3..5 are events, not holes


class _Dumps:
    """Stands in for the BPF maps MapOutput drains: one prepared dump per flush mark."""

    def __init__(self, dumps):
        self.dumps = list(dumps)

    def drain(self, _side):
        return self.dumps.pop(0)


@pytest.mark.parametrize("batched", [False, True])
def test_a_recording_gets_the_same_lines_one_by_one_or_a_dump_at_a_time(batched):
    from qspan.program import FLUSH_MARK
    from qspan.program.maps import WAIT_MARK
    from qspan.transport.outputs import MapOutput

    one, many = [], []
    out = MapOutput(one.append, None, None, many.extend if batched else None)
    out.maps = _Dumps([[_e(100, 0, 1), _e(200, 1, 1)], [_e(300, 0, 3)], [_e(400 + MapDumpDecoder.LATE_NS * 3, 0, 4)]])
    for mark in (250 + 2_000_000, 350 + 2_000_000, 500 + MapDumpDecoder.LATE_NS * 3 + 2_000_000):
        out.handle(f"{FLUSH_MARK} {mark} 0")
        out.handle(WAIT_MARK)  # a tick that could not move on: a sign of life, not an event
    lines = many if batched else one
    assert "Lost 1 events" in one  # the Lost line goes to on_line either way, and is counted
    assert [ln for ln in lines if ln[0].isdigit()] == [
        "1 100 7 1 2 3 0", "1 200 7 1 2 3 0", "1 300 7 1 2 3 0", f"1 {400 + MapDumpDecoder.LATE_NS * 3} 7 1 2 3 0"]
    assert out.lines == 4 and out.lost == 1
