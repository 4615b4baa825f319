"""The maps transport's dumps, back into events in time order, with losses counted (pure).

See program/maps.py for how events get into the maps and bpfmaps.py for how
they get out.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import itemgetter

from qspan.transport.text import entry_line

_by_ts = itemgetter(0)


class MapDumpDecoder:
    """Turn the "maps" transport's dumps back into event lines (pure; see program/maps.py).

    A dump is a list of map entries, (TS_NS, CPU, SEQ, TID, CODE, ARG0..ARG3)
    tuples in no particular order (bpfmaps.EventMaps.drain). At each flush the
    collected events come out in time order.

    Loss is told by per-CPU sequence numbers, but a gap is not a loss at once:
    a probe preempted between taking its number and storing its event (the
    kernel may preempt a uprobe's BPF program) stores it into a map that was
    already emptied, and it arrives one rotation later. A number still missing
    LATE_NS after its gap was seen is lost. `watermark_ns` is the flip time of
    the last flush: every event stamped more than a moment before it has been
    handed out.
    """

    LATE_NS = 500_000_000

    def __init__(self):
        self._pending: list[tuple] = []
        self._next: dict[int, int] = {}  # cpu -> next sequence number expected
        # cpu -> gaps [first missing seq, one past the last, stamp of the event that showed it]:
        # ranges, not one entry per number: a full map makes gaps of thousands
        self._missing: dict[int, list[list[int]]] = {}
        self._released_upto = 0  # release(): nothing stamped before this will be handed out in order any more
        self.lost = 0  # missing for longer than LATE_NS
        self.late = 0  # arrived after events stamped later had been released in order (dropped there)
        self.watermark_ns = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, entries: list[tuple]) -> None:
        # A map dump comes in hash order: taken in time order instead, each CPU's
        # numbers ascend but for a probe preempted between taking its number and
        # stamping its event; the gap that one opens is filled a few entries later
        # (gap ranges stay sorted: found by bisection). The sorted run also makes
        # release()'s sort a cheap merge.
        events = [e for e in entries if e[0] != 0]  # e[0] == 0: the flush's sentinel (see program/maps.py)
        events.sort(key=_by_ts)
        nxt, missing = self._next, self._missing
        for e in events:
            cpu, seq = e[1], e[2]
            expect = nxt.get(cpu, 1)
            if seq >= expect:
                if seq > expect:
                    missing.setdefault(cpu, []).append([expect, seq, e[0]])
                nxt[cpu] = seq + 1
            elif cpu in missing:
                # a late one, or a number taken twice (a preempted probe wrote its
                # stale count back): neither is lost, and neither costs a scan
                _fill(missing[cpu], seq)
        self._pending.extend(events)

    def _expire(self) -> int:
        # Gaps are appended as they are seen, so their stamps (nearly) ascend: take
        # expired ones off the front and stop at the first that is not (a gap stamped a
        # moment later than one behind it just waits for the next release).
        cutoff = self.watermark_ns - self.LATE_NS
        lost = 0
        for gaps in self._missing.values():
            k = 0
            while k < len(gaps) and gaps[k][2] < cutoff:
                lost += gaps[k][1] - gaps[k][0]
                k += 1
            if k:
                del gaps[:k]
        self.lost += lost
        return lost

    def flush(self, watermark_ns: int) -> list[str]:
        """The collected events as lines in time order (a Lost line first if any were lost)."""
        lost, events = self.release(watermark_ns, hold_ns=0, in_order=False)
        out = [f"Lost {lost} events"] if lost else []
        out += [entry_line(e) for e in events]
        return out

    def release(self, watermark_ns: int, hold_ns: int = 2_000_000, in_order: bool = True) -> tuple[int, list[tuple]]:
        """(newly lost events, entries stamped before watermark_ns - hold_ns in time order).

        An event stamped just before a flip can land in the next map (it read the
        clock before the flip and the side after it): holding back the last
        `hold_ns` keeps what is released in order across dumps. With `in_order`,
        an entry older than what was already released is dropped and counted as
        lost (the live correlator must see time move forward); without, it comes
        out with the rest (recordings are sorted when read).
        """
        self.watermark_ns = max(self.watermark_ns, watermark_ns)
        lost = self._expire()
        self._pending.sort(key=_by_ts)  # (ts, cpu) is unique; ties across CPUs are harmless
        limit = self.watermark_ns - hold_ns
        if not self._pending or self._pending[-1][0] < limit:
            events, self._pending = self._pending, []
        else:
            cut = bisect_left(self._pending, limit, key=_by_ts)
            events, self._pending = self._pending[:cut], self._pending[cut:]
        if in_order and events and events[0][0] < self._released_upto:
            cut = bisect_left(events, self._released_upto, key=_by_ts)
            self.late += cut
            lost += cut
            self.lost += cut
            events = events[cut:]
        if events:
            self._released_upto = max(self._released_upto, events[-1][0])
        return lost, events


def _fill(gaps: list[list[int]], seq: int) -> None:
    """Take `seq` out of the gap range that holds it, if any (ranges sorted, disjoint)."""
    i = bisect_right(gaps, seq, key=_gap_start) - 1
    if i < 0:
        return
    lo, hi, t = gaps[i]
    if seq >= hi:
        return
    gaps[i:i + 1] = [[a, b, t] for a, b in ((lo, seq), (seq + 1, hi)) if a < b]


_gap_start = itemgetter(0)
