"""What a live client gets a few times a second, and the cache that lets clients share it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from qspan.live import LiveSession

# Clients on one session share a frame built in the last FRAME_REUSE_S: ten
# dashboards cost one frame build per tick, not ten.
FRAME_REUSE_S = 0.02


def build_frame(s: LiveSession, seconds: int = 120, slowest: int = 10) -> dict:
    """Health, recent per-second percentiles, breakdowns and the slowest spans of one session."""
    status = s.status()
    with s.locked():
        rows = list(s.store.seconds)
        breakdown = s.store.breakdown()
        slow = s.store.slowest(slowest)
    cutoff = rows[-1]["t_s"] - seconds if rows else 0
    return {
        "type": "frame",
        "status": status,
        "latency": [r for r in rows if r["t_s"] > cutoff],
        "breakdown": breakdown,
        "slowest": [{"id": x["id"], "op": x["op"], "offset": x["offset"], "bytes": x["bytes"],
                     "dur_us": x["dur_ns"] / 1000, "end_ns": x["end_ns"],
                     "phases": {p["name"]: p["dur_ns"] / 1000 for p in x["phases"]}}
                    for x in slow],
    }


class FrameCache:
    """One encoded frame per session, reused for `reuse_s` (the session manager owns one)."""

    def __init__(self, reuse_s: float = FRAME_REUSE_S, clock: Callable[[], float] = time.monotonic):
        self.reuse_s = reuse_s
        self._clock = clock
        self._frames: dict[str, tuple[float, str]] = {}  # session id -> (built at, JSON text)

    def get(self, s: LiveSession) -> str:
        now = self._clock()
        hit = self._frames.get(s.id)
        if hit and now - hit[0] < self.reuse_s:
            return hit[1]
        data = json.dumps(build_frame(s))
        self._frames[s.id] = (now, data)
        return data

    def drop(self, sid: str) -> None:
        self._frames.pop(sid, None)

    def __len__(self) -> int:
        return len(self._frames)
