"""qspan's one pipeline: plan, run, correlate, document.

    plan(pid)              target -> catalogue -> profile -> program -> recording header
    record(plan, out)      bpftrace -> events (ring: their raw records) -> a recording file
    correlate(events, hdr) events -> spans, counters (and thread timelines on request)
    document(rec, corr)    the qspan.spans/1 document

The CLI, the live server (live/session.py), the benchmarks and the tests call
these; nothing else wires the stages together. I/O stays at the edges: `plan`
reads /proc and the ELF, `record` runs bpftrace and writes a file; correlating
and building documents are pure.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qspan import catalogue, program, runtime, target
from qspan.catalogue import Catalogue, Profile
from qspan.correlate import Correlator, Timeline, in_time_order
from qspan.errors import QspanError, TracerError
from qspan.model.events import Event, Lost
from qspan.model.spans import Span, span_dict
from qspan.output import document as spans_doc
from qspan.output.recording import Recording, make_header
from qspan.output.ringrecording import open_writer
from qspan.program import Program
from qspan.program import aggregate as aggregate_program
from qspan.target import Target
from qspan.transport.bpftrace import TraceResult, TraceSession, check_can_trace, stderr_errors

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class Plan:
    """Everything decided before a probe is attached: printable, nothing running yet."""

    target: Target
    catalogue: Catalogue
    profile: Profile
    program: Program
    header: dict  # the recording header: what makes the stream replayable


def plan(pid: int, profile: str | None = None, transport: str = program.DEFAULT_TRANSPORT, sites: bool = True,
         accounting: bool = False) -> Plan:
    """Inspect QEMU `pid` and generate its program (errors: TargetError, TracerError, CatalogueError).

    `sites`: probe inside functions where tracers/sites.txt knows the code (else entries only).
    `accounting`: also trace QEMU's own accounting interval of each request (req.acct).
    """
    t = target.inspect(pid)
    cat = catalogue.load()
    prof = program.choose_profile(cat, t, profile)
    opt_in = frozenset({"req.acct"} if accounting else ())
    prog = program.generate(cat, program.program_input(t, prof, cat, sites, opt_in), prof, transport)
    return Plan(t, cat, prof, prog, make_header(t, cat, prof, prog))


def check_sampling(sample_every: int, transport: str) -> None:
    """--sample-every N is 1 or more, and more than 1 only where windows open and close in BPF."""
    if sample_every < 1:
        raise QspanError(f"--sample-every must be 1 or more, not {sample_every}")
    if sample_every > 1 and not program.transport_module(transport).TRANSPORT.sampling:
        raise QspanError(f"--sample-every needs a transport with sampling windows (ring, maps), not {transport}")


def session(p: Plan, sample_every: int = 1) -> TraceSession:
    """A tracer for the plan, not yet started (TraceSession.run starts it)."""
    check_sampling(sample_every, p.program.transport.name)
    return TraceSession(p.program.text, p.target.pid, transport=p.program.transport, sample_every=sample_every,
                        sites=p.program.sites, watched=p.program.watched)


@contextmanager
def _sigint_stops(s: TraceSession) -> Iterator[None]:
    """Ctrl-C ends the trace early (and cleanly) when tracing runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: s.stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def record(p: Plan, out: Path, duration_s: float, sample_every: int = 1, progress: Progress = _quiet,
           on_attached: Callable[[], None] | None = None) -> TraceResult:
    """Trace for `duration_s` seconds into recording `out`; the recording ends with why tracing stopped.

    `on_attached`: called once every probe is attached.
    """
    check_can_trace()
    s = session(p, sample_every)
    sampled = f", one {program.WINDOW_MS} ms window in {sample_every}" if sample_every > 1 else ""
    # ring transport: a version-2 recording, the rings' bytes, decoded when read
    with _sigint_stops(s), open_writer(out, p.header, p.program.transport.name, p.program.text) as writer:
        progress(f"attaching {len(p.program.probes)} probes to QEMU {p.target.version} "
                 f"(PID {p.target.pid}, profile {p.profile.name}) ...")
        result = s.run(writer.line, duration_s, on_lines=writer.lines,
                       on_raw=writer.on_raw,
                       on_attached=lambda: _attached(progress, f"attached; tracing for {duration_s:g} s{sampled} "
                                                                       "(Ctrl-C stops)", on_attached))
        writer.end(result.summary())
    msg = f"{result.event_lines} events in {result.traced_s:.1f} s"
    if result.detach_s >= 1:
        msg += f" (then {result.detach_s:.1f} s for bpftrace to detach its probes)"
    if result.lost_events:
        msg += f", {result.lost_events} EVENTS LOST (spans touching them are marked incomplete)"
    progress(msg)
    for f in result.followed_threads:
        progress(f"iothread {f['name']} (tid {f['tid']}) appeared {f['at_s']:.1f} s into the trace: "
                 + ("watched from then on" if f["followed"] else f"NOT watched ({f['why']})"))
    return result


