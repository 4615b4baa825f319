// qspan dashboard: before and after. Two sessions, or two windows of one, compared by the
// server (/api/compare, backend/qspan/output/compare.py). Uses app.js's $, api, LAYOUT, PLOT.
"use strict";

// Windows relative to a session's newest span: what a user comparing "now" with "before" picks.
const COMPARE_WINDOWS = {
  all: { label: "all it keeps", range: () => [0, null] },
  last10: { label: "the last 10 s", range: (end) => [end - 10e9, null] },
  last60: { label: "the last 60 s", range: (end) => [end - 60e9, null] },
  before60: { label: "before the last 60 s", range: (end) => [0, end - 60e9] },
};
const compareState = { sessions: [], result: null };

function sessionLabel(s) {
  const what = s.replay ? `recording ${s.recording.split("/").pop()}` : `PID ${s.pid}`;
  return `${s.id}: ${what}, ${s.spans} spans${s.state === "attached" ? " (live)" : ""}`;
}

async function loadCompareSessions() {
  try {
    const list = (await api("/api/sessions")).filter((s) => s.spans > 0);
    compareState.sessions = list;
    $("compare-panel").hidden = list.length === 0;
    for (const side of ["a", "b"]) {
      const sel = $(`compare-${side}-session`);
      if (document.activeElement === sel) continue; // never swap the options of an open list
      const keep = sel.value;
      sel.replaceChildren(...list.map((s) => new Option(sessionLabel(s), s.id)));
      if (list.some((s) => s.id === keep)) sel.value = keep;
      else if (list.length) sel.value = list[side === "a" ? 0 : list.length - 1].id; // first against newest
    }
  } catch (e) {
    showError(`cannot list sessions to compare: ${e.message}`);
  }
}

function windowParams(side) {
  const sid = $(`compare-${side}-session`).value;
  const s = compareState.sessions.find((x) => x.id === sid);
  const [since, until] = COMPARE_WINDOWS[$(`compare-${side}-window`).value].range(s && s.newest_end_ns || 0);
  const p = { [side]: sid, [`${side}_since_ns`]: Math.max(0, Math.round(since)) };
  if (until !== null) p[`${side}_until_ns`] = Math.max(0, Math.round(until));
  return p;
}

async function runCompare() {
  showError("");
  $("compare-summary").textContent = "comparing…";
  try {
    await loadCompareSessions(); // newest_end_ns moves while a session is live
    const query = new URLSearchParams({ ...windowParams("a"), ...windowParams("b") });
    compareState.result = await api(`/api/compare?${query}`);
    const ops = Object.keys(compareState.result.groups);
    const sel = $("compare-op");
    const keep = sel.value;
    sel.replaceChildren(...ops.map((op) => new Option(op, op)));
    sel.value = ops.includes(keep) ? keep : (ops.includes("write") ? "write" : ops[0]);
    renderCompare();
  } catch (e) {
    $("compare-summary").textContent = "";
    showError(`compare failed: ${e.message}`);
  }
}

const signed = (us) => `${us >= 0 ? "+" : ""}${us.toFixed(1)} us`;

function explainText(what, moved, ex) {
  if (!ex) return `${what} moved ${signed(moved)}: no phase moved that way.`;
  const within = ex.part !== ex.phase ? `; within it, ${ex.part} ${signed(ex.part_delta_us)}` : "";
  // a phase can move more than the whole did, when others moved the other way: say so
  const share = ex.share <= 1 ? `${(100 * ex.share).toFixed(0)} % of the change`
    : `more than the change: the other phases moved ${signed(ex.delta_us / ex.share - ex.delta_us)}`;
  return `${what} moved ${signed(moved)}: most of it is ${ex.phase} (${signed(ex.delta_us)}, ${share}${within}).`;
}

function renderCompare() {
  const res = compareState.result;
  const op = $("compare-op").value;
  const g = res && res.groups[op];
  if (!g) return;
  const only = [["A", res.only_in_a], ["B", res.only_in_b]].filter(([, l]) => l.length)
    .map(([side, l]) => `only in ${side}: ${l.join(", ")}`);
  $("compare-summary").replaceChildren(...[
    `${op}: ${g.a.requests} requests in A, ${g.b.requests} in B.`,
    explainText("The mean", g.mean.delta_us, g.mean.explains),
    explainText("p50", g.p50.delta_us, g.p50.explains),
    explainText("p99", g.p99.delta_us, g.p99.explains),
    ...only,
  ].map((t) => Object.assign(document.createElement("div"), { textContent: t })));
  const rows = ["mean_us", "p50_us", "p99_us"].map((k) => {
    const tr = document.createElement("tr");
    for (const v of [k.replace("_us", ""), g.a[k].toFixed(1), g.b[k].toFixed(1), signed(g.b[k] - g.a[k])]) {
      tr.appendChild(Object.assign(document.createElement("td"), { textContent: v }));
    }
    return tr;
  });
  $("compare-table").querySelector("tbody").replaceChildren(...rows);
  // the two latency histograms overlaid: filled steps on a log axis (bars there are slivers)
  const edges = g.histogram.edges_us;
  const lows = [edges[0] / 1.19, ...edges]; // bucket i holds edges[i-1] <= us < edges[i]
  const hist = [["A", g.histogram.a, "#1f77b4"], ["B", g.histogram.b, "#ff7f0e"]].map(([name, counts, color]) => ({
    type: "scatter", mode: "lines", name, x: lows, y: counts, line: { shape: "hv", color }, fill: "tozeroy", opacity: 0.6,
  }));
  const used = lows.filter((_, i) => g.histogram.a[i] || g.histogram.b[i]);
  Plotly.react("compare-histogram", hist, {
    ...LAYOUT, xaxis: { title: { text: "latency (us)" }, type: "log",
      range: used.length ? [Math.log10(used[0]) - 0.1, Math.log10(used[used.length - 1]) + 0.2] : undefined },
    yaxis: { title: { text: "requests" } },
  }, PLOT);
  // where each statistic's change went, part by part (B - A, in us per request)
  const parts = g.mean.parts.map((r) => r.part).reverse();
  const byPart = (key) => Object.fromEntries(g[key].parts.map((r) => [r.part, r.delta_us]));
  const bars = [["mean", "#7f7f7f"], ["p50", "#1f77b4"], ["p99", "#d62728"]].map(([key, color]) => {
    const d = byPart(key);
    return { type: "bar", orientation: "h", name: key === "mean" ? "mean" : `around ${key}`, y: parts,
      x: parts.map((p) => d[p] || 0), marker: { color } };
  });
  Plotly.react("compare-parts", bars, {
    ...LAYOUT, barmode: "group", margin: { ...LAYOUT.margin, l: 150 },
    xaxis: { title: { text: "B − A (us per request)" }, zeroline: true },
  }, PLOT);
}

for (const side of ["a", "b"]) {
  const sel = $(`compare-${side}-window`);
  sel.replaceChildren(...Object.entries(COMPARE_WINDOWS).map(([k, w]) => new Option(w.label, k)));
}
$("compare-run").onclick = runCompare;
$("compare-op").onchange = renderCompare;
loadCompareSessions();
setInterval(loadCompareSessions, 5000); // sessions come and go; a live one's span count grows
