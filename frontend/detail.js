// qspan dashboard: one request, its waterfall and its thread's timeline, and links to it.
// A request opened here is pinned by the server (kept for the session's lifetime), so the
// address this page shows for it (#session=...&span=...) opens it again, on any browser that
// reaches the server. Uses app.js's $, state, api, LAYOUT, PLOT, watch, showError.
"use strict";

function permalink(sid, spanId) {
  const info = state.sessionInfo || {};
  const parts = [`session=${encodeURIComponent(sid)}`, `span=${spanId}`];
  // a recording opened with --open: found by its file name too, should the server have restarted
  if (info.replay && info.recording) parts.push(`recording=${encodeURIComponent(info.recording.split("/").pop())}`);
  return `${location.origin}${location.pathname}#${parts.join("&")}`;
}

// #session=...&span=...[&recording=...] in the address: open that request. True if there was one.
function openPermalink(sessions) {
  const decode = (text) => { try { return decodeURIComponent(text); } catch (e) { return text; } };
  const params = new Map(location.hash.slice(1).split("&").filter(Boolean).map((p) => {
    const i = p.indexOf("=");
    return i < 0 ? [p, ""] : [p.slice(0, i), decode(p.slice(i + 1))];
  }));
  if (!params.has("session") && !params.has("recording")) return false;
  const rec = params.get("recording");
  let s = sessions.find((x) => x.id === params.get("session") && (!rec || (x.recording || "").endsWith(`/${rec}`)));
  if (!s && rec) s = sessions.find((x) => (x.recording || "").split("/").pop() === rec);
  if (!s) {
    showError(`the link's session ${params.get("session") || rec} is not on this server (ended sessions are dropped after a while; a recording must be opened with qspan serve --open)`);
    return false;
  }
  const spanId = Number(params.get("span"));
  watch(s.id, () => { if (Number.isInteger(spanId) && params.has("span")) openSpan(spanId); });
  return true;
}

async function openSpan(id) {
  const sid = state.session;
  try {
    // pinned first, then read: at full rate a request leaves the newest 5,000 within seconds, and
    // one pinned after it was drawn could be gone by then (its link would not open it)
    await api(`/api/sessions/${sid}/spans/${id}/pin`, { method: "POST" }).catch(() => {});
    const { span, timeline, timeline_kept: kept, threads } = await api(`/api/sessions/${sid}/spans/${id}`);
    state.threads = threads || {};
    state.selected = id;
    $("detail").hidden = false;
    $("detail-title").textContent = `${span.job ? `Block job ${span.job}, request` : "Request"} #${span.id}: ${span.op} ${span.bytes} B at ${span.offset}${diskOf(span)}, ${(span.dur_ns / 1000).toFixed(1)} us`;
    $("detail-link-note").textContent = "";
    $("timeline-note").textContent = kept ? "" : "(not kept for this request: the server keeps the timelines of the newest 5,000 requests and of those opened while they were kept)";
    history.replaceState(null, "", permalink(sid, id).slice(location.origin.length));
    drawWaterfall(span);
    drawTimeline(span, timeline);
    $("detail").scrollIntoView({ behavior: "smooth" });
  } catch (e) {
    showError(`request ${id}: ${e.message}`);
  }
}

// A thread by its QEMU name (iothread0, main loop, worker) and tid; a thread started after
// attach (a pool worker, mostly) by its tid alone.
const threadName = (tid, unknown = "thread") => (state.threads && state.threads[tid] ? `${state.threads[tid]} ${tid}` : `${unknown} ${tid}`);

const diskOf = (span) => (span.nodes.length ? ` (node ${span.nodes[0].node})` : "");

async function copyLink() {
  const url = permalink(state.session, state.selected);
  try {
    await api(`/api/sessions/${state.session}/spans/${state.selected}/pin`, { method: "POST" });
    await navigator.clipboard.writeText(url);
    $("detail-link-note").textContent = "link copied; the server keeps this request for the session's lifetime";
  } catch (e) {
    // no clipboard (plain HTTP on another host): show the link to copy by hand
    $("detail-link-note").textContent = url;
  }
}

// A child coroutine by what qspan knows of it: its role and the node it entered, not its pointer.
function childName(span, c) {
  const visit = span.nodes.find((n) => n.co === c.co);
  return `${c.role} coroutine${visit ? ` → node ${visit.node}` : ""}`;
}

