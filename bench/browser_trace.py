"""What a browser's long tasks were made of, from a Chrome trace (Playwright's start_tracing).

The Long Tasks API says how long a task held the page's main thread, not what it did nor
whether it was working or waiting for a core. A trace with the categories below says both:
each task's wall time and the thread's CPU time within it (`tdur`), and the time of every
event nested in it, which is split here by what the browser was doing (script, style and
layout, paint, garbage collection) and by which chart was being drawn (frontend/views.js
marks each draw with performance.measure("qspan draw <chart>")).

Pure: events in, figures out (bench/dashboard.py --trace prints them; the trace itself can
be opened in Perfetto's UI).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CATEGORIES = ["toplevel", "devtools.timeline", "disabled-by-default-devtools.timeline", "blink.user_timing"]
LONG_TASK_US = 50_000  # what the Long Tasks API counts as long
DRAW_MARK = "qspan draw "

# What an event's own time (not its children's) was spent on, by its name's start.
KINDS = [
    ("gc", ("MinorGC", "MajorGC", "V8.GC", "BlinkGC", "ScavengeGC", "CppGC", "V8.Scavenge", "V8.Mark", "V8.Sweep")),
    ("style & layout", ("UpdateLayoutTree", "RecalculateStyles", "Layout", "UpdateLayout", "HitTest", "PrePaint",
                        "IntersectionObserverController", "ScheduleStyleRecalculation", "InvalidateLayout")),
    ("paint", ("Paint", "Layerize", "Commit", "UpdateLayer", "CompositeLayers", "RasterTask", "PaintImage", "Decode")),
    ("script", ("FunctionCall", "TimerFire", "EventDispatch", "v8", "V8", "EvaluateScript", "FireAnimationFrame",
                "RunMicrotasks", "XHR", "ParseHTML", "v8.")),
]


@dataclass
class LongTask:
    start_us: float
    wall_ms: float
    cpu_ms: float | None  # the thread's CPU time in the task (tdur); None when the trace has none
    kinds_ms: Counter = field(default_factory=Counter)  # own time by kind (script, style & layout, paint, gc, other)
    charts: list[str] = field(default_factory=list)  # the charts drawn in it (views.js's marks)

    @property
    def main_kind(self) -> str:
        return self.kinds_ms.most_common(1)[0][0] if self.kinds_ms else "other"


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS:
        if name.startswith(prefixes):
            return kind
    return "other"


def main_thread(events: list[dict]) -> tuple[int, int] | None:
    """The renderer main thread that ran the most tasks (a page's, not a spare renderer's)."""
    mains = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
             and e.get("args", {}).get("name") == "CrRendererMain"}
    busy: Counter = Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") == "RunTask" and (e.get("pid"), e.get("tid")) in mains:
            busy[(e["pid"], e["tid"])] += e.get("dur", 0)
    return busy.most_common(1)[0][0] if busy else None


def _draw_marks(events: list[dict], pid: int) -> list[tuple[float, float, str]]:
    """(start, end, chart) of views.js's performance.measure marks (async begin/end pairs in the trace)."""
    begins: dict[tuple, float] = {}
    out = []
    for e in sorted((e for e in events if e.get("pid") == pid and str(e.get("name", "")).startswith(DRAW_MARK)),
                    key=lambda e: e["ts"]):
        key = (e["name"], str(e.get("id", e.get("id2"))), e.get("cat"))
        if e.get("ph") in ("b", "S"):
            begins[key] = e["ts"]
        elif e.get("ph") in ("e", "F") and key in begins:
            out.append((begins.pop(key), e["ts"], e["name"][len(DRAW_MARK):]))
        elif e.get("ph") == "X":
            out.append((e["ts"], e["ts"] + e.get("dur", 0), e["name"][len(DRAW_MARK):]))
    return out


def long_tasks(events: list[dict], threshold_us: float = LONG_TASK_US) -> list[LongTask]:
    """The main thread's tasks of threshold_us or more, each with its own time split by kind."""
    thread = main_thread(events)
    if thread is None:
        return []
    pid, tid = thread
    mine = sorted((e for e in events if e.get("ph") == "X" and e.get("pid") == pid and e.get("tid") == tid and "dur" in e),
                  key=lambda e: (e["ts"], -e["dur"]))
    marks = _draw_marks(events, pid)
    out = []
    tasks = [e for e in mine if e["name"] == "RunTask" and e["dur"] >= threshold_us]
    for task in tasks:
        end = task["ts"] + task["dur"]
        inside = [e for e in mine if task["ts"] <= e["ts"] and e["ts"] + e["dur"] <= end and e is not task]
        lt = LongTask(start_us=task["ts"], wall_ms=task["dur"] / 1000,
                      cpu_ms=task["tdur"] / 1000 if "tdur" in task else None)
        # own time: an event's duration less that of the events directly inside it (a stack walk)
        stack: list[list] = [[task, task["dur"]]]  # [event, own time so far]
        for e in inside:
            while stack[-1][0] is not task and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                done, own = stack.pop()
                lt.kinds_ms[kind_of(done["name"])] += max(0.0, own) / 1000
            stack[-1][1] -= e["dur"]
            stack.append([e, e["dur"]])
        while stack:
            done, own = stack.pop()
            lt.kinds_ms[kind_of(done["name"]) if done is not task else "other"] += max(0.0, own) / 1000
        lt.charts = [chart for a, b, chart in marks if a < end and b > task["ts"]]
        out.append(lt)
    return out


def summary(tasks: list[LongTask]) -> list[str]:
    """Lines to print: wall against CPU, what the time went to, and which draws were in them."""
    if not tasks:
        return ["no long tasks in the trace"]
    wall = sum(t.wall_ms for t in tasks)
    with_cpu = [t for t in tasks if t.cpu_ms is not None]
    lines = [f"{len(tasks)} long tasks, {wall:.0f} ms of wall time"]
    if with_cpu:
        cpu = sum(t.cpu_ms for t in with_cpu)
        lines.append(f"the main thread's CPU in them: {cpu:.0f} ms of {sum(t.wall_ms for t in with_cpu):.0f} ms"
                     f" ({100 * cpu / max(1e-9, sum(t.wall_ms for t in with_cpu)):.0f} %; the rest it waited for a core)")
    kinds: Counter = Counter()
    for t in tasks:
        kinds.update(t.kinds_ms)
    lines.append("their time by kind: " + ", ".join(f"{k} {v:.0f} ms" for k, v in kinds.most_common()))
    by_chart: Counter = Counter()
    for t in tasks:
        for c in t.charts or ["(no chart drawn)"]:
            by_chart[c] += 1
    lines.append("long tasks by the chart drawn in them: " + ", ".join(f"{c} {n}" for c, n in by_chart.most_common()))
    over = [t for t in tasks if t.wall_ms > 100]
    for t in sorted(over, key=lambda t: -t.wall_ms)[:8]:
        cpu = f", CPU {t.cpu_ms:.0f} ms" if t.cpu_ms is not None else ""
        lines.append(f"  {t.wall_ms:.0f} ms{cpu}: " + ", ".join(f"{k} {v:.0f}" for k, v in t.kinds_ms.most_common(3))
                     + (f" (drawing {', '.join(t.charts)})" if t.charts else ""))
    return lines
