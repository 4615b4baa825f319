"""What the dashboard draws for one view (scope, op, time window) of a session (pure).

A view is what a client chose: the VM, a guest disk or a block node; every op or one; the
last 10 s, 1 min, 10 min or everything, or a range brushed on the latency chart. `charts`
bins the window's rows (windows.py) into at most MAX_POINTS points: latency percentiles,
the heatmap, the phases and what ran instead over time, and the window's breakdown.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from qspan.live.windows import ALL, Rollup, Windows, bucket_low_us, disk_of
from qspan.model.spans import INSTEAD_CATEGORIES, Span, span_group

WINDOWS_S = (10, 60, 600, 0)  # 0: since the start
DEFAULT_WINDOW_S = 60
MAX_POINTS = 120
BIN_CHOICES_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


class ViewError(ValueError):
    """A view a client asked for that cannot be: the text says why."""


@dataclass(frozen=True)
class View:
    scope: str = ALL  # "all", "disk:NAME" or "node:NAME"
    op: str | None = None  # an op group (read, write, job:ID), None: every one
    window_s: int = DEFAULT_WINDOW_S
    range_s: tuple[float, float] | None = None  # a brushed range (trace seconds): wins over window_s

    @property
    def key(self) -> tuple:
        return (self.scope, self.op, self.window_s, self.range_s)


def parse_view(msg: dict) -> View:
    """A client's {"scope", "op", "window_s", "range_s"} as a View, or a ViewError saying what is wrong."""
    if not isinstance(msg, dict):
        raise ViewError("a view is a JSON object")
    unknown = set(msg) - {"type", "scope", "op", "window_s", "range_s"}
    if unknown:
        raise ViewError(f"unknown view fields: {', '.join(sorted(unknown))}")
    scope = msg.get("scope") or ALL
    if not isinstance(scope, str) or len(scope) > 300 or not (scope == ALL or scope.startswith(("disk:", "node:"))):
        raise ViewError("scope: \"all\", \"disk:NAME\" or \"node:NAME\"")
    op = msg.get("op") or None
    if op is not None and (not isinstance(op, str) or len(op) > 300):
        raise ViewError("op: an op name (read, write, flush, copy, job:ID) or null")
    window = msg.get("window_s", DEFAULT_WINDOW_S)
    if window not in WINDOWS_S:
        raise ViewError(f"window_s: one of {', '.join(map(str, WINDOWS_S))} (0: since the start)")
    rng = msg.get("range_s")
    if rng is not None:
        if (not isinstance(rng, list | tuple) or len(rng) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in rng)
                or rng[0] > rng[1]):
            raise ViewError("range_s: [from, to] in the trace's seconds, finite, from <= to")
        rng = (float(rng[0]), float(rng[1]))
    return View(scope, op, int(window), rng)


def bounds(w: Windows, view: View) -> tuple[int, int] | None:
    """The view's window as whole seconds [t0, t1] within what the session has, or None before
    anything was closed."""
    if w.newest_s < 0:
        return None
    t1 = w.newest_s
    first = w.first_s if w.first_s is not None else t1
    if view.range_s is not None:  # a brushed range, held to the session's own stretch
        a, b = max(first, math.floor(view.range_s[0])), min(t1, math.floor(view.range_s[1]))
        return (a, b) if a <= b else (t1, t1)
    if view.window_s == 0:
        return first, t1
    return max(first, t1 - view.window_s + 1), t1  # no empty stretch before the first request


def bin_width(span_s: int, resolution_s: int) -> int:
    """The narrowest bin (a multiple of the rows' resolution) that keeps the window to MAX_POINTS bins."""
    for b in BIN_CHOICES_S:
        if b >= resolution_s and b % resolution_s == 0 and math.ceil(span_s / b) + 1 <= MAX_POINTS:
            return b
    return math.ceil(span_s / (MAX_POINTS - 1) / resolution_s) * resolution_s


def in_scope(s: Span, scope: str, devices: dict[str, str]) -> bool:
    if scope == ALL:
        return True
    kind, _, name = scope.partition(":")
    if kind == "disk":
        return disk_of(s, devices) == name
    return any(v.node == name for v in s.nodes)


