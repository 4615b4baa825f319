"""What the dashboard costs the browser beside a guest at full rate: long tasks and chart redraws.

Boots the lab with two disks, attaches through the API, drives both disks at the guest's full
rate and opens the dashboard in Debian's headless Chromium (1500x1100, the page at its top: the
charts a user sees first). Over --seconds it reads from the page:

- long tasks (the browser's own Long Tasks API, >= 50 ms of the main thread): how many, p50,
  p90 and the longest, over the stretch and over its steady half (after the view is changed
  half way: the whole VM, the last 10 minutes);
- each chart's redraw (frontend/views.js draws one chart per task and keeps their times in
  `drawCost`): median, p90 and longest per chart;
- CPU over the stretch in cores: QEMU, the server, bpftrace, Chromium (all its processes),
  what stayed idle (idle and iowait, as bench/live.py counts it). On a 2-core machine with a TCG guest the browser gets what is left.

Then the lab is stopped and the same page redraws the same charts with the machine idle: the
ratio of the two is what contention adds. One run, the figures of one machine.

With --browser-nice -10 Chromium gets a larger share of the CPU, as a browser on a machine of
its own would have (the test suite does not do this: see README, "The dashboard"). The kernel's
autogroups share the CPU between sessions first and Playwright starts Chromium in sessions of
its own, so a thread's nice counts only within its session: what is set is the nice of
Chromium's autogroups (/proc/PID/autogroup; `nice -n -10 chromium` changed nothing).

With --trace FILE, Chromium also writes a trace of the stretch (open it in Perfetto's UI) and
the long tasks are taken apart (bench/browser_trace.py): the main thread's CPU time in them
against their wall time (the rest it waited for a core), their time by kind (script, style
and layout, paint, GC) and the charts drawn in them. Tracing costs the page a little itself.

    .venv/bin/python bench/dashboard.py [--seconds 40] [--browser-nice 0] [--trace /tmp/dashboard-trace.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser_trace  # noqa: E402
from live import children, idle_s  # noqa: E402
from qspan.output.report import percentile  # noqa: E402
from qspan.target import process_cpu_s  # noqa: E402
from qspanlab import lab  # noqa: E402
from qspanlab.harness import CHROMIUM, CHROMIUM_FLAGS, ServerProcess  # noqa: E402

LONG_TASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, dur: e.duration });
}).observe({ type: "longtask", buffered: true });
"""
LOADS = ["loop --dev /dev/vda --op write --qd 4 --duration {s}", "loop --dev /dev/vdb --op write --qd 2 --duration {s}",
         "loop --dev /dev/vdb --op read --qd 1 --duration {s}"]


def chromium_pids() -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/exe").startswith("/usr/lib/chromium/"):
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def describe_tasks(what: str, tasks: list[dict]) -> None:
    d = sorted(t["dur"] for t in tasks)
    print(f"  long tasks {what}: {len(d)}" + (f", p50 {percentile(d, 50):.0f} ms, p90 {percentile(d, 90):.0f} ms, longest {d[-1]:.0f} ms,"
                                              f" {sum(x > 100 for x in d)} over 100 ms" if d else ""))


