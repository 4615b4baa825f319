"""End to end on real parts: Debian's QEMU (TCG), a real guest writing with
several requests in flight, real bpftrace attached by PID through the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import guest_clock_fit, guest_requests, require_tracing, run_qspan, tracer_pids
from qspanlab import lab
from qspanlab.harness import start_traced

pytestmark = pytest.mark.e2e
# The functions probed at a site inside them (tracers/sites.txt) on both Debian builds; the
# sites of qemu_coroutine_switch and aio_co_wake are not used: their events' site lines are.
PROBED_SITES = {"qemu_aio_coroutine_enter", "qemu_coroutine_yield", "aio_co_enter",
                "blk_aio_preadv", "blk_aio_pwritev", "blk_aio_flush"}
# A dtrace build has USDT probes for coroutine enter, yield and terminate (probes.txt's usdt
# lines): the switch sites are not needed there.
USDT_SWITCHES = ("qemu_aio_coroutine_enter", "qemu_coroutine_yield", "qemu_coroutine_terminate")


def probed_sites(vm) -> set[str]:
    return PROBED_SITES - set(USDT_SWITCHES) if vm.qemu == "7.2-dtrace" else PROBED_SITES


@pytest.fixture(scope="module", params=["7.2", "10.0", "7.2-dtrace"], ids=lambda v: f"qemu{v}")
def vm(request, tmp_path_factory):
    """A lab guest on Debian's QEMU 7.2, on 10.0 from bookworm-backports (unpacked, namespaced),
    and on 7.2 built with the dtrace trace backend (USDT probes, as Fedora and RHEL ship it; a full
    .symtab, few exported functions: lab/qemu-dtrace/build.sh)."""
    require_tracing()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d, qemu=request.param)
    yield info
    lab.down(d)


def _attach(pid: int, out: Path, duration: float) -> subprocess.Popen:
    # Returns once the probes are attached, so the guest's requests all fall inside the trace.
    return start_traced("attach", "--pid", str(pid), "--duration", str(duration), "--out", str(out))


def test_attach_spans_match_the_guest(vm, output_dir):
    out = output_dir / "e2e-spans.json"
    proc = _attach(vm.pid, out, duration=25)
    res = lab.load(vm, "--op write --qd 4 --count 1000 --verify --log")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    s = res.summary
    assert res.rc == 0 and s["verify"] == "ok" and s["errors"] == 0, res.output[-500:]
    guest = guest_requests(res.output)
    assert s["requests"] == 1000 and len(guest) == 1000

    doc = json.loads(out.read_text())
    assert doc["schema"] == "qspan.spans/1"
    assert doc["trace"]["end"]["lost_events"] == 0
    # The single-stepped entries were probed at their sites instead, and coroutine switches and
    # wake-ups where they are called for (tracers/sites.txt): the spans below are as complete with
    # a coroutine's end inferred, no hit for a wake-up outside coroutines nor for the pool handover.
    assert {s["function"] for s in doc["trace"]["probe_sites"]} == probed_sites(vm)
    spans = doc["spans"]
    writes = [x for x in spans if x["op"] == "write"]
    reads = [x for x in spans if x["op"] == "read"]
    assert len(writes) == s["requests"]  # all of them
    assert len(reads) == s["verify_reads"]
    assert {("write", x["offset"]) for x in writes} == set(guest)
    node_names = {n["node_name"] for n in doc["target"]["nodes"]}
    for x in spans:
        names = [p["name"] for p in x["phases"]]
        assert names in (["submit", "queue", "device", "handoff", "complete"],
                         ["kick", "submit", "queue", "device", "handoff", "complete"]), names
        assert sum(p["dur_ns"] for p in x["phases"]) == x["dur_ns"]
        assert x["complete"] and x["ack_ns"]
        assert {n["node"] for n in x["nodes"]} <= node_names  # names read off QEMU's memory match QMP
        (h,) = x["handoffs"]
        assert sum(h["instead_ns"].values()) == h["delay_ns"]

    # A span (the guest's kick to QEMU's ack) lies inside the guest's own timing of the request,
    # but the guest times with its own clock: under TCG its TSC, at the rate its kernel calibrated
    # at boot. That rate against the host's is measured in this very run, from each write's start
    # on both clocks (a least-squares fit over the 1,000), and the guest's latency converted
    # with it; what is left is the guest's own path to the kick and from the ack.
    # Measured (two runs on each build, this machine): 0.9982-0.9998 host ns a guest ns (the
    # guest's clock 0.02-0.18 % fast, boot to boot), and at least 40-53 us left for every write. One CI run
    # before this fit had one span of 1,000 1.7 us over the guest's raw latency, not seen since:
    # at most one such span is let pass (and printed); a misattributed kick or a late ack
    # would show as many, and by far more.
    rate, resid_p99_ns, pairs = guest_clock_fit(writes, res.output)
    headroom = sorted((rate * guest[("write", x["offset"])] - x["dur_ns"], x["id"]) for x in writes)
    (output_dir / f"guest-clock-{vm.qemu}.json").write_text(json.dumps(
        {"host_ns_per_guest_ns": rate, "start_residual_p99_ns": resid_p99_ns, "pairs": pairs,
         "headroom_ns_min": headroom[0][0], "headroom_ns_p1": headroom[len(headroom) // 100][0]}))
    assert pairs == len(writes) and 0.995 < rate < 1.005, (pairs, rate)
    over = [(sid, round(-h)) for h, sid in headroom if h < 0]
    print(f"{vm.qemu}: guest clock {rate:.6f} host ns a guest ns; spans over the guest's latency: {over}")
    assert len(over) <= 1, over

    # QEMU and its guest are unharmed once the tracer has detached.
    assert lab.status(Path(vm.dir)) is not None
    again = lab.load(vm, "--op write --qd 2 --count 50 --verify")
    assert again.rc == 0 and again.summary["verify"] == "ok"


@pytest.mark.parametrize("transport", ["ring", "maps", "printf"])
def test_record_then_replay_gives_the_same_spans(vm, tmp_path, transport):
    rec = tmp_path / "t.qspan"
    proc = start_traced("record", "--pid", str(vm.pid), "--duration", "12", "--out", str(rec), "--transport", transport)
    res = lab.load(vm, "--op read --qd 4 --count 200")
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    out = tmp_path / "s.json"
    r = run_qspan("spans", str(rec), "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["trace"]["end"]["lost_events"] == 0
    assert len([x for x in doc["spans"] if x["op"] == "read"]) == res.summary["requests"] == 200
    # the ring transport keeps the rings' bytes (version 2); the others write text
    version = b"2" if transport == "ring" else b"1"
    assert rec.read_bytes().startswith(b"#qspan-recording " + version + b"\n")
    # The trace lasts what was asked, bpftrace's exit apart (it detaches its probes one by one:
    # ~3 s here). The runner looks at the clock at least every 200 ms (a recording's ring
    # poll; printf and maps 100 ms): a bound of 1 s is five times that.
    end = doc["trace"]["end"]
    assert 12 <= end["traced_s"] < 13 and end["detach_s"] >= 0, end


def test_qemu_exiting_mid_trace_is_reported_and_keeps_the_events(tmp_path):
    require_tracing()
    d = tmp_path / "lab2"
    info = lab.up(d)
    try:
        rec = tmp_path / "dying.qspan"
        proc = start_traced("record", "--pid", str(info.pid), "--duration", "60", "--out", str(rec))
        lab.send_command(info, "load --op write --qd 2 --duration 30")
        time.sleep(3)
        os.kill(info.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        lab.down(d)
    assert proc.returncode != 0
    assert f"QEMU PID {info.pid} exited during the trace" in err and "Traceback" not in err
    from qspan.output import recording
    r = recording.read(rec)  # complete, with an #end line saying why
    assert r.end["reason"] == "qemu-exited" and len(r.events) > 0


def test_crosscheck_bins_every_request_where_qemu_s_own_histogram_does(vm, output_dir):
    """QEMU's latency histogram (block-latency-histogram-set, query-blockstats) and qspan over
    the same guest writes: every request QEMU counted is a span carrying QEMU's interval, and
    binned with the end QEMU's clock read, none lands in another bin (measured: 0 of 2,000 on
    7.2 and 10.0; the issue's target is 5 %). Ended at the probe instead, the probe's own return
    (0.8 us p50 measured) moved 1.5-5.2 % across the lab's dense 20 us boundary."""
    out = output_dir / f"crosscheck-{vm.qemu}.json"
    proc = start_traced("crosscheck", "--pid", str(vm.pid), "--duration", "20", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 1000")
    printed, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["errors"] == 0, res.output[-500:]
    rep = json.loads(out.read_text())
    ((dev, ops),) = rep["devices"].items()
    w = ops["write"]
    assert w["qemu_requests"] == w["qspan_requests"] == 1000, w
    assert w["without_accounting"] == 0
    assert w["exact_ends"] >= 999  # all but the device's last: its end is read at the next one
    # A request with QEMU's own end is binned exactly where QEMU put it; the device's last one
    # (its end estimated: output/crosscheck.compare) may still move, by the lateness's jitter
    # (p50 0.8, p99 1.2 us measured): once at the probe alone, 1 of 1,000 in CI (10.0).
    assert w["acct_moved"] <= w["qspan_requests"] - w["exact_ends"], (w["qemu_bins"], w["acct_bins"])
    # The stats' last_access_time_ns offset is right: QEMU's end reads fall just after the probe.
    late = rep["probe_late"]
    assert late["requests"] >= 999 and 0 < late["p50_ns"] < 20_000, late
    assert f"{dev} write: QEMU counted 1000" in printed


def test_ps_lists_the_lab_qemu(vm):
    r = run_qspan("ps")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[:1] == [str(vm.pid)])
    version, _, build = vm.qemu.partition("-")
    assert f" {version}." in line and ("usdt" if build == "dtrace" else "uprobe") in line and vm.qmp in line


