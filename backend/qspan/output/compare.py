"""Before and after: two sets of spans compared per op, part by part of the critical path (pure).

A span's critical path is cut into parts that add up to its duration exactly: its phases, with
the `handoff` phase split by what the resuming thread did instead (`handoff/spawned`,
`handoff/event_loop`, ...) in proportion to its handoffs' `instead_ns`. Comparing the mean parts
of A and B says where the mean went; comparing them over the requests around a percentile (a
band of ranks on each side) says where that percentile went, and which phase explains most of it
(and, for a handoff, which of what ran instead).
"""

from __future__ import annotations

from collections import defaultdict

from qspan.model.spans import span_group
from qspan.output.report import percentile

SCHEMA = "qspan.compare/1"
# Quarter-octave latency buckets, 1 us .. ~131 ms: fine enough to overlay 25 us against 120 us.
HIST_EDGES_US = [round(2 ** (i / 4), 3) for i in range(0, 69)]
PERCENTILES = (50, 99)


def parts(span: dict) -> dict[str, int]:
    """The span's critical path as parts in ns, adding up to its dur_ns exactly."""
    out: dict[str, int] = defaultdict(int)
    handoff_ns = 0
    for ph in span["phases"]:
        if ph["name"] == "handoff":
            handoff_ns += ph["dur_ns"]
        else:
            out[ph["name"]] += ph["dur_ns"]
    if handoff_ns:
        instead: dict[str, int] = defaultdict(int)
        for h in span["handoffs"]:
            for cat, ns in h["instead_ns"].items():
                instead[cat] += ns
        total = sum(instead.values())
        if not total:
            out["handoff"] += handoff_ns
        else:
            # In proportion, in whole ns; the rounding's remainder goes to the largest category.
            shares = {cat: handoff_ns * ns // total for cat, ns in instead.items() if ns}
            shares[max(shares, key=lambda c: (shares[c], c))] += handoff_ns - sum(shares.values())
            for cat, ns in shares.items():
                out["handoff/" + cat] += ns
    return dict(out)


def window(spans: list[dict], from_s: float | None, to_s: float | None) -> list[dict]:
    """The spans that started within [from_s, to_s) seconds after the first span's start."""
    if not spans or (from_s is None and to_s is None):
        return spans
    t0 = min(s["start_ns"] for s in spans)
    lo = t0 + int((from_s or 0) * 1e9)
    hi = t0 + int(to_s * 1e9) if to_s is not None else None
    return [s for s in spans if s["start_ns"] >= lo and (hi is None or s["start_ns"] < hi)]


def _mean_parts(group: list[dict]) -> dict[str, float]:
    total: dict[str, int] = defaultdict(int)
    for s in group:
        for name, ns in parts(s).items():
            total[name] += ns
    return {name: ns / len(group) / 1000 for name, ns in total.items()} if group else {}


def _band(by_dur: list[dict], p: float) -> list[dict]:
    """The requests around percentile p: its rank and half a percent of ranks on each side (at least 2),
    shifted inwards at the ends."""
    n = len(by_dur)
    rank = min(n - 1, int(round(p / 100 * (n - 1))))
    k = max(2, n // 200)
    start = max(0, min(rank - k, n - (2 * k + 1)))  # as wide at the ends: p99 of 100 requests is rank 98
    return by_dur[start:start + 2 * k + 1]


def _histogram(group: list[dict]) -> list[int]:
    counts = [0] * (len(HIST_EDGES_US) + 1)  # the last bucket holds everything past the last edge
    for s in group:
        us = s["dur_ns"] / 1000
        i = next((i for i, e in enumerate(HIST_EDGES_US) if us < e), len(HIST_EDGES_US))
        counts[i] += 1
    return counts


def _deltas(a: dict[str, float], b: dict[str, float]) -> list[dict]:
    """Every part of either side, the largest change first."""
    rows = [{"part": k, "a_us": a.get(k, 0.0), "b_us": b.get(k, 0.0), "delta_us": b.get(k, 0.0) - a.get(k, 0.0)}
            for k in set(a) | set(b)]
    return sorted(rows, key=lambda r: (-abs(r["delta_us"]), r["part"]))


def _explains(rows: list[dict], total_delta_us: float) -> dict | None:
    """The phase whose change goes the way the total did and is the largest such change, and
    within it (a handoff split by what ran instead) the largest part that went that way."""
    if not total_delta_us:
        return None
    by_phase: dict[str, float] = defaultdict(float)
    for r in rows:
        by_phase[r["part"].split("/")[0]] += r["delta_us"]
    same_way = [(d, ph) for ph, d in by_phase.items() if d * total_delta_us > 0]
    if not same_way:
        return None
    delta, phase = max(same_way, key=lambda dp: (abs(dp[0]), dp[1]))
    inside = [r for r in rows if r["part"].split("/")[0] == phase and r["delta_us"] * total_delta_us > 0]
    top = max(inside, key=lambda r: (abs(r["delta_us"]), r["part"]))
    return {"phase": phase, "delta_us": delta, "share": delta / total_delta_us,
            "part": top["part"], "part_delta_us": top["delta_us"], "part_share": top["delta_us"] / total_delta_us}


def _side(group: list[dict]) -> dict:
    durs = sorted(s["dur_ns"] for s in group)
    return {"requests": len(group), "mean_us": sum(durs) / len(durs) / 1000 if durs else 0.0,
            **{f"p{p}_us": percentile(durs, p) / 1000 for p in PERCENTILES}}


def compare(spans_a: list[dict], spans_b: list[dict]) -> dict:
    """Per op (block jobs per job) present on both sides: A, B, and where the difference went."""
    groups_a: dict[str, list[dict]] = defaultdict(list)
    groups_b: dict[str, list[dict]] = defaultdict(list)
    for spans, groups in ((spans_a, groups_a), (spans_b, groups_b)):
        for s in spans:
            groups[span_group(s["op"], s.get("job"))].append(s)
    out: dict = {"schema": SCHEMA, "groups": {}, "only_in_a": sorted(set(groups_a) - set(groups_b)),
                 "only_in_b": sorted(set(groups_b) - set(groups_a))}
    for name in sorted(set(groups_a) & set(groups_b)):
        ga, gb = groups_a[name], groups_b[name]
        sa, sb = _side(ga), _side(gb)
        mean_rows = _deltas(_mean_parts(ga), _mean_parts(gb))
        g = {"a": sa, "b": sb, "mean": {"delta_us": sb["mean_us"] - sa["mean_us"], "parts": mean_rows,
                                        "explains": _explains(mean_rows, sb["mean_us"] - sa["mean_us"])},
             "histogram": {"edges_us": HIST_EDGES_US, "a": _histogram(ga), "b": _histogram(gb)}}
        by_dur_a = sorted(ga, key=lambda s: (s["dur_ns"], s["id"]))
        by_dur_b = sorted(gb, key=lambda s: (s["dur_ns"], s["id"]))
        for p in PERCENTILES:
            band_a, band_b = _band(by_dur_a, p), _band(by_dur_b, p)
            rows = _deltas(_mean_parts(band_a), _mean_parts(band_b))
            band_delta = sum(r["delta_us"] for r in rows)
            g[f"p{p}"] = {"delta_us": sb[f"p{p}_us"] - sa[f"p{p}_us"], "band_requests": [len(band_a), len(band_b)],
                          "band_delta_us": band_delta, "parts": rows, "explains": _explains(rows, band_delta)}
        out["groups"][name] = g
    return out


def render_text(cmp: dict, label_a: str = "A", label_b: str = "B") -> str:
    """The comparison as a terminal table, the largest changes first."""
    lines = [f"A = {label_a}", f"B = {label_b}"]
    for side, names in (("A", cmp["only_in_a"]), ("B", cmp["only_in_b"])):
        if names:
            lines.append(f"only in {side}: {', '.join(names)}")
    for name, g in cmp["groups"].items():
        a, b = g["a"], g["b"]
        lines.append(f"\n{name}: {a['requests']} requests in A, {b['requests']} in B")
        lines.append(f"  {'':<24}{'A':>10}{'B':>10}{'B - A':>10}")
        for key in ("mean_us", *(f"p{p}_us" for p in PERCENTILES)):
            lines.append(f"  {key[:-3]:<24}{a[key]:>10.1f}{b[key]:>10.1f}{b[key] - a[key]:>+10.1f} us")
        lines.append("  critical path, mean per request:")
        for r in g["mean"]["parts"]:
            if abs(r["delta_us"]) >= 0.05 or r["a_us"] >= 0.05:
                lines.append(f"    {r['part']:<22}{r['a_us']:>10.1f}{r['b_us']:>10.1f}{r['delta_us']:>+10.1f} us")
        for key, what, where in (("mean", "the mean", "the change"),
                                 *((f"p{p}", f"p{p}", f"the change in the requests around p{p}") for p in PERCENTILES)):
            ex = g[key]["explains"]
            if ex:
                within = (f"; in it {ex['part']} {ex['part_delta_us']:+.1f} us" if ex["part"] != ex["phase"] else "")
                # a phase can move more than the whole did, when others moved the other way: say so
                share = (f"{100 * ex['share']:.0f} % of {where}" if ex["share"] <= 1.0 else
                         f"more than {where}: the other phases moved {ex['delta_us'] / ex['share'] - ex['delta_us']:+.1f} us")
                lines.append(f"  {what} moved {g[key]['delta_us']:+.1f} us: most of it {ex['phase']} "
                             f"({ex['delta_us']:+.1f} us, {share}{within})")
            else:
                lines.append(f"  {what} moved {g[key]['delta_us']:+.1f} us: no part moved that way")
    return "\n".join(lines)