def _attached(progress: Progress, msg: str, then: Callable[[], None] | None) -> None:
    if then is not None:  # first: whoever waits for "attached" finds it done
        then()
    progress(msg)


def check_ended(result: TraceResult, pid: int, kept_in: Path) -> None:
    """A trace that ended because QEMU or bpftrace went away is an error, after its events were saved."""
    if result.reason == "qemu-exited":
        raise TracerError(f"QEMU PID {pid} exited during the trace; the {result.event_lines} events seen are saved in {kept_in}")
    if result.reason == "tracer-died":
        raise TracerError(f"bpftrace stopped unexpectedly: {stderr_errors(result.stderr)}; events so far are in {kept_in}")


@dataclass
class Correlation:
    """What the correlator made of a stream: spans in start order, its counters, timelines if asked."""

    spans: list[Span]
    stats: dict
    timelines: dict[int, Timeline] = field(default_factory=dict)  # span id -> its thread's timeline


def correlate(events: Iterable[Event | Lost], header: dict, timelines: bool = False) -> Correlation:
    """All spans of a finished event stream (sorted into time order first: per-CPU buffers interleave)."""
    c = Correlator(header, capture_timeline=timelines)
    with runtime.collector_paused():
        for ev in in_time_order(events):
            c.add(ev)
    captured = dict(c.timelines)
    result = c.finish()
    return Correlation(result.spans, result.stats, captured)


def correlate_recording(rec: Recording, timelines: bool = False) -> Correlation:
    return correlate([*rec.events, *rec.lost], rec.header, timelines)


def document(rec: Recording, corr: Correlation) -> dict:
    """The qspan.spans/1 document of a correlated recording."""
    return spans_doc.spans_document(rec.header, [span_dict(s) for s in corr.spans], corr.stats, rec.end or None,
                                    rec.truncated)


# -- aggregate-only mode --------------------------------------------------------


def aggregate_plan(pid: int, interval_s: int = 1) -> tuple[Target, str]:
    """The target and its aggregate-mode program (tracers/aggregate.txt)."""
    t = target.inspect(pid)
    return t, aggregate_program.generate(program.program_input(t), interval_s)


def aggregate_session(pid: int, text: str) -> TraceSession:
    """An aggregate program's session, to run where the caller likes (qspan aggregate --all: a thread per QEMU)."""
    return TraceSession(text, pid, transport=aggregate_program.TRANSPORT, all_lines=True)


def run_aggregate(pid: int, text: str, duration_s: float, on_line: Callable[[str], None],
                  on_attached: Callable[[], None] | None = None) -> TraceResult:
    """Run an aggregate program; `on_line` gets every line bpftrace prints (histograms and marks)."""
    check_can_trace()
    s = aggregate_session(pid, text)
    with _sigint_stops(s):
        return s.run(on_line, duration_s, on_attached=on_attached)