def test_tracer_print_shows_the_program_for_the_pid(vm):
    r = run_qspan("tracer", "--pid", str(vm.pid), "--print")
    assert r.returncode == 0
    assert r.stdout.startswith("// generated by qspan")
    # the iothread is watched from attach on: its tid is in the program's map of watched threads
    iothreads = [t for t in json.loads(run_qspan("inspect", "--pid", str(vm.pid)).stdout)["threads"] if t["role"] == "iothread"]
    assert iothreads and f"@qspan_watch[(uint64){iothreads[0]['tid']}] = 1;" in r.stdout
    if vm.qemu == "7.2-dtrace":
        # coroutine events from QEMU's own USDT probes, attached by PID; no switch site, no uprobe
        # on the switch; the rest by name from .symtab (this build exports few functions)
        for name in (*USDT_SWITCHES, "aio_co_schedule"):
            assert re.search(rf"^usdt:/proc/{vm.pid}/root/\S+/qemu-system-x86_64:qemu:{name} ", r.stdout, re.M), name
        assert "in qemu_aio_coroutine_enter" not in r.stdout and ":qemu_coroutine_switch " not in r.stdout
        assert re.search(rf"^uprobe:/proc/{vm.pid}/root/\S+/qemu-system-x86_64:virtqueue_push ", r.stdout, re.M)
        return
    assert f"/proc/{vm.pid}/root/" in r.stdout and "/usr/bin/qemu-system-x86_64:aio_co_schedule" in r.stdout
    # the switch is probed at its site inside the function, through the anchor (tracers/sites.txt)
    # switches are probed where they are called (inside the loop of qemu_aio_coroutine_enter, and
    # qemu_coroutine_yield's tail call), through the anchor (tracers/sites.txt)
    assert re.search(r"\(\+0xb[68] in qemu_aio_coroutine_enter, emulated; attached there by qspan\)", r.stdout)
    assert "(+0x6a in qemu_coroutine_yield, emulated; attached there by qspan)" in r.stdout
    assert ":qemu_coroutine_switch " not in r.stdout
    off = run_qspan("tracer", "--pid", str(vm.pid), "--print", "--probe-sites", "off")
    assert off.returncode == 0 and "/usr/bin/qemu-system-x86_64:qemu_coroutine_switch /" in off.stdout


