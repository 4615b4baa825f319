"""Latency breakdowns of spans: plain functions from span dicts to data or text."""

from __future__ import annotations

from collections import defaultdict

from qspan.model.spans import INSTEAD_CATEGORIES, span_group


def percentile(sorted_values: list[int], p: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def breakdown(spans: list[dict]) -> dict:
    """Per op (block jobs' requests per job: span_group): request count, latency percentiles, mean time per phase, and where handoff waits went."""
    by_op: dict[str, list[dict]] = defaultdict(list)
    for s in spans:
        by_op[span_group(s["op"], s.get("job"))].append(s)
    out = {}
    for op, group in sorted(by_op.items()):
        durs = sorted(s["dur_ns"] for s in group)
        phase_total: dict[str, int] = defaultdict(int)
        instead_total: dict[str, int] = defaultdict(int)
        for s in group:
            for ph in s["phases"]:
                phase_total[ph["name"]] += ph["dur_ns"]
            for h in s["handoffs"]:
                for cat, ns in h["instead_ns"].items():
                    instead_total[cat] += ns
        n = len(group)
        costed = [s for s in group if s.get("qspan_ns") is not None]
        corrected = sorted(max(0, s["dur_ns"] - s["qspan_ns"]) for s in costed)
        out[op] = {
            "requests": n,
            "p50_us": percentile(durs, 50) / 1000,
            "p90_us": percentile(durs, 90) / 1000,
            "p99_us": percentile(durs, 99) / 1000,
            "max_us": durs[-1] / 1000,
            "phase_mean_us": {k: v / n / 1000 for k, v in phase_total.items()},
            "handoff_instead_mean_us": {k: instead_total.get(k, 0) / n / 1000 for k in INSTEAD_CATEGORIES},
            # qspan's own probes on the critical path (calibrated, tracers/costs.txt); null without
            "qspan": {
                "mean_us": sum(s["qspan_ns"] for s in costed) / len(costed) / 1000,
                "hits_mean": sum(sum(s["qspan_hits"].values()) for s in costed) / len(costed),
                "corrected_p50_us": percentile(corrected, 50) / 1000,
                "corrected_p99_us": percentile(corrected, 99) / 1000,
            } if costed else None,
        }
    return out


def render_text(bd: dict) -> str:
    lines = []
    for op, b in bd.items():
        lines.append(
            f"{op}: {b['requests']} requests  p50 {b['p50_us']:.1f} us  p90 {b['p90_us']:.1f} us  "
            f"p99 {b['p99_us']:.1f} us  max {b['max_us']:.1f} us"
        )
        total = sum(b["phase_mean_us"].values()) or 1
        lines.append("  critical path (mean per request):")
        for name, us in b["phase_mean_us"].items():
            lines.append(f"    {name:<10} {us:9.1f} us  {100 * us / total:5.1f} %")
        lines.append("  handoff waits: what the resuming thread did instead (mean per request):")
        for cat, us in b["handoff_instead_mean_us"].items():
            lines.append(f"    {cat:<15} {us:9.1f} us")
        q = b.get("qspan")
        if q:
            lines.append(f"  qspan's own probes on the critical path: {q['mean_us']:.1f} us ({q['hits_mean']:.1f} hits) "
                         f"a request, as calibrated; without them p50 {q['corrected_p50_us']:.1f} us, "
                         f"p99 {q['corrected_p99_us']:.1f} us")
    return "\n".join(lines) if lines else "no spans"
