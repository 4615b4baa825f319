"""Transport "printf": each probe prints its event as it happens.

One perf-buffer write and a wake-up of bpftrace's reader per event: ~10x the
cost of a map store (tracers/costs.txt). Kept for debugging and for kernels
without batched map reads. No sampling windows.
"""

from __future__ import annotations

from qspan.catalogue import Catalogue, EventSpec, ProbeSpec
from qspan.program.model import Transport
from qspan.program.probes import BEGIN_MARK

TRANSPORT = Transport("printf", batched=False, sampling=False)
HEADER = "// transport printf: CODE TS_NS TID ARG0 ARG1 ARG2 ARG3 (decimal), one line per event"


def begin(watch: str) -> str:
    return f'BEGIN {{ printf("{BEGIN_MARK}\\n"); {watch} }}'


def store(p: ProbeSpec, spec: EventSpec) -> str:
    return f'printf("{spec.code} %llu %d %lld %lld %lld %lld\\n", nsecs, tid, {", ".join(p.args)});'


def end(cat: Catalogue, named: bool) -> list[str]:
    return ["END { clear(@qspan_named); }"] if named else []
