"""Spans as Chrome trace-event JSON, which Perfetto and chrome://tracing open.

Plain functions from span dicts to documents; writing them is the caller's job.
"""

from __future__ import annotations

from qspan.model.spans import SCHEMA


def _us(ns: int, origin: int) -> float:
    return (ns - origin) / 1000.0


def chrome_trace(spans: list[dict], timelines: dict[int, list[dict]], header: dict) -> dict:
    """Chrome trace-event JSON (what Perfetto and chrome://tracing open).

    Threads are tracks; each request is an async slice on its thread with its
    phases nested; coroutine runs (from the captured timelines) are slices on
    their thread; each handoff is a flow from the signalling thread to the
    resuming one.
    """
    tgt = header.get("target", {})
    pid = tgt.get("pid", 0)
    origin = min((s["start_ns"] for s in spans), default=0)
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": f"QEMU {tgt.get('version', '')} (PID {pid})"}}]
    for t in tgt.get("threads", []):
        label = t["comm"] + (f" [{t['role']}]" if t.get("role") not in (None, "other") else "")
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": t["tid"], "args": {"name": label}})
    seen_segments: set[tuple[int, int]] = set()
    flow_id = 0
    for s in spans:
        # named by op (a block job's by job): Perfetto merges a process's async tracks of one name, so
        # requests pack into one lane per op instead of a track each; which request it is goes in args
        name = s["op"] if not s.get("job") else f"job:{s['job']} {s['op']}"
        # id2.local: the request's async track belongs to the QEMU process (a bare "id" makes
        # Perfetto put every request on a global track of its own, outside the process)
        rid = {"local": s["id"]}
        events.append({"ph": "b", "cat": "request", "id2": rid, "name": name, "pid": pid, "tid": s["tid"],
                       "ts": _us(s["start_ns"], origin),
                       "args": {"request": s["id"], "offset": s["offset"], "bytes": s["bytes"], "dur_us": s["dur_ns"] / 1000}})
        for p in s["phases"]:
            events.append({"ph": "b", "cat": "request", "id2": rid, "name": p["name"], "pid": pid, "tid": s["tid"],
                           "ts": _us(p["start_ns"], origin)})
            events.append({"ph": "e", "cat": "request", "id2": rid, "name": p["name"], "pid": pid, "tid": s["tid"],
                           "ts": _us(p["start_ns"] + p["dur_ns"], origin)})
        events.append({"ph": "e", "cat": "request", "id2": rid, "name": name, "pid": pid, "tid": s["tid"],
                       "ts": _us(s["end_ns"], origin)})
        for h in s["handoffs"]:
            flow_id += 1
            # flows bind to enclosing slices: give each end a short one
            for tid, ts, label, ph in ((h["from_tid"], h["ready_ns"], f"ready ({h['signal']})", "s"),
                                       (h["to_tid"], h["resumed_ns"], f"resume #{s['id']}", "f")):
                events.append({"ph": "X", "cat": "handoff", "name": label, "pid": pid, "tid": tid,
                               "ts": _us(ts, origin), "dur": 1.0, "args": {"request": s["id"]}})
                flow = {"ph": ph, "cat": "handoff", "name": "handoff", "id": flow_id, "pid": pid, "tid": tid,
                        "ts": _us(ts, origin)}
                if ph == "f":
                    flow["bp"] = "e"
                events.append(flow)
        for seg in timelines.get(s["id"], []):
            key = (seg["tid"], seg["start_ns"])
            if key in seen_segments or seg["kind"] == "loop":
                continue
            seen_segments.add(key)
            if seg["kind"] == "co":
                who = f"request #{seg['request']}" if seg["role"] == "request" else seg["role"] or "unbound"
                label = f"co {who}"
            else:
                label = seg["kind"]
            events.append({"ph": "X", "cat": "thread", "name": label, "pid": pid, "tid": seg["tid"],
                           "ts": _us(seg["start_ns"], origin), "dur": seg["dur_ns"] / 1000,
                           "args": {"co": hex(seg["co"]) if seg["co"] else None, "request": seg["request"]}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"qspan_origin_ns": origin, "schema": SCHEMA}}
