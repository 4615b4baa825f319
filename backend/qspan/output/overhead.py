"""The tracer's own cost, estimated from what it observed (pure).

Every event qspan receives was a probe hit on some QEMU (or worker) thread.
What a hit costs depends on the probe: a uprobe whose first instruction the
kernel can emulate (push, call, jmp, jcc, nop) is ~4x cheaper than one whose
instruction must be single-stepped; a tracepoint costs little; and the
transport adds its store. Per-kind figures live in tracers/costs.txt
(measured by bench/probe_cost.py). Filtered-out hits (the same uprobe in
another thread's code path) are not seen, so this is a lower bound.
"""

from __future__ import annotations


def event_costs(probe_kinds: dict[str, list[str]], transport: str, costs: dict[str, float]) -> dict[str, float]:
    """Microseconds per event, by event name: its costliest probe's hit plus the store."""
    store = costs.get(f"store.{transport}", 0.0)
    return {ev: max(costs.get(k, 0.0) for k in kinds) + store for ev, kinds in probe_kinds.items() if kinds}


def estimate(counts: dict[str, int], per_event_us: dict[str, float], requests: int) -> dict:
    """What the events seen so far cost, per guest request."""
    total_us = sum(n * per_event_us.get(ev, 0.0) for ev, n in counts.items())
    events = sum(counts.values())
    per_req = max(1, requests)
    return {
        "requests": requests,
        "events_per_request": round(events / per_req, 2) if requests else None,
        "est_us_per_request": round(total_us / per_req, 1) if requests else None,
        "by_event_us_per_request": {ev: round(n * per_event_us.get(ev, 0.0) / per_req, 2)
                                    for ev, n in sorted(counts.items())} if requests else {},
    }


def measured(server_cpu_s: float, bpftrace_cpu_s: float, requests: int, wall_s: float) -> dict:
    """qspan's own CPU since attach, as /proc counted it: per guest request and in cores.

    The server's share is the whole process's (its web work and any other session
    included), so with one session it is what this trace costs the host."""
    total = server_cpu_s + bpftrace_cpu_s
    return {
        "us_per_request": round(total / requests * 1e6, 1) if requests else None,
        "cores": round(total / wall_s, 3) if wall_s > 0 else None,
        "server_cpu_s": round(server_cpu_s, 3), "bpftrace_cpu_s": round(bpftrace_cpu_s, 3),
    }
