"""GET /metrics: Prometheus' text exposition of every live session, read at scrape time.

Per VM, disk and op: a latency histogram, a request counter, and the time requests spent in
each phase and, in handoff waits, in each of what ran instead (counters: rate() over them, or
their ratio to the request counter, is the mean per request). Per session: qspan's own health
(events, lost events, sampling, its estimated and measured cost). Sessions replayed from a
recording are not live and are left out. The values come from live/metrics.py.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from qspan.live.metrics import BUCKETS_S
from qspan.live.replay import ReplaySession
from .deps import Manager

router = APIRouter(tags=["metrics"])
SESSION_LABELS = ["vm", "pid", "session"]
SERIES_LABELS = SESSION_LABELS + ["disk", "op"]
LE = [repr(b) for b in BUCKETS_S] + ["+Inf"]


class SessionsCollector:
    """A prometheus_client collector over the manager's sessions (one per scrape: no global state)."""

    def __init__(self, manager):
        self.manager = manager

    def collect(self):
        lat = HistogramMetricFamily("qspan_request_latency_seconds", "guest request latency: the guest's kick to "
                                    "QEMU's ack (span dur_ns)", labels=SERIES_LABELS)
        reqs = CounterMetricFamily("qspan_requests", "guest requests traced whole (spans)", labels=SERIES_LABELS)
        phase = CounterMetricFamily("qspan_request_phase_seconds", "time requests spent in each phase of their "
                                    "critical path (docs/spans-schema.md)", labels=SERIES_LABELS + ["phase"])
        instead = CounterMetricFamily("qspan_request_handoff_instead_seconds", "handoff waits: what the resuming "
                                      "thread did instead, by category", labels=SERIES_LABELS + ["category"])
        info = GaugeMetricFamily("qspan_session_info", "a tracing session (1), its state and what it traces",
                                 labels=SESSION_LABELS + ["state", "qemu_version", "profile"])
        events = CounterMetricFamily("qspan_events", "events the tracer handed on", labels=SESSION_LABELS)
        lost = CounterMetricFamily("qspan_lost_events", "events the kernel dropped (their requests are "
                                   "incomplete or abandoned)", labels=SESSION_LABELS)
        sampled_out = CounterMetricFamily("qspan_sampled_out_requests", "requests in flight when a sampling "
                                          "window closed, not counted as spans", labels=SESSION_LABELS)
        sampling = GaugeMetricFamily("qspan_sampling_every", "1 in this many sampling windows is traced "
                                     "(1: everything)", labels=SESSION_LABELS)
        cost = GaugeMetricFamily("qspan_probe_cost_estimate_seconds_per_request", "what qspan's probes cost "
                                 "QEMU a request, estimated from the events seen (tracers/costs.txt)",
                                 labels=SESSION_LABELS)
        cpu = CounterMetricFamily("qspan_tracer_cpu_seconds", "qspan's own CPU since attach, as /proc counts it",
                                  labels=SESSION_LABELS + ["process"])
        for s in self.manager.list():
            if isinstance(s, ReplaySession) or s.feed is None:
                continue
            st = s.status()
            target = s.header.get("target", {})
            base = [target.get("name") or f"pid{s.pid}", str(s.pid), s.id]
            with s.locked():
                series = [(k, v.buckets[:], v.count, v.sum_ns, dict(v.phases_ns), dict(v.instead_ns))
                          for k, v in s.feed.metrics.series.items()]
            for (disk, op), buckets, count, sum_ns, phases, insteads in sorted(series):
                labels = base + [disk, op]
                cumulative, running = [], 0
                for le, n in zip(LE, buckets):
                    running += n
                    cumulative.append((le, running))
                lat.add_metric(labels, cumulative, sum_ns / 1e9)
                reqs.add_metric(labels, count)
                for name, ns in sorted(phases.items()):
                    phase.add_metric(labels + [name], ns / 1e9)
                for cat, ns in sorted(insteads.items()):
                    instead.add_metric(labels + [cat], ns / 1e9)
            info.add_metric(base + [st["state"], st.get("qemu_version") or "", st.get("profile") or ""], 1)
            events.add_metric(base, st["events"])
            lost.add_metric(base, st["lost_events"])
            sampling_st = st.get("sampling") or {}
            sampled_out.add_metric(base, sampling_st.get("sampled_out", 0))
            sampling.add_metric(base, sampling_st.get("every", 1))
            est = (st.get("overhead") or {}).get("est_us_per_request")
            if est is not None:
                cost.add_metric(base, est / 1e6)
            measured = st.get("tracer_cpu") or {}
            for process in ("server", "bpftrace"):
                if measured.get(f"{process}_cpu_s") is not None:
                    cpu.add_metric(base + [process], measured[f"{process}_cpu_s"])
        yield from (lat, reqs, phase, instead, info, events, lost, sampled_out, sampling, cost, cpu)


@router.get("/metrics", summary="Prometheus metrics of the live sessions", include_in_schema=True)
def metrics(manager: Manager) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionsCollector(manager))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
