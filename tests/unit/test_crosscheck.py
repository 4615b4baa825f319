"""qspan crosscheck's pure side: QEMU's binning, moves between histograms, QEMU's own ends."""

import pytest

from qspan.cli.crosscheck import _boundaries
from qspan.errors import QspanError
from qspan.model.events import Event
from qspan.output import crosscheck


def test_bins_follow_qemu_s_rule_a_latency_on_a_boundary_goes_above_it():
    # QEMU: bin 0 below the first boundary, bin i+1 for boundaries[i] <= latency < boundaries[i+1]
    assert crosscheck.bin_counts([0, 9, 10, 19, 20, 50, 10**9], [10, 20, 50]) == [2, 2, 1, 2]


def test_moved_counts_the_requests_that_change_bins_and_the_ones_missing():
    assert crosscheck.moved([3, 2], [2, 3]) == 1
    assert crosscheck.moved([5, 0, 0], [3, 1, 1]) == 2
    assert crosscheck.moved([5], [3]) == 2  # two requests QEMU counted that qspan did not
    assert crosscheck.moved([1, 2, 3], [1, 2, 3]) == 0


def E(ts, tid, start, prev_end):
    return Event("req.acct", ts, tid, (start, 4096, 2, prev_end))


def test_qemu_s_own_end_of_a_request_is_read_at_the_next_one_on_its_thread():
    events = [
        E(1000, 7, 900, 0),  # the first: its predecessor's end is not ours
        E(2000, 8, 1900, 1500),  # another thread (device): its own sequence
        E(3000, 7, 2900, 1001),  # QEMU read 1001 for the request probed at 1000
        Event("req.ack", 3500, 7, (0, 0, 0, 0)),  # other events are ignored
        E(4000, 7, 3900, 2500),  # not between 3000 and 4000: not this thread's previous one
        E(5000, 8, 4900, 2000),  # equal to the probe: allowed (the clock's resolution)
    ]
    # in any order: a recording's events come per CPU ring
    assert crosscheck.qemu_ends(list(reversed(events))) == {1000: 1001, 2000: 2000}


def _span(op, node, start, acct_start, acct_end, end, kick=0):
    phases = [{"name": "kick", "dur_ns": kick}] if kick else [{"name": "submit", "dur_ns": 1}]
    return {"op": op, "nodes": [{"node": node}], "start_ns": start, "end_ns": end, "dur_ns": end - start,
            "acct_start_ns": acct_start, "acct_end_ns": acct_end, "phases": phases}


def test_compare_bins_each_device_s_requests_with_qemu_s_ends_where_known():
    b = [10_000, 20_000]  # ns
    spans = [
        # QEMU's interval 19.5 us at the probe, 20.2 us by QEMU's own clock: bin 2, where QEMU put it
        _span("write", "disk0", 100_000, 105_000, 124_500, 123_000, kick=5_000),
        _span("write", "disk0", 200_000, 200_000, 205_000, 204_000),  # 5 us: bin 0
        _span("write", "disk1", 300_000, 300_000, 312_000, 311_000),  # the other device
        _span("write", "disk0", 900_000, 900_000, 905_000, 904_000),  # ended after QEMU's histogram was read
        {**_span("read", "disk0", 400_000, 0, 0, 401_000), "acct_start_ns": None, "acct_end_ns": None},
    ]
    qemu = {"vda": {"write": [1, 0, 1], "read": [0, 0, 0]}, "vdb": {"write": [0, 1, 0]}}
    rep = crosscheck.compare(qemu, {"disk0": "vda", "disk1": "vdb"}, b, spans, (0, 800_000), {124_500: 125_200})
    w = rep["devices"]["vda"]["write"]
    assert w["qemu_requests"] == w["qspan_requests"] == 2 and w["exact_ends"] == 1
    assert w["acct_bins"] == [1, 0, 1] and w["acct_moved"] == 0
    assert w["at_probe_bins"] == [1, 1, 0] and w["at_probe_moved"] == 1  # the probe's own return moved one
    assert w["span_bins"] == [1, 0, 1]
    assert w["why"]["of_which_kick_us"] == 2.5  # mean over the two
    assert rep["devices"]["vda"]["read"]["without_accounting"] == 1
    assert rep["devices"]["vdb"]["write"]["acct_moved"] == 0
    assert rep["probe_late"] == {"requests": 1, "p50_ns": 700, "p99_ns": 700}
    text = "\n".join(crosscheck.text(rep))
    assert "vda write: QEMU counted 2, qspan traced 2" in text and "0 requests in another bin" in text


