"""Live path benchmark: freshness (QEMU -> browser) and server memory over a long run.

Boots the lab, starts `qspan serve`, attaches through the API and drives the
guest with steady writes (full rate unless --rate), while a WebSocket client
reads every frame and the server's RSS is sampled. Prints:

- freshness: for every span completed during the run, the time from its end
  in QEMU (the ack, a CLOCK_MONOTONIC timestamp taken by the probe) to the
  first WebSocket frame that covers it (frames carry the newest span's end;
  spans are stored in end order), received at CLOCK_MONOTONIC too: p50, p90,
  p99, max;
- memory: server RSS every --sample-s seconds, and its growth after the
  warm-up (the span store fills within seconds; per-second rows over 10 min);
- events/s, spans, lost events, the tracer's own estimate of its cost, and
  qspan's own CPU as the server measures it (status `tracer_cpu`);
- CPU over the run in cores: QEMU, the server, bpftrace and what stayed idle
  (on a 2-core machine whatever QEMU leaves is all the live path can use);
- sampling: the factor the server chose (one window in N traced) and the
  lost-event count over the run, and the requests cut by closing windows.
- a WARNING when no new span came for 10 s or more: the guest stopped writing,
  and what follows is not a full-rate figure.

    .venv/bin/python bench/live.py [--duration 60] [--rate 0] [--scenario stock]
    .venv/bin/python bench/live.py --duration 90 --freshness-from-s 30 --freshness-s 60   # full rate, sampling settled
    .venv/bin/python bench/live.py --duration 1800 --sample-s 30     # the 30-minute memory run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parents[1]

from qspanlab import lab  # noqa: E402
from qspanlab.harness import ServerProcess  # noqa: E402
from qspan.output.report import percentile  # noqa: E402
from qspan.target import process_cpu_s  # noqa: E402
from qspan.transport.rings import bpftrace_clock_ns  # noqa: E402


def api(server: ServerProcess, method: str, path: str, body: dict | None = None):
    status, answer = server.request(method, path, body)
    if status >= 400:
        raise RuntimeError(f"{method} {path}: HTTP {status}: {answer}")
    return answer


def span_ends(path: Path, from_s: float, to_s: float) -> set[int]:
    """End times of the spans that end from `from_s` to `to_s` seconds into a session's recording.

    The same correlator as the server's, offline: the server's store keeps only
    the newest spans, and fetching them all while measuring would load the server.
    """
    from qspan import pipeline
    from qspan.correlate import in_time_order
    from qspan.model.events import Event
    from qspan.output import recording

    rec = recording.read(path, allow_truncated=True)  # either version: the ring transport's is binary
    events = [ev for ev in in_time_order([*rec.events, *rec.lost]) if type(ev) is Event]
    if not events:
        return set()
    t0 = events[0].ts_ns
    events = [ev for ev in events if ev.ts_ns - t0 <= to_s * 1e9]
    return {s.end_ns for s in pipeline.correlate(events, rec.header).spans if s.end_ns >= t0 + from_s * 1e9}


def idle_s() -> float:
    """Idle CPU seconds of the whole machine so far (idle and iowait, all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them (the server starts
    bpftrace from a worker thread: its main thread's children list alone is empty)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="seconds of tracing (default %(default)s)")
    ap.add_argument("--rate", type=int, default=0, help="guest writes/s (0: as fast as it can)")
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--scenario", default="stock", choices=lab.SCENARIOS)
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured after this")
    ap.add_argument("--freshness-s", type=float, default=15.0, help="freshness is measured over this many seconds")
    ap.add_argument("--freshness-from-s", type=float, default=0.0,
                    help="... starting this long into the trace (e.g. once sampling has settled)")
    ap.add_argument("--sampling", default="auto", choices=("auto", "off"), help="the server's --sampling")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qspan-bench-live-"))
    info = lab.up(tmp / "lab", scenario=args.scenario)
    server = ServerProcess("--sampling", args.sampling)
    port = server.port
    frames: list[tuple[int, int | None]] = []  # (received monotonic ns, newest span end ns)
    # (s into the run, lost events, sampling factor, sampled out, server's lag ms, busy fraction)
    health: list[tuple[float, int, int, int, float, float]] = []
    progress: list[tuple[float, int]] = []  # (s into the run, spans so far): the guest must keep writing
    ends: set[int] = set()
    rss: list[tuple[float, int]] = []
    status: dict = {}
    cpu_start: tuple[float, ...] = ()
    cpu_end: tuple[float, ...] = ()
    try:
        server.wait_ready()
        sid = server.attach(info.pid)
        load = f"loop --op write --qd {args.qd} --duration 10" + (f" --rate {args.rate}" if args.rate else "")
        lab.send_command(info, load)
        t_start = time.monotonic()
        print(f"tracing QEMU {info.pid} for {args.duration} s; guest: {load}", file=sys.stderr)

        async def reader():
            async with websockets.connect(f"ws://127.0.0.1:{port}/api/sessions/{sid}/live", max_size=None) as ws:
                while time.monotonic() - t_start < args.duration:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    now = bpftrace_clock_ns()  # span ends are stamped on bpftrace's clock
                    if msg["type"] == "frame":
                        st = msg["status"]
                        frames.append((now, st["newest_end_ns"]))
                        smp = st.get("sampling") or {}
                        health.append((time.monotonic() - t_start, st["lost_events"], smp.get("every", 1),
                                       smp.get("sampled_out", 0), smp.get("lag_ms", 0.0), smp.get("busy", 0.0)))
                        if not progress or health[-1][0] - progress[-1][0] >= 1:
                            progress.append((health[-1][0], st["spans"]))

        async def sample():
            next_report = 60.0
            while time.monotonic() - t_start < args.duration:
                rss.append((time.monotonic() - t_start, server.rss_kib()))
                if rss[-1][0] >= next_report:
                    print(f"  {rss[-1][0]:.0f} s: server RSS {rss[-1][1] / 1024:.1f} MiB, {len(frames)} frames",
                          file=sys.stderr)
                    next_report += 60
                await asyncio.sleep(args.sample_s)

        async def run():
            await asyncio.gather(reader(), sample())

        def cpu_now() -> tuple[float, ...]:
            tracer = children(server.proc.pid)  # bpftrace (and setpriv before it execs)
            return (time.monotonic(), process_cpu_s(info.pid), process_cpu_s(server.proc.pid),
                    sum(process_cpu_s(c) for c in tracer), idle_s())

        cpu_start = cpu_now()
        asyncio.run(run())
        cpu_end = cpu_now()
        status = api(server, "GET", f"/api/sessions/{sid}")["status"]
        lab.send_command(info, "stop")
        api(server, "DELETE", f"/api/sessions/{sid}")
        while api(server, "GET", f"/api/sessions/{sid}")["status"]["state"] not in ("detached", "failed"):
            time.sleep(0.5)
        ends = span_ends(Path(status["recording"]), args.freshness_from_s, args.freshness_from_s + args.freshness_s)
    finally:
        server.stop()
        lab.down(tmp / "lab")
        shutil.rmtree(tmp, ignore_errors=True)
        if status.get("recording"):  # the session's recording: ~5 MB/s at full rate, the benchmark's own
            Path(status["recording"]).unlink(missing_ok=True)

    # freshness: each span's end -> the first frame whose newest end covers it
    seen = [(t, e) for t, e in frames if e is not None]
    lags = []
    j = 0
    for end in sorted(ends):
        while j < len(seen) and seen[j][1] < end:
            j += 1
        if j == len(seen):
            break
        lags.append((seen[j][0] - end) / 1e6)
    lags.sort()
    print(f"live path: {args.duration} s of tracing, guest writes qd {args.qd} "
          f"{'at ' + str(args.rate) + '/s' if args.rate else 'at full rate'}, {args.scenario} lab")
    print(f"correlator in the server: {status.get('correlator')}; its collector's pauses: {status.get('collector')}")
    print(f"frames received: {len(frames)} ({len(frames) / args.duration:.1f}/s); spans seen: {len(ends)}; "
          f"events/s at the end: {status.get('events_per_s')}; lost events: {status.get('lost_events')}")
    if lags:
        print(f"freshness ({args.freshness_from_s:g}-{args.freshness_from_s + args.freshness_s:g} s into the trace; "
              f"span end in QEMU -> frame in the client), ms: p50 {percentile(lags, 50):.0f}, "
              f"p90 {percentile(lags, 90):.0f}, p99 {percentile(lags, 99):.0f}, max {lags[-1]:.0f} ({len(lags)} spans)")
    newest = sorted((t - e) / 1e6 for t, e in seen)
    if newest:
        print(f"  of which pipeline (newest span in each frame -> the client), ms: p50 {percentile(newest, 50):.0f}, "
              f"p99 {percentile(newest, 99):.0f}; the rest is waiting for the next frame")
    if cpu_start:
        # Where the two cores went: what is left for the server is what the live path can use.
        wall = cpu_end[0] - cpu_start[0]
        qemu, srv, bpf, idle = ((b - a) / wall for a, b in zip(cpu_start[1:], cpu_end[1:]))
        print(f"CPU over the run, in cores of {os.cpu_count()}: QEMU {qemu:.2f}, qspan server {srv:.2f}, "
              f"bpftrace {bpf:.2f}, idle {idle:.2f}")
    if health:
        marks = [h for i, h in enumerate(health) if i % max(1, len(health) // 10) == 0] + [health[-1]]
        print(f"sampling ({args.sampling}): one {status.get('sampling', {}).get('window_ms')} ms window in N traced; "
              "N, lost events, the server's lag (what made it sample: > 400 ms) and busy share over the run: "
              + ", ".join(f"{t:.0f}s N={n} lost={lost} lag={lag:.0f}ms busy={busy:.2f}"
                          for t, lost, n, _, lag, busy in marks)
              + f"; requests cut by closing windows: {health[-1][3]}")
    # A run where the guest stopped writing measures nothing at full rate: say so.
    # Sampled runs see whole windows only, so allow a few seconds without spans.
    quiet = [(a[0], b[0]) for a, b in zip(progress, progress[1:]) if b[1] == a[1]]
    stalls, start, last = [], None, None
    for a, b in quiet:
        if start is None or a > last + 1.5:
            if start is not None and last - start >= 10:
                stalls.append((start, last))
            start = a
        last = b
    if start is not None and last - start >= 10:
        stalls.append((start, last))
    for a, b in stalls:
        print(f"WARNING: no new span from {a:.0f} s to {b:.0f} s into the run: the guest's writes stopped; "
              "figures after that are not at full rate")
    o = status.get("overhead") or {}
    print(f"tracer's own estimate: {o.get('est_us_per_request')} us of probe cost per request, "
          f"{o.get('events_per_request')} events per request")
    own = status.get("tracer_cpu") or {}
    print(f"qspan's own CPU as the server measured it: {own.get('us_per_request')} us per request, "
          f"{own.get('cores')} cores (server {own.get('server_cpu_s')} s, bpftrace {own.get('bpftrace_cpu_s')} s)")
    warm = [(t, k) for t, k in rss if t >= args.warmup_s]
    print("server RSS MiB: " + ", ".join(f"{t:.0f}s {k / 1024:.1f}" for t, k in rss[:: max(1, len(rss) // 12)]))
    if len(warm) >= 2:
        lo, hi = min(k for _, k in warm), max(k for _, k in warm)
        print(f"after {args.warmup_s:.0f} s: min {lo / 1024:.1f} MiB, max {hi / 1024:.1f} MiB, "
              f"last {warm[-1][1] / 1024:.1f} MiB; spread {100 * (hi - lo) / lo:.1f}% of the minimum")


if __name__ == "__main__":
    main()
