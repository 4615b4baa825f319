"""Live correlation: tracer output in, a bounded store of spans and aggregates out.

reorder.py (time order), feed.py (the pure live path: lines and dumps ->
correlator -> store), store.py (bounded spans and timelines), windows.py
(every span rolled up per second and minute, per scope), views.py (a view's charts),
shedder.py (when to sample), session.py (the I/O edge: bpftrace in a thread,
the recording), replay.py (a recording fed through the same path).
"""

from qspan.live.feed import LiveFeed
from qspan.live.reorder import REORDER_LAG_NS, WATERMARK_MARGIN_NS, ReorderBuffer
from qspan.live.session import LiveSession
from qspan.live.shedder import LoadShedder
from qspan.live.store import SpanStore

__all__ = ["REORDER_LAG_NS", "WATERMARK_MARGIN_NS", "LiveFeed", "LiveSession", "LoadShedder",
           "ReorderBuffer", "SpanStore"]
