// qspan dashboard: the view (what to show: the VM, a disk or a block node; an op; a time
// window or a brushed range) and every chart of it. The server bins the data for the view
// (backend/qspan/live/views.py) and sends charts only when they changed; they are drawn one
// chart per task so the page never holds the main thread long. Uses app.js's $, state,
// api, LAYOUT, PLOT, CATEGORY_COLORS.
"use strict";

const view = { scope: "all", op: null, window_s: 60, range_s: null };
let chartsFrame = null;  // the newest frame that had charts

function resetView() {
  Object.assign(view, { scope: "all", op: null, window_s: 60, range_s: null });
  chartsFrame = null;
  syncViewControls();
}

function sendView() {
  syncViewControls();
  exportLinks();
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "view", ...view }));
}

function setView(change) {
  Object.assign(view, change);
  sendView();
}

// Whether a frame's view is the one this page shows (a frame sent before the page's last change is not).
function sameView(v) {
  const r = (x) => (x ? x.map(Number).join(",") : "");
  return v && v.scope === view.scope && (v.op || null) === (view.op || null) && v.window_s === view.window_s
    && r(v.range_s) === r(view.range_s);
}

// Exports hold what the view selects (its disk or node, its op, and a brushed range).
function exportLinks() {
  if (!state.session) return;
  const q = new URLSearchParams({ scope: view.scope });
  if (view.op) q.set("op", view.op);
  if (view.range_s) {
    q.set("since_ns", String(Math.max(0, Math.floor(view.range_s[0] * 1e9))));
    q.set("until_ns", String(Math.ceil((view.range_s[1] + 1) * 1e9)));
  }
  $("export-spans").href = `/api/sessions/${state.session}/export/spans.json?${q}`;
  $("export-perfetto").href = `/api/sessions/${state.session}/export/perfetto.json?${q}`;
}

const scopeLabel = (scope) => {
  if (scope === "all") return "the whole VM";
  const [kind, ...rest] = scope.split(":");
  return `${kind === "disk" ? "disk" : "block node"} ${rest.join(":")}`;
};

function syncViewControls() {
  for (const b of document.querySelectorAll("#viewbar .windows button")) {
    b.setAttribute("aria-pressed", String(!view.range_s && Number(b.dataset.window) === view.window_s));
  }
  $("range").hidden = !view.range_s;
  if (view.range_s) $("range-text").textContent = `${clockText(view.range_s[0])} – ${clockText(view.range_s[1])}`;
  if ($("scope").value !== view.scope && [...$("scope").options].some((o) => o.value === view.scope)) $("scope").value = view.scope;
  $("op").value = view.op || "";
}

function fillSelect(sel, entries, keep) {
  const key = entries.map(([v, t]) => `${v}=${t}`).join("|");
  if (sel.dataset.key === key || document.activeElement === sel) return; // never swap the options of an open list
  sel.dataset.key = key;
  sel.replaceChildren(...entries.map(([v, t]) => new Option(t, v)));
  if (entries.some(([v]) => v === keep)) sel.value = keep;
}

function renderViewBar(frame) {
  state.clockOffset = frame.clock_offset_s;
  const scopes = frame.scopes.length ? frame.scopes : [{ scope: "all", requests: 0 }];
  const entries = scopes.map((s) => [s.scope, `${scopeLabel(s.scope)} (${s.requests} requests)`]);
  fillSelect($("scope"), entries, view.scope);
  fillSelect($("find-scope"), entries, $("find-scope").value || "all");
  const groups = frame.charts ? frame.charts.all_groups : null;
  if (groups) fillSelect($("op"), [["", "every op"], ...groups.map((g) => [g, g])], view.op || "");
}

// Times: the trace's clock is CLOCK_MONOTONIC; a recording's clock anchor turns it into UTC.
const hasClock = () => state.clockOffset !== null && state.clockOffset !== undefined;
function axisTime(t_s) {
  if (!hasClock()) return t_s;
  return new Date((t_s + state.clockOffset) * 1000).toISOString().replace("T", " ").replace("Z", "");
}
function traceSeconds(axisValue) {
  if (!hasClock()) return Number(axisValue);
  if (typeof axisValue === "number") return axisValue / 1000 - state.clockOffset;  // ms since the epoch
  return Date.parse(`${String(axisValue).replace(" ", "T")}Z`) / 1000 - state.clockOffset;
}
function clockText(t_s) {
  if (!hasClock()) return `${t_s.toFixed(1)} s`;
  return new Date((t_s + state.clockOffset) * 1000).toISOString().slice(11, 19);
}
const timeAxis = () => ({ title: { text: hasClock() ? "time (UTC)" : "trace clock (s)" }, type: hasClock() ? "date" : "linear" });
// Fixed margins wide enough for the tick labels: automargin lays a chart out twice, and the
// charts are redrawn every second beside a guest at full rate (the browser test's long tasks)
const MARGIN = { l: 70, r: 20, t: 30, b: 50 };

