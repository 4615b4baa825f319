"""The maps transport's decoder: bpftrace map dumps back into ordered event lines (pure)."""

import pytest

from qspan.parse import MalformedLine, MapDumpDecoder


def _entry(side, ts, cpu, seq, tid=7, code=1, args=(1, 2, 3, 0)):
    return f"@qspan_ev{side}[{ts}, {cpu}]: ({seq}, {tid}, {code}, {', '.join(map(str, args))})"


def test_a_dump_comes_out_in_time_order_across_cpus():
    d = MapDumpDecoder()
    for line in [_entry(0, 300, 1, 2), _entry(0, 100, 0, 1), _entry(0, 200, 1, 1), _entry(0, 0, 0, 1, code=0)]:
        assert d.is_entry(line)
        d.entry(line)
    out = d.flush("QSPAN-FLUSH 400")
    assert out == ["1 100 7 1 2 3 0", "1 200 7 1 2 3 0", "1 300 7 1 2 3 0"]  # sentinel (ts 0) dropped
    assert d.watermark_ns == 400 and d.lost == 0 and d.pending == 0


def test_sequence_gaps_are_reported_once_as_lost_events():
    d = MapDumpDecoder()
    for seq in (1, 2, 5):  # 3 and 4 never arrived (a full map)
        d.entry(_entry(1, 1000 + seq, 0, seq))
    assert d.flush("QSPAN-FLUSH 2000")[0] == "Lost 2 events"
    d.entry(_entry(2, 3000, 0, 6))
    assert d.flush("QSPAN-FLUSH 4000") == ["1 3000 7 1 2 3 0"]  # no new loss, not re-reported
    assert d.lost == 2


def test_negative_arguments_and_big_pointers_survive():
    d = MapDumpDecoder()
    d.entry(_entry(3, 5, 1, 1, code=16, args=(-4, 94772783300468, 0, 0)))
    assert d.flush("QSPAN-FLUSH 9") == ["16 5 7 -4 94772783300468 0 0"]


@pytest.mark.parametrize("line", ["@qspan_ev0[1, 2]: (1, 2)", "@qspan_ev0[x, 2]: (1, 2, 3, 4, 5, 6, 7)", "@qspan_ev0 garbage"])
def test_a_malformed_entry_is_an_error_not_a_guess(line):
    with pytest.raises(MalformedLine):
        MapDumpDecoder().entry(line)


def test_a_bad_flush_mark_is_an_error():
    with pytest.raises(MalformedLine):
        MapDumpDecoder().flush("QSPAN-FLUSH soon")
