"""What a live client gets a few times a second, for the view it chose, and the cache that lets clients share it.

A frame carries the session's health every tick; its charts (live/views.py) and the view's
slowest requests change only when a second closes, so a client is sent them only when they
changed since it last got them (`charts: null` otherwise): ten frames a second of a 10-minute
heatmap would be megabytes a second to a remote browser, and their builds a core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from qspan.live import LiveSession
from qspan.live.views import View, charts, scope_choices, slowest
from qspan.live.windows import disk_of

# Clients on one session and view share a frame built in the last FRAME_REUSE_S: ten
# dashboards cost one frame build per tick, not ten.
FRAME_REUSE_S = 0.02


def _slow_row(s, devices: dict[str, str]) -> dict:
    return {"id": s.id, "op": s.op, "disk": disk_of(s, devices), "offset": s.offset, "bytes": s.bytes, "dur_us": s.dur_ns / 1000,
            "end_ns": s.end_ns, "phases": {p.name: p.dur_ns / 1000 for p in s.phases}}


def clock_offset_s(header: dict) -> float | None:
    """Unix time minus trace time, in seconds, when the recording knows it (its clock anchor)."""
    clock = header.get("clock") or {}
    return clock["unix_minus_trace_ns"] / 1e9 if "unix_minus_trace_ns" in clock else None


def build_frame(s: LiveSession, view: View = View(), n_slowest: int = 10,
                with_charts: bool = True) -> tuple[dict, int]:
    """The session's frame for a view, and its charts' version (windows.Windows.version)."""
    status = s.status()
    with s.locked():
        w = s.store.windows
        frame = {
            "type": "frame", "status": status,
            "view": {"scope": view.scope, "op": view.op, "window_s": view.window_s, "range_s": view.range_s},
            "scopes": scope_choices(w), "clock_offset_s": clock_offset_s(s.header),
        }
        if with_charts:
            frame["charts"] = _charts(s, view, n_slowest)
        return frame, w.version


def _charts(s: LiveSession, view: View, n_slowest: int = 10) -> dict | None:
    """The view's charts and slowest requests (under the session's lock)."""
    w = s.store.windows
    c = charts(w, view)
    if c is not None:
        c["slowest"] = [_slow_row(x, w.devices) for x in slowest(w, s.store.ring, view, n_slowest)]
    return c


class FrameCache:
    """Per session and view: the frame's JSON, reused for `reuse_s`; its charts' JSON, until they change.

    Read on the event loop and dropped from the manager's tick thread: every walk over the
    dicts is over a copy of their keys."""

    MAX_VIEWS = 128  # views cached at once (a client brushing range after range makes new ones)

    def __init__(self, reuse_s: float = FRAME_REUSE_S, clock: Callable[[], float] = time.monotonic):
        self.reuse_s = reuse_s
        self._clock = clock
        # (session id, view key) -> (built at, version, the frame's JSON without its closing brace)
        self._frames: dict[tuple[str, tuple], tuple[float, int, str]] = {}
        self._charts: dict[tuple[str, tuple], tuple[int, str]] = {}  # (session id, view key) -> (version, JSON)

    def get(self, s: LiveSession, view: View = View(), sent_version: int | None = None) -> tuple[str, int]:
        """The frame's JSON for a client that last got the charts of `sent_version` (its charts are
        null when they have not changed since), and the version of the charts this frame has."""
        now = self._clock()
        key = (s.id, view.key)
        hit = self._frames.get(key)
        if not (hit and now - hit[0] < self.reuse_s):
            frame, version = build_frame(s, view, with_charts=False)
            hit = self._frames[key] = (now, version, json.dumps(frame)[:-1])
            if len(self._frames) > self.MAX_VIEWS:  # the least recently built go
                for k in sorted(list(self._frames), key=lambda k: self._frames.get(k, (0,))[0])[:len(self._frames) // 4]:
                    self._frames.pop(k, None)
                    self._charts.pop(k, None)
        _, version, head = hit
        if version == sent_version:
            return head + ', "charts": null}', version
        cached = self._charts.get(key)
        if cached is None or cached[0] != version:
            with s.locked():
                version = s.store.windows.version
                cached = self._charts[key] = (version, json.dumps(_charts(s, view)))
        return head + ', "charts": ' + cached[1] + "}", cached[0]

    def drop(self, sid: str) -> None:
        for table in (self._frames, self._charts):
            for k in [k for k in list(table) if k[0] == sid]:
                table.pop(k, None)

    def __len__(self) -> int:
        return len(self._frames)