function wrap(text, width = 60) {
  const out = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + word.length > width) { out.push(line); line = ""; }
    line = line ? `${line} ${word}` : word;
  }
  if (line) out.push(line);
  return out.join("<br>");
}
const meaning = (kind, name) => {
  const g = state.glossary && state.glossary[kind];
  return g && g[name] ? wrap(g[name]).replace(/`/g, "") : "";
};

// The charts, by the element each draws into. Only those on screen (or about to be: 200 px
// ahead) are redrawn: every Plotly redraw lays a whole chart out again, and the browser may
// share the host's cores with a guest at full rate. One scrolled into view is drawn then.
const CHARTS = [["latency", drawLatency], ["heatmap", drawHeatmap], ["phases-time", drawPhasesOverTime],
  ["instead-time", drawInsteadOverTime], ["phases", drawBreakdown], ["instead", drawInsteadBreakdown],
  ["histogram", drawHistogram]];
const onScreen = new Set();
const drawnFrom = {};  // chart id -> the frame it was last drawn from
// What drawing costs this page, in ms of the main thread: the last few charts' draws, and the
// whole of the last pass (the browser test reads them; a busy page slows its own redraws)
const drawCost = { recent: [], lastPassMs: 0 };
let nextPassAt = 0;  // performance.now() before which charts are not redrawn
let drawing = false;
const isDrawn = (id) => chartsFrame !== null && drawnFrom[id] === chartsFrame;  // (what the browser test waits for)

// Every chart again from the newest frame (the hover texts came, say)
function redrawCharts() {
  for (const id of Object.keys(drawnFrom)) delete drawnFrom[id];
  if (chartsFrame) scheduleCharts(chartsFrame);
}

const chartObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (e.isIntersecting) onScreen.add(e.target.id);
    else onScreen.delete(e.target.id);
  }
  if (chartsFrame) scheduleCharts(chartsFrame);
}, { rootMargin: "200px 0px" });
for (const [id] of CHARTS) chartObserver.observe($(id));

function scheduleCharts(frame) {
  chartsFrame = frame;
  if (drawing) return;  // the pass under way starts over with this frame when it gets to its next chart
  drawing = true;
  // One chart per task: a slow machine sees charts drawn in steps, never a frozen page. A pass
  // that took long (a busy browser) spaces the next: charts take at most a third of the page's time.
  let f = chartsFrame;
  let passMs = 0;
  const next = () => {
    if (chartsFrame !== f) f = chartsFrame;  // a newer frame came meanwhile: the charts not drawn from it
    const todo = CHARTS.find(([id]) => onScreen.has(id) && drawnFrom[id] !== f);
    if (!todo || !f) {
      const c = (f && f.charts) || emptyCharts();
      describeView(c);
      describeSelfCost(c);
      drawCost.lastPassMs = passMs;
      nextPassAt = performance.now() + 2 * passMs;
      drawing = false;
      return;
    }
    const [id, draw] = todo;
    const t = performance.now();
    try {
      draw(f.charts || emptyCharts());
    } catch (e) {
      showError(`drawing the charts failed: ${e.message}`);
    }
    drawnFrom[id] = f;
    // a mark for traces (DevTools, bench/dashboard.py --trace), cleared at once: kept, the
    // page's performance buffer would grow by seven entries a second for as long as it is open
    performance.measure(`qspan draw ${id}`, { start: t });
    performance.clearMeasures(`qspan draw ${id}`);
    const ms = performance.now() - t;
    passMs += ms;
    drawCost.recent.push([id, Math.round(ms * 10) / 10]);
    if (drawCost.recent.length > 200) drawCost.recent.splice(0, 100);
    setTimeout(next, 0);
  };
  setTimeout(next, Math.max(0, nextPassAt - performance.now()));
}

const emptyCharts = () => ({ t_s: [], latency: {}, heatmap: { buckets: [], low_us: [], z: [] }, requests: [],
  phases_mean_us: {}, instead_mean_us: {}, breakdown: {}, bin_s: 1 });

function describeView(c) {
  const parts = [`${scopeLabel(view.scope)}, ${view.op || "every op"}`];
  if (c.t0_s !== undefined) parts.push(`${clockText(c.t0_s)} – ${clockText(c.t1_s + 1)}`);
  if (c.bin_s) parts.push(`one point per ${c.bin_s} s`);
  if (c.bin_s > 1 || c.resolution_s > 1) parts.push("percentiles of a bin from its histogram (±9 %)");
  $("view-note").textContent = parts.join(" · ");
}

function drawLatency(c) {
  const x = c.t_s.map(axisTime);
  const traces = [];
  const dash = { p50_us: "solid", p99_us: "dash", max_us: "dot" };
  for (const [g, s] of Object.entries(c.latency)) {
    for (const p of ["p50_us", "p99_us", "max_us"]) {
      traces.push({
        x, y: s[p], name: `${g} ${p.replace("_us", "")}`, type: "scatter", mode: x.length > 5 ? "lines" : "lines+markers",
        marker: { size: 4 }, line: { dash: dash[p] }, connectgaps: false,
        customdata: s.requests, hovertemplate: `${g} ${p.replace("_us", "")}: %{y:.1f} us (%{customdata} requests)<extra></extra>`,
      });
    }
  }
  const layout = {
    ...LAYOUT, margin: MARGIN, dragmode: "select", selectdirection: "h", xaxis: timeAxis(),
    yaxis: { title: { text: "latency (us)" }, type: "log" },
  };
  Plotly.react("latency", traces, layout, PLOT);
  const el = $("latency");
  if (!el.dataset.brush) {
    el.dataset.brush = "1";
    // brushing a range zooms every panel and the slowest list to it (the server re-bins)
    el.on("plotly_selected", (ev) => {
      if (!ev || !ev.range || !ev.range.x) return;
      const [a, b] = ev.range.x.map(traceSeconds);
      if (Number.isFinite(a) && Number.isFinite(b) && b > a) setView({ range_s: [a, b] });
    });
  }
}

function octaveTicks(buckets, lows) {
  const vals = [];
  const text = [];
  buckets.forEach((b, i) => {
    if ((b - 1) % 4 === 0) {
      vals.push(b);
      const us = lows[i];
      text.push(us >= 1000 ? `${(us / 1000).toPrecision(3).replace(/\.?0+$/, "")} ms` : `${Math.round(us)} us`);
    }
  });
  return { tickvals: vals, ticktext: text };
}

function drawHeatmap(c) {
  const h = c.heatmap;
  const x = c.t_s.map(axisTime);
  // the rows are named by their latency range, so hover reads it from the axis: a matrix of
  // hover strings (40 buckets x 120 bins) cost more than drawing the heatmap itself
  const rows = h.buckets.map((k, i) => `${h.low_us[i].toFixed(1)}–${bucketLow(k + 1).toFixed(1)} us`);
  const ticks = octaveTicks(h.buckets, h.low_us);
  const traces = h.buckets.length ? [{
    type: "heatmap", x, y: rows, z: h.z.map((row) => row.map((n) => (n ? n : null))),
    colorscale: "YlOrRd", reversescale: true, hoverongaps: false, colorbar: { title: { text: "requests" }, thickness: 12 },
    hovertemplate: "%{x}<br>latency %{y}<br>%{z} requests<extra></extra>",
  }] : [];
  Plotly.react("heatmap", traces, {
    ...LAYOUT, margin: MARGIN, xaxis: timeAxis(),
    yaxis: { title: { text: "latency" }, type: "category", tickvals: ticks.tickvals.map((b) => rows[h.buckets.indexOf(b)]),
      ticktext: ticks.ticktext },
  }, PLOT);
}

// One colour per phase in every chart (plotly would colour by trace order, which differs between them).
const PHASE_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"];
const PHASE_ORDER = ["kick", "submit", "queue", "device", "pool", "remote", "wait", "callback", "ack", "handoff", "run", "complete"];
const phaseColors = {};
function phaseColor(name) {
  if (!phaseColors[name]) {
    const known = PHASE_ORDER.indexOf(name);
    phaseColors[name] = PHASE_PALETTE[known >= 0 ? known : PHASE_ORDER.length + (Object.keys(phaseColors).length % 2)];
  }
  return phaseColors[name];
}
const byPhaseOrder = (a, b) => {
  const ia = PHASE_ORDER.indexOf(a);
  const ib = PHASE_ORDER.indexOf(b);
  return (ia < 0 ? 1.5 : ia) - (ib < 0 ? 1.5 : ib);  // a profile's driver and hop phases come after submit
};

// Stacked areas, not stacked bars: a bar is an SVG path of its own (120 bins x a dozen phases
// redrawn every second), an area is one path per phase.
function stackedOverTime(id, series, kind, colors) {
  const x = series.x;
  const names = Object.keys(series.values).filter((name) => series.values[name].some((y) => y > 0));
  if (kind === "phases") names.sort(byPhaseOrder);
  const traces = names.map((name) => {
    const color = colors ? colors[name] : phaseColor(name);
    return {
      type: "scatter", mode: x.length > 5 ? "lines" : "lines+markers", stackgroup: kind, x, y: series.values[name], name,
      line: { color, width: 0.5 }, marker: { color, size: 4 }, fillcolor: color,
      hovertemplate: `<b>${name}</b>: %{y:.1f} us per request<br>${meaning(kind, name)}<extra></extra>`,
    };
  });
  Plotly.react(id, traces, {
    ...LAYOUT, margin: MARGIN, xaxis: timeAxis(), yaxis: { title: { text: "us per request" } },
  }, PLOT);
}
function drawPhasesOverTime(c) {
  stackedOverTime("phases-time", { x: c.t_s.map(axisTime), values: c.phases_mean_us }, "phases");
}

function drawInsteadOverTime(c) {
  stackedOverTime("instead-time", { x: c.t_s.map(axisTime), values: c.instead_mean_us }, "instead", CATEGORY_COLORS);
}

const hbar = () => ({ ...LAYOUT, margin: { ...MARGIN, l: 90 }, barmode: "stack", xaxis: { title: { text: "us per request" } } });

function drawBreakdown(c) {
  const bd = c.breakdown;
  const ops = Object.keys(bd);
  const phaseNames = [...new Set(ops.flatMap((op) => Object.keys(bd[op].phase_mean_us)))].sort(byPhaseOrder);
  const phaseTraces = phaseNames.map((ph) => ({
    type: "bar", orientation: "h", name: ph, y: ops, x: ops.map((op) => bd[op].phase_mean_us[ph] || 0),
    marker: { color: phaseColor(ph) },
    hovertemplate: `<b>${ph}</b>: %{x:.1f} us per request<br>${meaning("phases", ph)}<extra></extra>`,
  }));
  Plotly.react("phases", phaseTraces, hbar(), PLOT);
}

// qspan's own probes are inside the phases: say how much, as calibrated (tracers/costs.txt).
// Text, so written on every pass, the chart above it on screen or not.
function describeSelfCost(c) {
  const bd = c.breakdown;
  const own = Object.keys(bd).filter((op) => bd[op].qspan_mean_us !== null && bd[op].qspan_mean_us !== undefined)
    .map((op) => `${op} ${bd[op].qspan_mean_us.toFixed(1)} us of ${bd[op].mean_us.toFixed(1)}`);
  $("selfcost").textContent = own.length
    ? `of which qspan's own probes on the critical path (calibrated estimate): ${own.join(", ")}`
    : "";
}

function drawInsteadBreakdown(c) {
  const bd = c.breakdown;
  const ops = Object.keys(bd);
  const insteadTraces = Object.keys(CATEGORY_COLORS).map((cat) => ({
    type: "bar", orientation: "h", name: cat, y: ops, marker: { color: CATEGORY_COLORS[cat] },
    x: ops.map((op) => (bd[op].instead_mean_us || {})[cat] || 0),
    hovertemplate: `<b>${cat}</b>: %{x:.1f} us per request<br>${meaning("instead", cat)}<extra></extra>`,
  }));
  Plotly.react("instead", insteadTraces, hbar(), PLOT);
}

const bucketLow = (k) => (k <= 0 ? 0 : 2 ** ((k - 1) / 4));

function drawHistogram(c) {
  const bd = c.breakdown;
  const all = [...new Set(Object.values(bd).flatMap((b) => Object.keys(b.buckets).map(Number)))].sort((a, b) => a - b);
  const span = all.length ? Array.from({ length: all[all.length - 1] - all[0] + 1 }, (_, i) => all[0] + i) : [];
  const traces = Object.entries(bd).map(([op, b]) => ({
    type: "bar", name: op, x: span, y: span.map((k) => b.buckets[k] || 0),
    customdata: span.map((k) => `${bucketLow(k).toFixed(1)}–${bucketLow(k + 1).toFixed(1)} us`),
    hovertemplate: `${op}: %{y} requests of %{customdata}<extra></extra>`,
  }));
  Plotly.react("histogram", traces, {
    ...LAYOUT, margin: MARGIN, barmode: "group", bargap: 0.1,
    xaxis: { title: { text: "latency" }, ...octaveTicks(span, span.map(bucketLow)) },
    yaxis: { title: { text: "requests" } },
  }, PLOT);
}

// (a select keeps the focus after a choice, and fillSelect leaves a focused one alone)
$("scope").onchange = () => { setView({ scope: $("scope").value }); $("scope").blur(); };
$("op").onchange = () => { setView({ op: $("op").value || null }); $("op").blur(); };
for (const b of document.querySelectorAll("#viewbar .windows button")) {
  b.onclick = () => setView({ window_s: Number(b.dataset.window), range_s: null });
}
$("range-clear").onclick = () => setView({ range_s: null });