def test_other_qemus_running_the_same_binary_are_not_traced(tmp_path, output_dir):
    """Two lab QEMUs on one binary: tracing A sees A's requests only (uprobes attached with -p)."""
    require_tracing()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = lab.up(a_dir)
    try:
        b = lab.up(b_dir)
        try:
            out = tmp_path / "a.json"
            proc = _attach(a.pid, out, duration=15)
            b_cmd = lab.send_command(b, "load --op write --qd 4 --count 300")
            ra = lab.load(a, "--op write --qd 2 --count 40")
            lab.wait_command(b, *b_cmd, timeout_s=120)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        finally:
            lab.down(b_dir)
    finally:
        lab.down(a_dir)
    spans = json.loads(out.read_text())["spans"]
    assert ra.summary["requests"] == 40
    assert len([x for x in spans if x["op"] == "write"]) == 40


def test_aggregate_mode_counts_every_guest_write(vm, tmp_path):
    """Two probe hits per request, histograms in BPF: the count equals the guest's, latency within the guest's."""
    out = tmp_path / "agg.json"
    proc = start_traced("aggregate", "--pid", str(vm.pid), "--duration", "15", "--out", str(out))
    res = lab.load(vm, "--op write --qd 4 --count 400 --log")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out.read_text())
    total = doc["total"]["write"]
    assert total["requests"] == res.summary["requests"] == 400
    assert doc["end"]["reason"] == "duration"
    # host-side latency (first block node -> ack) is part of what the guest measured
    guest_p50_us = sorted(guest_requests(res.output).values())[200] / 1000
    assert 0 < total["p50_us"] <= guest_p50_us + 10, (total, guest_p50_us)