def charts(w: Windows, view: View) -> dict | None:
    """Every chart's data for the view, binned; None before the first second closed."""
    b = bounds(w, view)
    if b is None:
        return None
    t0, t1 = b
    all_groups = w.groups(view.scope)
    groups = [g for g in all_groups if view.op is None or g == view.op]
    per_group = {g: w.rows(view.scope, g, t0, t1) for g in groups}
    resolution = max((res for _rows, res in per_group.values()), default=1)
    width = bin_width(t1 - t0 + 1, resolution)
    start = t0 - t0 % width
    n_bins = (t1 - start) // width + 1
    times = [start + i * width for i in range(n_bins)]
    latency, merged = {}, [Rollup() for _ in range(n_bins)]
    exact = width == 1 and resolution == 1
    for g, (rows, _res) in per_group.items():
        bins = [Rollup() for _ in range(n_bins)]
        exact_rows: dict[int, dict] = {}
        for r in rows:
            i = (max(r.t_s, start) - start) // width
            if 0 <= i < n_bins:
                bins[i].merge(r.rollup)
                merged[i].merge(r.rollup)
                if exact and r.exact:
                    exact_rows[i] = r.exact
        series: dict[str, list] = {"requests": [x.requests for x in bins]}
        for p in (50, 90, 99):
            name = f"p{p}_us"
            series[name] = [(exact_rows[i][name] if i in exact_rows else x.percentile_us(p)) if x.requests else None
                            for i, x in enumerate(bins)]
        series["max_us"] = [x.max_ns / 1000 if x.requests else None for x in bins]
        latency[g] = series
    used = sorted({k for x in merged for k in x.buckets})
    heat_rows = list(range(used[0], used[-1] + 1)) if used else []
    phase_names = sorted({k for x in merged for k in x.phases_ns})
    return {
        "t0_s": t0, "t1_s": t1, "bin_s": width, "resolution_s": resolution, "exact_percentiles": exact,
        "t_s": times, "groups": groups, "all_groups": all_groups, "latency": latency,
        "heatmap": {"buckets": heat_rows, "low_us": [bucket_low_us(k) for k in heat_rows],
                    "z": [[x.buckets.get(k, 0) for x in merged] for k in heat_rows]},
        "requests": [x.requests for x in merged],
        "phases_mean_us": {p: [x.phases_ns.get(p, 0) / x.requests / 1000 if x.requests else 0 for x in merged]
                           for p in phase_names},
        "instead_mean_us": {c: [x.instead_ns.get(c, 0) / x.requests / 1000 if x.requests else 0 for x in merged]
                            for c in INSTEAD_CATEGORIES},
        "breakdown": breakdown(w, view, groups, t0, t1),
    }


def breakdown(w: Windows, view: View, groups: list[str], t0: int, t1: int) -> dict:
    """Per op group of the view, the window's sums as means per request (everything since the start for window 0)."""
    since_start = view.window_s == 0 and view.range_s is None
    out = {}
    for g in groups:
        r = w.window_rollup(view.scope, g, None if since_start else t0, None if since_start else t1)
        if r.requests:
            out[g] = r.summary()
    return out


def slowest(w: Windows, ring, view: View, n: int = 10) -> list[Span]:
    """The view's n longest spans among those kept: the ring (every request of its stretch) and
    each second's slowest per disk and group (windows.py), so the window's slowest
    SLOWEST_PER_SECOND are always among them, for the VM or a disk, one op or all."""
    b = bounds(w, view)
    match_op = (lambda s: True) if view.op is None else (lambda s: span_group(s.op, s.job) == view.op)
    if b is None:
        cands = [s for s in ring if match_op(s) and in_scope(s, view.scope, w.devices)]
        return heapq.nlargest(n, cands, key=lambda s: (s.dur_ns, -s.id))
    lo, hi = b[0] * 1_000_000_000, (b[1] + 1) * 1_000_000_000
    # the ring first, newest first, up to the window's start (it is in end order, nearly)
    seen: dict[int, Span] = {}
    for s in reversed(ring):
        if s.end_ns < lo - 2_000_000_000:
            break
        if lo <= s.end_ns < hi and match_op(s) and in_scope(s, view.scope, w.devices):
            seen[s.id] = s
    for s in w.slowest_kept_spans(*b):
        if s.id not in seen and lo <= s.end_ns < hi and match_op(s) and in_scope(s, view.scope, w.devices):
            seen[s.id] = s
    return heapq.nlargest(n, seen.values(), key=lambda s: (s.dur_ns, -s.id))


def scope_choices(w: Windows) -> list[dict]:
    """The selector's entries: the VM, its disks, its block nodes, each with its request count."""
    order = {"all": 0, "disk": 1, "node": 2}
    return [{"scope": sc, "requests": n} for sc, n in
            sorted(w.scopes.items(), key=lambda kv: (order[kv[0].partition(":")[0]], kv[0]))]
