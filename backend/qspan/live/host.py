"""The host view's numbers for one VM: request rate and per-disk, per-op percentiles over a
recent window of its spans (pure; server/host.py gathers the VMs)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from qspan.model.spans import Span, span_group
from qspan.output.report import percentile


def vm_summary(spans: Iterable[Span], disk_of: Callable[[Span], str], window_s: float) -> dict:
    """Spans that ended within the window: requests per second, and per disk and op the count, p50 and p99."""
    durs: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    n = 0
    for s in spans:
        durs[disk_of(s)][span_group(s.op, s.job)].append(s.dur_ns)
        n += 1
    disks = {}
    for disk, ops in sorted(durs.items()):
        disks[disk] = {}
        for op, d in sorted(ops.items()):
            d.sort()
            disks[disk][op] = {"requests": len(d), "p50_us": percentile(d, 50) / 1000, "p99_us": percentile(d, 99) / 1000}
    return {"requests_per_s": round(n / window_s, 1) if window_s > 0 else 0.0, "disks": disks}