function drawWaterfall(span) {
  const t0 = span.start_ns;
  const rows = [];
  rows.push({ name: `${span.op} #${span.id}`, start: 0, dur: span.dur_ns, color: "#1d232a" });
  for (const p of span.phases) rows.push({ name: `phase: ${p.name}`, start: p.start_ns - t0, dur: p.dur_ns, color: "#4c78a8", hint: meaning("phases", p.name) });
  for (const n of span.nodes) rows.push({ name: `node ${n.node} (${n.driver})`, start: n.ts_ns - t0, dur: Math.max(1000, span.end_ns - n.ts_ns), color: "#72b7b2" });
  for (const p of span.pool) if (p.io_start_ns) rows.push({ name: `${threadName(p.worker_tid, "worker")} syscall`, start: p.io_start_ns - t0, dur: p.io_done_ns - p.io_start_ns, color: "#54a24b" });
  for (const c of span.children) rows.push({ name: childName(span, c), start: c.start_ns - t0, dur: (c.end_ns || span.end_ns) - c.start_ns, color: "#ff7f0e" });
  for (const h of span.handoffs) rows.push({ name: `handoff ${threadName(h.from_tid, h.signal === "sys.io_done" ? "worker" : "thread")} → ${threadName(h.to_tid)} (${h.signal})`, start: h.ready_ns - t0, dur: h.delay_ns, color: "#d62728" });
  const y = rows.map((r, i) => `${i}. ${r.name}`);
  const traces = [{
    type: "bar", orientation: "h", y, x: rows.map((r) => r.dur / 1000), base: rows.map((r) => r.start / 1000),
    marker: { color: rows.map((r) => r.color) }, customdata: rows.map((r) => r.hint || ""),
    hovertemplate: "%{y}: %{x:.1f} us<br>%{customdata}<extra></extra>",
  }];
  const shapes = span.handoffs.map((h) => ({
    type: "line", xref: "x", yref: "paper", x0: (h.ready_ns - t0) / 1000, x1: (h.resumed_ns - t0) / 1000, y0: 0.02, y1: 0.02,
    line: { color: "#d62728", width: 3 },
  }));
  Plotly.react("waterfall", traces, {
    ...LAYOUT, margin: { l: 10, r: 20, t: 10, b: 40 }, showlegend: false, shapes,
    yaxis: { autorange: "reversed", automargin: true }, xaxis: { title: { text: "us since the request started" }, automargin: true },
  }, PLOT);
}

function segmentName(span, s) {
  if (s.kind !== "co") return { loop: "event loop", asleep: "asleep (off CPU)", runnable: "runnable (waiting for a CPU)" }[s.kind] || s.kind;
  const where = s.node ? ` in node ${s.node}` : "";
  if (s.request === span.id) return `this request's ${s.role === "request" ? "coroutine" : `${s.role} coroutine`}${where}`;
  if (s.role === "request") return `request #${s.request}${where}`;
  if (s.role) return `${s.role} coroutine${s.request !== null ? ` of request #${s.request}` : ""}${where}`;
  return `background coroutine${where}`;
}

// What a segment of the thread was, by kind: one legend entry (and colour) each.
const SEGMENT_KINDS = [
  ["this request", "#2ca02c"], ["other requests", "#4c78a8"], ["spawned and job coroutines", "#ff7f0e"],
  ["background coroutines", "#9467bd"], ["event loop", "#c7c7c7"], ["asleep", "#1f77b4"], ["runnable", "#bcbd22"],
];

function segmentKind(span, s) {
  if (s.kind !== "co") return { loop: "event loop", asleep: "asleep", runnable: "runnable" }[s.kind] || "event loop";
  if (s.request === span.id) return "this request";
  if (s.role === "request") return "other requests";
  return s.role ? "spawned and job coroutines" : "background coroutines";
}

function drawTimeline(span, timeline) {
  const t0 = span.start_ns;
  // names in the hover and kinds in the legend, not text on the bars: short segments side
  // by side would print over each other
  const traces = SEGMENT_KINDS.map(([kind, color]) => {
    const mine = timeline.filter((s) => segmentKind(span, s) === kind);
    return {
      type: "bar", orientation: "h", name: kind, marker: { color }, y: mine.map((s) => threadName(s.tid)),
      base: mine.map((s) => (s.start_ns - t0) / 1000), x: mine.map((s) => s.dur_ns / 1000),
      customdata: mine.map((s) => segmentName(span, s)), hovertemplate: "%{customdata}: %{x:.1f} us<extra></extra>",
    };
  }).filter((tr) => tr.x.length);
  const wakeups = span.handoffs.map((h) => ({ type: "line", x0: (h.ready_ns - t0) / 1000, x1: (h.ready_ns - t0) / 1000, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#d62728" } }));
  Plotly.react("timeline", traces, {
    ...LAYOUT, barmode: "overlay", shapes: wakeups,
    xaxis: { title: { text: "us since the request started (dotted: when a handoff's work was ready)" }, automargin: true },
    yaxis: { automargin: true },
  }, PLOT);
}

$("detail-link").onclick = copyLink;