def test_a_job_s_filter_above_the_device_and_the_job_s_own_requests():
    """A mirror puts a filter node (an implicit name) above disk0, which each guest request then
    passes first; the job's own copies are its spans, not the device's (QEMU does not account them)."""
    via_filter = _span("write", "#block022", 100_000, 100_000, 105_000, 104_000)
    via_filter["nodes"] = [{"node": "#block022"}, {"node": "disk0"}]
    copy = {**_span("read", "disk0", 200_000, 200_000, 260_000, 260_000), "job": "mirror0"}
    qemu = {"vda": {"write": [1, 0, 0], "read": [0, 0, 0]}}
    rep = crosscheck.compare(qemu, {"disk0": "vda"}, [10_000, 20_000], [via_filter, copy], (0, 800_000), {})
    assert rep["devices"]["vda"]["write"]["qspan_requests"] == 1 and rep["unmatched_spans"] == 0
    assert "read" not in rep["devices"]["vda"]


@pytest.mark.parametrize("text,message", [("10,x", "integers"), ("20,10", "increasing"), ("0,10", "positive"),
                                          ("", "increasing")])
def test_boundaries_are_checked(text, message):
    with pytest.raises(QspanError, match=message):
        _boundaries(text)
    assert _boundaries("10,20,50") == [10_000, 20_000, 50_000]


def test_the_live_check_keeps_qemu_s_ends_as_the_feed_correlates_in_batches():
    """live/crosscheck.py: the same ends from events handed over batch by batch (in time order,
    as the feed hands them) as from the whole stream; and only spans whose accounting ended
    after QEMU's histograms were set are kept."""
    from types import SimpleNamespace

    from qspan.live.crosscheck import LiveCrossCheck

    events = [E(1000, 7, 900, 0), E(2000, 8, 1900, 1500), E(3000, 7, 2900, 1001),
              Event("req.ack", 3500, 7, (0, 0, 0, 0)), E(4000, 7, 3900, 2500), E(5000, 8, 4900, 2000)]
    check = LiveCrossCheck(SimpleNamespace(), [10_000])
    for i in range(0, len(events), 2):
        check.events(events[i:i + 2])
    assert check.ends.ends == crosscheck.qemu_ends(events) and check.processed_ns == 5000
    check.histograms.start_ns = 2500  # set between the 2nd and 3rd request's accounting
    before = SimpleNamespace(acct_end_ns=2000)
    unaccounted = SimpleNamespace(acct_end_ns=None)
    check.spans([before, unaccounted])
    assert check.kept == []


def test_a_request_without_qemu_s_own_end_is_ended_at_the_probe_plus_the_median_lateness():
    """A device's last request has no later one to read its end: at the probe alone it is binned
    short, so it is ended at the probe plus how late QEMU's read came for the others."""
    b = [20_000]
    spans = [_span("write", "disk0", 0, 0, 10_000, 9_000),  # exact end 10.7 us: bin 0
             _span("write", "disk0", 100_000, 100_000, 119_500, 119_000)]  # 19.5 at the probe, no exact end
    rep = crosscheck.compare({"vda": {"write": [1, 1]}}, {"disk0": "vda"}, b, spans, (0, 200_000), {10_000: 10_700})
    w = rep["devices"]["vda"]["write"]
    assert w["exact_ends"] == 1 and w["acct_bins"] == [1, 1] and w["acct_moved"] == 0
    assert w["at_probe_bins"] == [2, 0]
