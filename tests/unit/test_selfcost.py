"""qspan's own cost per span (correlate/selfcost.py): the calibrated probe hits on its critical path."""

from helpers import DATA
from qspan.correlate import correlate
from qspan.correlate.selfcost import COST_HORIZON_NS, CostLog, hit_increment
from qspan.model.events import CO_ENTER, CO_YIELD, Event
from qspan.output import recording, report
from qspan.model.spans import span_dict

IOT, MAIN, WORKER, VCPU = 100, 99, 200, 50
UPROBE, TRACEPOINT = 1600, 800  # ns a hit, as a header's self_cost says (a hit and its store)
COST = {
    "ns": {"co.switch": UPROBE, "req.submit": UPROBE, "node.io": UPROBE, "req.ack": UPROBE, "kick.read": UPROBE,
           "sys.io": TRACEPOINT, "sys.io_done": TRACEPOINT, "notify": TRACEPOINT, "sched.switch": TRACEPOINT},
    "kind": {"co.switch": "uprobe", "req.submit": "uprobe", "node.io": "uprobe", "req.ack": "uprobe",
             "kick.read": "uprobe", "sys.io": "tracepoint", "sys.io_done": "tracepoint", "notify": "tracepoint",
             "sched.switch": "tracepoint"},
}
HEADER = {"target": {"threads": [{"tid": MAIN, "role": "main"}, {"tid": IOT, "role": "iothread"},
                                 {"tid": VCPU, "role": "vcpu"}, {"tid": WORKER, "role": "worker"}]},
          "self_cost": COST}


def E(kind, ts, tid, *args):
    return Event(kind, ts, tid, tuple(args) + (0,) * (4 - len(args)))


def test_a_span_is_charged_the_hits_on_its_critical_path_and_no_others():
    A, B, LEADER = 0xA, 0xB, 1
    ev = [
        E("notify", 1000, VCPU, 7),  # the guest's kick: its tracepoint delays the request
        E("kick.read", 1010, IOT, 7),
        E("req.submit", 1020, IOT, 0xB1, 4096, 4096, 2),
        E("co.switch", 1021, IOT, LEADER, A, CO_ENTER),
        E("node.io", 1022, IOT, 0xB5, 4096, 4096, 2),
        E("co.switch", 1030, IOT, A, LEADER, CO_YIELD),  # submit ends: 5 uprobes so far
        # while the worker does A's write, the iothread runs B: in parallel, not on A's path
        E("req.submit", 1040, IOT, 0xB1, 8192, 4096, 2),
        E("co.switch", 1041, IOT, LEADER, B, CO_ENTER),
        E("node.io", 1042, IOT, 0xB5, 8192, 4096, 2),
        E("sys.io", 1050, WORKER, 3, 4096, 4096, 2),
        E("co.switch", 1060, IOT, B, LEADER, CO_YIELD),
        E("sys.io_done", 1100, WORKER, 4096),  # A is ready: its handoff begins
        E("sched.switch", 1110, IOT, IOT, 0, 1),  # the iothread's own scheduling, during the handoff: charged
        E("co.switch", 1120, IOT, LEADER, A, CO_ENTER),
        E("req.ack", 1130, IOT, 0xF, 0xE, 4096),
        E("kick.read", 1200, IOT, 9),  # after A's end: not A's
    ]
    spans = {s.offset: s for s in correlate(ev, HEADER).spans}
    a = spans[4096]
    assert [p.name for p in a.phases] == ["kick", "submit", "queue", "device", "handoff", "complete"]
    # notify; kick.read, submit, enter, node.io, yield; sys.io, sys.io_done; sched.switch; enter, ack
    assert a.qspan_hits == {"uprobe": 7, "tracepoint": 4}
    assert a.qspan_ns == 7 * UPROBE + 4 * TRACEPOINT


def test_without_a_calibration_spans_say_nothing_of_their_cost():
    header = {k: v for k, v in HEADER.items() if k != "self_cost"}
    ev = [E("req.submit", 10, IOT, 1, 0, 512, 1), E("co.switch", 11, IOT, 1, 0xA, CO_ENTER),
          E("req.ack", 12, IOT, 0, 0, 0), E("kick.read", 13, IOT, 3)]
    (s,) = correlate(ev, header).spans
    assert s.qspan_ns is None and s.qspan_hits is None


