"""/metrics scraped by Debian's real Prometheus while a lab guest writes.

Prometheus (unpacked by setup: lab/prometheus/fetch.sh) runs on loopback with storage of its
own and scrapes the token-protected server every second, as a deployment would (bearer token
in its scrape config). Then what Prometheus computes must agree with qspan and the guest:
- the request counter equals the guest's own count of writes, and of its verify reads;
- histogram_quantile(0.99) over the scraped buckets falls in the bucket that holds qspan's own
  p99 of the same spans (both use the 1,980th of 2,000 latencies; Prometheus interpolates
  inside that bucket, so agreement is to the bucket, not closer).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from bisect import bisect_left

import pytest

from helpers import REPO, require_tracing
from qspan.live.metrics import BUCKETS_S
from qspan.output.report import percentile
from qspanlab import lab
from qspanlab.harness import ServerProcess, free_port

pytestmark = pytest.mark.e2e
PROMETHEUS = REPO / "build" / "prometheus" / "root" / "usr" / "bin" / "prometheus"
TOKEN = "prom-scrape-token"
WRITES = 2000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_tracing()
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} missing: scripts/setup.sh unpacks it (lab/prometheus/fetch.sh)")
    d = tmp_path_factory.mktemp("prom")
    info = lab.up(d / "lab")
    server = ServerProcess("--token", TOKEN).wait_ready(headers={"Authorization": f"Bearer {TOKEN}"})
    port = free_port()
    (d / "prometheus.yml").write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "qspan", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "authorization": {"credentials": TOKEN},
                            "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
    }))
    log = open(d / "prometheus.log", "w")
    prom = subprocess.Popen([str(PROMETHEUS), f"--config.file={d / 'prometheus.yml'}",
                             f"--storage.tsdb.path={d / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield info, server, f"http://127.0.0.1:{port}", d / "prometheus.log"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
        server.stop()
        lab.down(d / "lab")


def query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def targets(prom: str) -> list[dict]:
    with urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=10) as r:
        return json.loads(r.read())["data"]["activeTargets"]


def documented_queries() -> list[str]:
    """The PromQL blocks of docs/metrics.md: one query per comment, continuation lines indented."""
    text = (REPO / "docs" / "metrics.md").read_text()
    out = []
    for block in text.split("```promql\n")[1:]:
        for line in block.split("```")[0].splitlines():
            if line.startswith("#"):
                out.append("")
            elif line.startswith(" ") and out:
                out[-1] += " " + line.strip()
            elif line.strip():
                out[-1] = line.strip()
    assert len(out) >= 3 and all(out), out
    return out


def wait_for(prom: str, expr: str, want: float, timeout_s: float = 60.0) -> float:
    """The expression's single value once it equals `want` (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        try:
            res = query(prom, expr)
        except OSError:  # Prometheus still starting
            res = []
        if len(res) == 1:
            value = float(res[0]["value"][1])
            if value == want:
                return value
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {value}, not {want}, after {timeout_s} s")


def test_prometheus_agrees_with_qspan_and_the_guest(setup, output_dir):
    vm, server, prom, prom_log = setup
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = server.request("POST", "/api/sessions", {"pid": vm.pid}, headers=auth)
    assert status == 201, body
    sid = body["id"]
    deadline = time.monotonic() + 120
    while server.get(f"/api/sessions/{sid}", headers=auth)[1]["status"]["state"] != "attached":
        assert time.monotonic() < deadline, "the session did not attach"
        time.sleep(0.5)
    res = lab.load(vm, f"--op write --qd 4 --count {WRITES} --verify")
    assert res.rc == 0 and res.summary["verify"] == "ok", res.output[-300:]
    reads = res.summary["verify_reads"]

    labels = f'session="{sid}",vm="qspan-lab",disk="disk0"'
    written = wait_for(prom, f'qspan_requests_total{{{labels},op="write"}}', WRITES)
    read = wait_for(prom, f'qspan_requests_total{{{labels},op="read"}}', reads)
    assert (written, read) == (WRITES, reads)  # every guest request counted, once

    spans = server.get(f"/api/sessions/{sid}/spans?op=write&limit=20000", headers=auth)[1]
    assert len(spans) == WRITES
    durs = sorted(s["dur_ns"] for s in spans)
    ours = percentile(durs, 99)
    (p99,) = query(prom, f'histogram_quantile(0.99, sum by (le) (qspan_request_latency_seconds_bucket{{{labels},op="write"}}))')
    theirs = float(p99["value"][1])
    i = bisect_left([round(b * 1e9) for b in BUCKETS_S], ours)
    lo, hi = (BUCKETS_S[i - 1] if i else 0.0), (BUCKETS_S[i] if i < len(BUCKETS_S) else float("inf"))
    (output_dir / "prometheus-p99.json").write_text(json.dumps(
        {"qspan_p99_s": ours / 1e9, "prometheus_p99_s": theirs, "bucket": [lo, hi], "writes": WRITES, "reads": reads}))
    assert lo <= theirs <= hi, (ours / 1e9, theirs, lo, hi)

    # qspan's own health is there too, for the same session
    assert query(prom, f'qspan_lost_events_total{{session="{sid}"}}')[0]["value"][1] == "0"
    assert float(query(prom, f'qspan_probe_cost_estimate_seconds_per_request{{session="{sid}"}}')[0]["value"][1]) > 0
    assert query(prom, f'qspan_session_info{{session="{sid}",state="attached"}}')
    # and the phases add up to the latency, as the spans' do
    total = float(query(prom, f'sum(qspan_request_phase_seconds_total{{{labels},op="write"}})')[0]["value"][1])
    assert total == pytest.approx(sum(durs) / 1e9, rel=1e-6)
    # the queries docs/metrics.md shows run, and give an answer; their rate()s want two samples
    # of each series, and the writes' series may have come in one scrape (spans arrive in batches)
    deadline = time.monotonic() + 30
    while float((query(prom, f'count_over_time(qspan_requests_total{{{labels},op="write"}}[1m])') or
                 [{"value": [0, "0"]}])[0]["value"][1]) < 3:
        assert time.monotonic() < deadline, "Prometheus did not scrape three times in 30 s"
        time.sleep(0.5)
    for expr in documented_queries():
        assert query(prom, expr), expr
    # every scrape went through with the token (Prometheus' own view of its target)
    (target,) = targets(prom)
    assert target["health"] == "up" and not target["lastError"], (target, prom_log.read_text()[-2000:])
    server.request("DELETE", f"/api/sessions/{sid}", headers=auth)
