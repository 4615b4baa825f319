"""The maps transport's decoder: drained map entries back into ordered event lines (pure)."""

import pytest

from qspan.parse import MalformedLine, MapDumpDecoder, parse_flush_mark


def _e(ts, cpu, seq, tid=7, code=1, args=(1, 2, 3, 0)):
    return (ts, cpu, seq, tid, code, *args)


def test_a_dump_comes_out_in_time_order_across_cpus():
    d = MapDumpDecoder()
    d.add([_e(300, 1, 2), _e(100, 0, 1), _e(200, 1, 1), _e(0, 0, 1, tid=0, code=0, args=(0, 0, 0, 0))])
    assert d.pending == 3  # the sentinel (ts 0) is not an event
    assert d.flush(400) == ["1 100 7 1 2 3 0", "1 200 7 1 2 3 0", "1 300 7 1 2 3 0"]
    assert d.watermark_ns == 400 and d.lost == 0 and d.pending == 0


def test_sequence_gaps_are_reported_once_as_lost_events():
    d = MapDumpDecoder()
    d.add([_e(1000 + seq, 0, seq) for seq in (1, 2, 5)])  # 3 and 4 never arrived (a full map)
    assert d.flush(2000)[0] == "Lost 2 events"
    d.add([_e(3000, 0, 6)])
    assert d.flush(4000) == ["1 3000 7 1 2 3 0"]  # no new loss, not re-reported
    assert d.lost == 2


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