def test_the_cost_log_counts_hits_in_closed_windows_and_forgets_old_ones():
    log = CostLog()
    n = 3 * CostLog.MAX_KEPT
    for i in range(n):
        log.charge(i * 100_000, hit_increment(100, tracepoint=i % 2 == 1))  # one hit every 100 us
    now = (n - 1) * 100_000
    assert log.window(now + 1, now + 10**9) == (0, 0, 0)  # nothing there yet
    assert log.window(now - 900_000, now) == (1000, 5, 5)  # 10 hits, both ends included
    assert len(log.ts) <= 2 * 20_001 and log.ts[0] >= now - 2 * COST_HORIZON_NS  # old hits went ...
    assert log.window(0, now)[0] < n * 100  # ... so a window older than the horizon is only partly known
    assert log.window(now - COST_HORIZON_NS, now) == (20_001 * 100, 10_000, 10_001)


def test_the_recorded_stream_gives_every_span_a_cost_and_the_summary_its_corrected_latency():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    kinds = {name: "tracepoint" if name.startswith(("sys.", "sched.", "loop.", "notify")) else "uprobe"
             for name in rec.header["codes"].values()}
    header = dict(rec.header, self_cost={"ns": {k: UPROBE if v == "uprobe" else TRACEPOINT for k, v in kinds.items()
                                                if k != "node.name"}, "kind": kinds})
    spans = correlate([*rec.events, *rec.lost], header).spans
    assert len(spans) == 200
    for s in spans:
        # a stock request's own path: submit, enter, node.io, yield, enter, ack at least, and its
        # pool hop's two syscall tracepoints
        assert s.qspan_hits["uprobe"] >= 6 and s.qspan_hits["tracepoint"] >= 2, s.qspan_hits
        assert 0 < s.qspan_ns < s.dur_ns
    bd = report.breakdown([span_dict(s) for s in spans])["write"]
    q = bd["qspan"]
    assert q["corrected_p50_us"] < bd["p50_us"] and q["mean_us"] > 0
    assert "qspan's own probes on the critical path" in report.render_text({"write": bd})


def test_a_hit_at_a_zero_length_wait_is_charged_once():
    """A worker done before the coroutine yields makes queue and device phases of no length:
    the yield's hit sits on both sides of them and counts once."""
    A, LEADER = 0xA, 1
    ev = [
        E("req.submit", 1000, IOT, 0xB1, 4096, 4096, 2),
        E("co.switch", 1001, IOT, LEADER, A, CO_ENTER),
        E("node.io", 1002, IOT, 0xB5, 4096, 4096, 2),
        E("sys.io", 1003, WORKER, 3, 4096, 4096, 2),
        E("sys.io_done", 1004, WORKER, 4096),
        E("co.switch", 1010, IOT, A, LEADER, CO_YIELD),  # after the worker was done
        E("co.switch", 1020, IOT, LEADER, A, CO_ENTER),
        E("req.ack", 1030, IOT, 0xF, 0xE, 4096),
        E("kick.read", 1040, IOT, 9),
    ]
    (s,) = correlate(ev, HEADER).spans
    assert [(p.name, p.dur_ns) for p in s.phases][1:3] == [("queue", 0), ("device", 0)]
    # submit, enter, node.io, yield, enter, ack; and the worker's two tracepoints
    assert s.qspan_hits == {"uprobe": 6, "tracepoint": 2}


def test_cost_log_windows_agree_with_counting_by_hand_in_the_tail_and_before_it():
    # sum_between searches the newest TAIL_SEARCH hits first: windows inside the tail, across
    # its start and wholly before it, and empty ones, must all count as a plain scan does.
    import random

    from qspan.correlate.selfcost import TAIL_SEARCH, unpack

    rng = random.Random(7)
    log = CostLog()
    stamps = sorted(rng.sample(range(1, 10_000), 3 * TAIL_SEARCH))
    stamps += [stamps[-1]] * 3  # equal stamps at the end, as two probes in one nanosecond
    for ts in stamps:
        log.charge(ts, hit_increment(1000, False))
    for _ in range(2000):
        a = rng.choice([*stamps, rng.randrange(0, 10_001)])
        b = a + rng.choice([0, 1, 7, 50, 500, 5000])
        expected = sum(1 for ts in stamps if a <= ts <= b)
        assert unpack(log.sum_between(a, b))[1] == expected, (a, b)
