"""/metrics: per-disk, per-op counters built from every span once, and their exposition.

The spans come from a real recorded stream fed through the live path; the session around it
is a stand-in (only what the collector reads). tests/e2e/test_prometheus.py scrapes a real
server with Debian's Prometheus.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import DATA, local_client
from qspan.live.feed import LiveFeed
from qspan.live.metrics import BUCKETS_S, RequestMetrics
from qspan.model.spans import NodeVisit
from qspan.output import recording
from qspan.server.app import create_app
from qspan.server.sessions import SessionManager
from qspan.server.settings import Settings

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


def fed(devices: dict | None = None) -> LiveFeed:
    rec = recording.read(RECORDING)
    header = dict(rec.header, target=dict(rec.header["target"], name="vm-a", devices=devices or {"disk0": "vda"}))
    feed = LiveFeed(header)
    for line in recording.body_lines(RECORDING):
        feed.line(line)
    feed.drain()
    return feed


class StandIn:
    """What the collector reads of a live session."""

    def __init__(self, sid: str, feed: LiveFeed, state: str = "attached"):
        self.id, self.pid, self.feed, self.header = sid, 4242, feed, feed.header
        self.state = state
        self._lock = threading.Lock()

    def status(self) -> dict:
        return {"state": self.state, "events": self.feed.lines, "lost_events": self.feed.lost, "qemu_version": "7.2.22",
                "profile": "stock", "sampling": {"every": 1, "sampled_out": 0},
                "overhead": {"est_us_per_request": 12.5}, "tracer_cpu": {"server_cpu_s": 1.5, "bpftrace_cpu_s": 0.5}}

    @contextlib.contextmanager
    def locked(self):
        with self._lock:
            yield

    def tick(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass


def test_every_span_is_counted_once_by_disk_and_op():
    feed = fed()
    spans = feed.store.spans
    m = feed.metrics
    assert set(m.series) == {("vda", "read"), ("vda", "write")}
    for (disk, op), s in m.series.items():
        mine = [x for x in spans if x["op"] == op]
        assert s.count == len(mine) == sum(s.buckets) == 100
        assert s.sum_ns == sum(x["dur_ns"] for x in mine)
        assert sum(s.phases_ns.values()) == s.sum_ns  # phases add up to each span
        for i, n in enumerate(s.buckets):
            lo = BUCKETS_S[i - 1] * 1e9 if i else 0
            hi = BUCKETS_S[i] * 1e9 if i < len(BUCKETS_S) else float("inf")
            assert n == sum(1 for x in mine if lo < x["dur_ns"] <= hi), (i, n)


def test_a_disk_is_named_by_its_root_node_else_its_first_node():
    m = RequestMetrics({"disk0": "vda"})

    class S:
        nodes = [NodeVisit("#block123", "mirror_top", 1, 0, 0, 0, 0), NodeVisit("disk0", "file", 2, 0, 0, 0, 0)]

    assert m.disk_of(S) == "vda"  # a job's filter node first, then the disk's root
    S.nodes = S.nodes[:1]
    assert m.disk_of(S) == "#block123"
    S.nodes = []
    assert m.disk_of(S) == "unknown"


def _scrape(manager: SessionManager, **settings) -> tuple[int, str]:
    app = create_app(manager.settings, manager)
    with local_client(app) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {settings['token']}"} if settings else {})
        return r.status_code, r.text


def test_the_exposition_holds_the_counters_and_qspans_health(tmp_path):
    manager = SessionManager(Settings(record_dir=tmp_path))
    feed = fed()
    manager.sessions["live1"] = StandIn("live1", feed)
    manager.open_recording(RECORDING)  # a replay is not live: left out
    status, text = _scrape(manager)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lat = families["qspan_request_latency_seconds"]
    write = {s.labels.get("le"): s.value for s in lat.samples
             if s.labels["op"] == "write" and s.name.endswith("_bucket")}
    assert write["+Inf"] == 100 and list(write.values()) == sorted(write.values())  # cumulative
    labels = {k: v for k, v in lat.samples[0].labels.items() if k != "le"}
    assert labels == {"vm": "vm-a", "pid": "4242", "session": "live1", "disk": "vda", "op": labels["op"]}
    reqs = {s.labels["op"]: s.value for s in families["qspan_requests"].samples if s.name == "qspan_requests_total"}
    assert reqs == {"read": 100, "write": 100}
    phases = {s.labels["phase"]: s.value for s in families["qspan_request_phase_seconds"].samples
              if s.labels["op"] == "write" and s.name.endswith("_total")}
    assert sum(phases.values()) == pytest.approx(feed.metrics.series[("vda", "write")].sum_ns / 1e9)
    assert {s.labels["session"] for f in families.values() for s in f.samples} == {"live1"}
    health = {name: families[name].samples[0].value for name in
              ("qspan_events", "qspan_lost_events", "qspan_sampling_every", "qspan_probe_cost_estimate_seconds_per_request")}
    assert health == {"qspan_events": feed.lines, "qspan_lost_events": 0, "qspan_sampling_every": 1,
                      "qspan_probe_cost_estimate_seconds_per_request": pytest.approx(12.5e-6)}


def test_metrics_need_the_token_when_the_server_has_one(tmp_path):
    manager = SessionManager(Settings(record_dir=tmp_path, host="0.0.0.0", token="t0k3n"))
    app = create_app(manager.settings, manager)
    with local_client(app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer t0k3n"}).status_code == 200


def test_every_metric_and_label_is_documented(tmp_path):
    from helpers import REPO

    doc = (REPO / "docs" / "metrics.md").read_text()
    manager = SessionManager(Settings(record_dir=tmp_path))
    manager.sessions["live1"] = StandIn("live1", fed())
    text = _scrape(manager)[1]
    for f in text_string_to_metric_families(text):
        name = f.name + ("_total" if f.type == "counter" else "")
        assert f"`{name}`" in doc, name
        for s in f.samples:
            for label in s.labels:
                assert label == "le" or f"`{label}`" in doc, (f.name, label)