def describe_draws(what: str, recent: list) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for chart, ms in recent:
        by.setdefault(chart, []).append(ms)
    print(f"  chart redraws {what} (ms: median / p90 / longest, of n):")
    for chart, ms in by.items():
        ms.sort()
        print(f"    {chart:13s} {statistics.median(ms):6.1f} / {percentile(ms, 90):6.1f} / {ms[-1]:6.1f}   of {len(ms)}")
    return {chart: statistics.median(ms) for chart, ms in by.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=40, help="the stretch at full rate (default 40)")
    ap.add_argument("--browser-nice", type=int, default=0, help="set the nice of Chromium's autogroups to N (default 0)")
    ap.add_argument("--trace", type=Path, help="write a Chrome trace of the stretch there and take the long tasks apart")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qspan-bench-dashboard-"))
    print(f"booting the two-disk lab in {tmp} ...", flush=True)
    info = lab.up(tmp / "lab", setup="two-disks", name="bench-dashboard")
    server = ServerProcess().wait_ready()
    try:
        sid = server.attach(info.pid)
        for cmd in LOADS:
            lab.send_command(info, cmd.format(s=int(args.seconds + 120)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            if args.browser_nice:
                # the autogroups' nice, not the threads' (see the top of this file)
                for pid in chromium_pids():
                    try:
                        Path(f"/proc/{pid}/autogroup").write_text(str(args.browser_nice))
                    except OSError as err:
                        print(f"cannot set the autogroup nice of Chromium's PID {pid}: {err}", file=sys.stderr)
                print("Chromium's autogroups: " + ", ".join(sorted({Path(f"/proc/{pid}/autogroup").read_text().strip()
                                                                   for pid in chromium_pids()})), flush=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.add_init_script(LONG_TASKS)
            page.goto(server.base + "/")
            page.wait_for_function("chartsFrame && chartsFrame.charts && chartsFrame.charts.t_s.length >= 5"
                                   " && chartsFrame.charts.groups.length === 2", timeout=180_000)
            page.click("#viewbar .windows button[data-window='60']")
            time.sleep(3)
            print(f"attached (session {sid}); measuring {args.seconds:.0f} s at full rate, the view changed half way",
                  flush=True)
            browsers, tracers = chromium_pids(), children(server.proc.pid)  # bpftrace, as bench/live.py finds it

            def cpu_now() -> tuple[float, ...]:
                return (time.monotonic(), process_cpu_s(info.pid), process_cpu_s(server.proc.pid),
                        sum(process_cpu_s(t) for t in tracers), sum(process_cpu_s(c) for c in browsers), idle_s())

            def requests_now() -> int:  # the guest's requests, as the session counted them (sampling aside)
                return server.request("GET", f"/api/sessions/{sid}")[1]["status"]["spans"]
            first_requests = requests_now()
            if args.trace:
                browser.start_tracing(page=page, categories=browser_trace.CATEGORIES)
            before = cpu_now()
            mark = page.evaluate("drawCost.recent = []; performance.now()")
            time.sleep(args.seconds / 2)
            page.select_option("#scope", "all")
            page.click("#viewbar .windows button[data-window='600']")
            half = page.evaluate("performance.now()")
            time.sleep(args.seconds / 2)
            after = cpu_now()
            wall = after[0] - before[0]
            rate = (requests_now() - first_requests) / wall
            trace = browser.stop_tracing() if args.trace else None
            tasks = page.evaluate(f"window.__longtasks.filter((t) => t.start >= {mark})")
            loaded = page.evaluate("drawCost.recent")
            cores = [(b - a) / wall for a, b in zip(before[1:], after[1:])]
            print(f"at full rate ({rate:.0f} requests/s traced), {wall:.0f} s, 1500x1100, page at its top:")
            describe_tasks("over the stretch", tasks)
            describe_tasks("after the view change", [t for t in tasks if t["start"] >= half + 5000])
            busy = describe_draws("at full rate", loaded)
            print(f"  CPU in cores: QEMU {cores[0]:.2f}, the server {cores[1]:.2f}, bpftrace {cores[2]:.2f},"
                  f" Chromium {cores[3]:.2f}, idle {cores[4]:.2f}")
            if trace is not None:
                args.trace.write_bytes(trace)
                events = json.loads(trace)
                events = events["traceEvents"] if isinstance(events, dict) else events
                print(f"  the trace ({len(trace) >> 20} MiB, {args.trace}):")
                for line in browser_trace.summary(browser_trace.long_tasks(events)):
                    print(f"    {line}")

            lab.send_command(info, "stop")
            server.request("DELETE", f"/api/sessions/{sid}")
            lab.down(tmp / "lab")
            time.sleep(2)
            page.evaluate("drawCost.recent = []; null")
            for _ in range(10):
                page.evaluate("redrawCharts(); null")
                page.wait_for_function("!drawing")
                time.sleep(0.3)
            idle = describe_draws("with the machine idle (the lab stopped)", page.evaluate("drawCost.recent"))
            ratios = [busy[c] / idle[c] for c in busy if c in idle and idle[c] > 0]
            if ratios:
                print(f"  contention: a redraw's median at full rate is {statistics.median(ratios):.1f}x its idle one")
            browser.close()
    finally:
        server.stop()
        lab.down(tmp / "lab")


if __name__ == "__main__":
    main()