def test_print_program_shows_what_each_command_would_attach_and_attaches_nothing(vm):
    shown = run_qspan("tracer", "--pid", str(vm.pid), "--print")
    assert shown.returncode == 0, shown.stderr
    for cmd in ("record", "attach"):
        r = run_qspan(cmd, "--pid", str(vm.pid), "--print-program", timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == shown.stdout, f"{cmd} --print-program differs from tracer --print"
        assert "attach" not in r.stderr  # nothing was attached, no "attaching ..." progress
    agg = run_qspan("aggregate", "--pid", str(vm.pid), "--print-program", timeout=60)
    assert agg.returncode == 0 and "aggregate-only mode" in agg.stdout and "uprobe:" in agg.stdout, agg.stderr
    # without --print-program, record needs somewhere to write
    r = run_qspan("record", "--pid", str(vm.pid), timeout=60)
    assert r.returncode != 0 and "--out is required" in r.stderr


def _site_bytes(pid: int) -> dict[str, int]:
    """The byte at each probe site in QEMU's memory: the site's opcode, or int3 (0xcc) while probed."""
    from qspan import catalogue
    from qspan.program import sites
    from qspan.target.elf import function_code

    exe = f"/proc/{pid}/exe"
    patterns = catalogue.load().sites
    found = sites.resolve(patterns, function_code(exe, set(patterns)))
    inode = os.stat(exe).st_ino
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and int(parts[4]) == inode:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append((lo, hi, int(parts[2], 16)))
    out = {}
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for name, site in found.items():
            (addr,) = [lo + site.file_offset - off for lo, hi, off in maps if off <= site.file_offset < off + hi - lo]
            mem.seek(addr)
            out[name] = mem.read(1)[0]
    return out


def test_probe_sites_patch_qemu_only_while_traced_even_when_qspan_is_killed(vm):
    """The kernel puts an int3 at each site while qspan traces; the code is QEMU's own again
    when the trace ends, and when qspan is killed (its perf events close with it)."""
    before = _site_bytes(vm.pid)
    assert before and 0xCC not in before.values(), before
    tracers_before = tracer_pids()
    for how in ("duration", "SIGKILL"):
        proc = start_traced("record", "--pid", str(vm.pid), "--duration", "4" if how == "duration" else "600",
                            "--out", os.devnull)
        probed = {f for f, b in _site_bytes(vm.pid).items() if b == 0xCC}
        assert probed == probed_sites(vm)  # every site the program uses, and only those
        if how == "SIGKILL":
            proc.kill()
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _site_bytes(vm.pid) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _site_bytes(vm.pid) == before, how
        while tracer_pids() - tracers_before and time.monotonic() < deadline:
            time.sleep(0.1)  # a bpftrace left without qspan dies on its next write to the closed pipe
        assert not tracer_pids() - tracers_before, how
    res = lab.load(vm, "--op write --qd 4 --count 200 --verify")  # and the guest's I/O is unharmed
    assert res.rc == 0 and res.summary["verify"] == "ok" and res.summary["errors"] == 0


def test_doctor_says_how_every_event_would_be_observed(vm):
    r = run_qspan("doctor", "--pid", str(vm.pid))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: traceable, every event" in r.stdout
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.startswith("  ok    ") and "." in ln.split()[1]}
    assert {"co.switch", "req.submit", "req.ack", "node.io", "sched.switch"} <= set(lines), r.stdout
    # the opt-in QEMU accounting, at its site (the tail jump), and said to be opt-in
    assert "block_acct_done +0x2 (emulated)" in lines["req.acct"] and "opt-in" in lines["req.acct"], r.stdout
    if vm.qemu == "7.2-dtrace":
        assert "usdt:qemu_aio_coroutine_enter" in lines["co.switch"]
        assert re.search(r"43 exported functions \(\.dynsym\), [\d,]+ functions in \.symtab", r.stdout)
        assert re.search(r"[\d,]+ qemu USDT probes", r.stdout)
    else:
        assert "site:qemu_aio_coroutine_enter +0x" in lines["co.switch"]
        assert "no .symtab (stripped)" in r.stdout and "no qemu USDT probes" in r.stdout


def test_doctor_explains_a_build_it_cannot_trace(tmp_path):
    """The dtrace build stripped of .symtab and of its USDT notes: a QEMU with nothing qspan can
    follow requests by. doctor says so, why, and which builds would work; and a PID that is no
    QEMU is told apart."""
    require_tracing()
    bare = tmp_path / "qemu-system-x86_64"
    shutil.copy(lab.build_qemu_dtrace(), bare)
    subprocess.run(["strip", "-s", "--remove-section=.note.stapsdt", str(bare)], check=True)
    proc = subprocess.Popen([str(bare), "-accel", "tcg", "-display", "none", "-nodefaults", "-S",
                             "-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
    try:
        time.sleep(1)
        assert proc.poll() is None
        r = run_qspan("doctor", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 1
    assert "no .symtab (stripped)" in r.stdout and "no qemu USDT probes" in r.stdout
    assert "verdict: cannot trace:" in r.stdout and "no qemu_coroutine_switch in its symbol tables" in r.stdout
    assert "what would work instead:" in r.stdout and "--enable-trace-backends=dtrace" in r.stdout
    other = run_qspan("doctor", "--pid", str(os.getpid()))
    assert other.returncode == 1 and "is not QEMU" in other.stdout and "what would work" not in other.stdout
