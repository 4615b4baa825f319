// qspan dashboard: plain JS, no build step. Talks to the REST API and one WebSocket.
"use strict";

const state = { session: null, ws: null, selected: null, reconnect: null, crosscheck: null, glossary: null, sessionInfo: null };
const $ = (id) => document.getElementById(id);
const PLOT = { displaylogo: false, responsive: true };
// legends above the plot: below it they would sit on the x axis title
const LAYOUT = { margin: { l: 60, r: 10, t: 30, b: 45 }, legend: { orientation: "h", y: 1.02, yanchor: "bottom" } };
const CATEGORY_COLORS = {
  other_requests: "#d62728", spawned: "#ff7f0e", block_job: "#8c564b", background: "#9467bd",
  event_loop: "#7f7f7f", asleep: "#1f77b4", runnable: "#bcbd22", unwatched: "#e0e0e0",
};

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// The server's token, when it has one (qspan serve --token): from the address's fragment
// (#token=...: a fragment never reaches a server, its logs or a proxy's), else asked for when
// the server refuses a request; kept for this tab only (sessionStorage), never in a URL.
const TOKEN_KEY = "qspan-token";
function takeTokenFromAddress() {
  // split by hand: URLSearchParams would turn a "+" of a base64 token into a space
  const take = (text) => {
    const parts = text.split("&").filter(Boolean);
    const i = parts.findIndex((p) => p.startsWith("token="));
    if (i < 0) return [null, text];
    let given;
    try {
      given = decodeURIComponent(parts[i].slice(6));
    } catch (e) {
      given = parts[i].slice(6);  // a stray "%": take it as typed
    }
    parts.splice(i, 1);
    return [given, parts.join("&")];
  };
  const [inFragment, fragment] = take(location.hash.slice(1));
  const [inQuery, query] = take(location.search.slice(1));
  const given = inFragment || inQuery;
  if (!given) return;
  sessionStorage.setItem(TOKEN_KEY, given);
  history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + (fragment ? `#${fragment}` : ""));
}
takeTokenFromAddress();
const token = () => sessionStorage.getItem(TOKEN_KEY);
let asking = null; // one prompt, however many requests the server refused meanwhile
function askToken(refused) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const given = window.prompt(refused ? "The server refused that token. Its token:"
        : "This qspan server needs its token (qspan serve --token):");
      if (given && given.trim()) sessionStorage.setItem(TOKEN_KEY, given.trim());
      resolve(Boolean(given && given.trim()));
    }).finally(() => { setTimeout(() => { asking = null; }, 0); });
  }
  return asking;
}
function withToken(options = {}) {
  const t = token();
  return t ? { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${t}` } } : options;
}
// A WebSocket cannot carry headers: the token goes as a subprotocol, base64url (token characters only)
function wsProtocols() {
  const t = token();
  if (!t) return ["qspan.v1"];
  const b64 = btoa(String.fromCharCode(...new TextEncoder().encode(t))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["qspan.v1", `qspan.token.${b64}`];
}

async function api(path, options = {}, retry = true) {
  const res = await fetch(path, withToken(options));
  if (res.status === 401 && retry && await askToken(Boolean(token()))) return api(path, options, false);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : res.statusText);
  return body;
}

async function loadProcesses() {
  try {
    const procs = await api("/api/processes");
    const tbody = $("processes").querySelector("tbody");
    tbody.replaceChildren();
    $("no-processes").hidden = procs.length > 0;
    for (const p of procs) {
      const tr = document.createElement("tr");
      tr.dataset.pid = p.pid;
      const cells = p.error ? [p.pid, "?", "-", "-", p.error] : [p.pid, p.version, p.probe_source, p.profile, p.exe];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      if (!p.error) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "attach";
        b.textContent = p.session ? "watch" : "attach";
        b.onclick = () => (p.session ? watch(p.session) : attach(p.pid));
        td.appendChild(b);
      }
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  } catch (e) {
    showError(`cannot list QEMU processes: ${e.message}`);
  }
}

async function attach(pid) {
  showError("");
  setHealth({ state: "attaching", pid });
  try {
    const s = await api("/api/sessions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pid, qemu_accounting: $("qemu-accounting").checked }),
    });
    watch(s.id);
  } catch (e) {
    setHealth(null);
    showError(`attach to PID ${pid} failed: ${e.message}`);
  }
}

function watch(sid, then) {
  const other = state.session !== sid;
  state.session = sid;
  $("session-id").textContent = sid;
  $("session-bar").hidden = false;
  $("waiting").hidden = true;
  $("charts").hidden = false;
  $("viewbar").hidden = false;
  $("find-panel").hidden = false;
  if (other) {
    $("detail").hidden = true;
    resetView();  // views.js: a new session starts at the whole VM, the last minute
    if (/(^|[#&])(session|span|recording)=/.test(location.hash)) history.replaceState(null, "", location.pathname + location.search);
  }
  stopCrosscheck();
  api(`/api/sessions/${sid}`).then((s) => {
    state.sessionInfo = s.status;
    state.glossary = s.glossary;
    redrawCharts();  // views.js: again, with the hover texts
    $("crosscheck-panel").hidden = !s.status.qemu_accounting;
    if (then) then(s);
  }).catch((e) => showError(`session ${sid}: ${e.message}`));
  connect();
  loadProcesses();
}

// The cross-check with QEMU's histograms: started on demand, then read every 2 s.
function stopCrosscheck() {
  clearInterval(state.crosscheck);
  state.crosscheck = null;
}

async function startCrosscheck() {
  showError("");
  stopCrosscheck();
  try {
    await api(`/api/sessions/${state.session}/crosscheck`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  } catch (e) {
    showError(`cross-check: ${e.message}`);
    return;
  }
  $("crosscheck-summary").textContent = "QEMU's histograms set; waiting for requests ...";
  const sid = state.session;
  let busy = false;  // a read waits for QEMU (QMP, or virsh) and for the feed: never two at once
  state.crosscheck = setInterval(async () => {
    if (state.session !== sid) return stopCrosscheck();
    if (busy) return;
    busy = true;
    try {
      renderCrosscheck(await api(`/api/sessions/${sid}/crosscheck`));
    } catch (e) {
      stopCrosscheck();
      showError(`cross-check: ${e.message}`);
    } finally {
      busy = false;
    }
  }, 2000);
}

const pct = (share) => `${(100 * share).toFixed(1)} %`;

function renderCrosscheck(rep) {
  if (rep.error) {
    $("crosscheck-summary").textContent = rep.error;
    return;
  }
  const late = rep.probe_late.requests
    ? `; QEMU read its clock for a request's end ${(rep.probe_late.p50_ns / 1000).toFixed(1)} us after qspan's probe (p50)` : "";
  $("crosscheck-summary").textContent = `over the last ${rep.running_s.toFixed(0)} s${late}` +
    (rep.spans_not_kept ? `; ${rep.spans_not_kept} spans not kept (restart the check)` : "");
  const tbody = $("crosscheck").querySelector("tbody");
  tbody.replaceChildren();
  let first = null;
  for (const [dev, ops] of Object.entries(rep.devices)) {
    for (const [op, r] of Object.entries(ops)) {
      first = first || { dev, op, r };
      const tr = document.createElement("tr");
      tr.dataset.device = dev;
      tr.dataset.op = op;
      const ok = r.acct_moved_share <= rep.target_moved_share ? "ok" : "over the 5 % target";
      for (const c of [dev, op, r.qemu_requests, r.qspan_requests, `${r.acct_moved} (${pct(r.acct_moved_share)}, ${ok})`,
        `${r.at_probe_moved} (${pct(r.at_probe_moved_share)})`, `${r.span_moved} (${pct(r.span_moved_share)})`]) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }
  if (!first) return;
  const us = rep.boundaries_ns.map((b) => b / 1000);
  const names = us.map((b, i) => (i === 0 ? `<${b}` : `${us[i - 1]}-${b}`)).concat([`>=${us[us.length - 1]}`]);
  const bar = (y, name, color) => ({ type: "bar", x: names, y, name, marker: { color } });
  Plotly.react("crosscheck-bins", [
    bar(first.r.qemu_bins, "QEMU's histogram", "#1f77b4"),
    bar(first.r.acct_bins, "qspan: QEMU's interval", "#2ca02c"),
    bar(first.r.span_bins, "qspan: spans (kick to ack)", "#ff7f0e"),
  ], { ...LAYOUT, barmode: "group", xaxis: { title: { text: `latency bin (us): ${first.dev} ${first.op}` }, automargin: true }, yaxis: { title: { text: "requests" } } }, PLOT);
}

function connect() {
  if (state.ws) state.ws.close();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/sessions/${state.session}/live`, wsProtocols());
  state.ws = ws;
  ws.onmessage = (msg) => {
    state.refused = 0;
    const data = JSON.parse(msg.data);
    if (data.type === "frame") render(data);
    if (data.type === "end") setHealth(data.status);
    if (data.type === "error") showError(`live view: ${data.message}`);
  };
  ws.onopen = () => {
    state.refused = 0;
    sendView();  // views.js: the view this page shows
  };
  ws.onclose = (ev) => {
    if (state.ws === ws && state.session && ev.code !== 1000) {
      // refused before it opened, again and again (origin or token): say so instead of retrying in silence
      state.refused = (state.refused || 0) + 1;
      if (state.refused === 5) showError("the server refuses this page's live connection (its origin or token); "
        + "open the dashboard at the address the server was started for, or restart it with --allow-origin");
    }
    if (state.ws === ws && state.session) {
      // the session may still be running: try again shortly
      clearTimeout(state.reconnect);
      state.reconnect = setTimeout(() => state.session && refreshStatus(), 1000);
    }
  };
}

async function refreshStatus() {
  try {
    const s = await api(`/api/sessions/${state.session}`);
    setHealth(s.status);
    connect();  // an ended session's frames still follow the view (a recording's, above all)
  } catch (e) {
    showError(e.message);
  }
}

async function detach() {
  if (!state.session) return;
  stopCrosscheck();
  try {
    const s = await api(`/api/sessions/${state.session}`, { method: "DELETE" });
    setHealth(s);
  } catch (e) {
    showError(`detach failed: ${e.message}`);
  }
  loadProcesses();
}

function setHealth(s) {
  const h = $("health");
  if (!s) {
    h.className = "health detached";
    h.dataset.state = "none";
    h.textContent = "not attached";
    return;
  }
  const lost = s.lost_events || 0;
  h.className = `health ${lost ? "lost" : s.state}`;
  h.dataset.state = s.state;
  const parts = [`PID ${s.pid}`, s.state];
  if (s.qemu_version) parts.push(`QEMU ${s.qemu_version}`);
  if (s.events_per_s !== undefined) parts.push(`${Math.round(s.events_per_s)} events/s`);
  parts.push(`${lost} lost events`);
  if (s.spans !== undefined) parts.push(`${s.spans} spans`);
  const o = s.overhead;
  if (o && o.est_us_per_request !== null && o.est_us_per_request !== undefined) {
    parts.push(`tracer ≈ ${o.est_us_per_request} us/request on QEMU (${o.events_per_request} events/request)`);
  }
  const own = s.tracer_cpu;
  if (own && own.us_per_request !== null && own.us_per_request !== undefined) {
    // measured from /proc since attach, unlike the estimate above
    parts.push(`qspan's own CPU ${own.us_per_request} us/request (server and bpftrace, ${own.cores} cores)`);
  }
  const smp = s.sampling;
  if (smp && smp.every > 1) {
    // the server fell behind and traces fewer windows: every span shown is still whole
    parts.push(`sampling 1 in ${smp.every} windows of ${smp.window_ms} ms (server behind; ${smp.sampled_out} requests cut)`);
  }
  for (const f of s.followed_threads || []) {
    // an iothread created after attach: watched from then on, or said not to be
    parts.push(f.followed ? `iothread ${f.name} (${f.tid}) followed from ${f.at_s} s`
      : `iothread ${f.name} (${f.tid}) NOT followed: ${f.why}`);
  }
  if (s.recording_capped) {
    parts.push(`recording stopped at ${Math.round(s.recording_bytes / 1048576)} MiB: ${s.recording_stopped || "--record-max-mb"}; live view goes on`);
  } else if (s.recording_note) {
    parts.push(`recording capped lower: ${s.recording_note}`);
  }
  if (s.error) parts.push(s.error);
  h.textContent = parts.join(" · ");
  if (s.error && s.state === "failed") showError(s.error);
}

// Frames arrive ten times a second; a slow browser must not fall behind. Health follows every
// frame; charts and the slowest list come only when they changed (a second closed, or the view
// did), and views.js draws them one chart per task, so none holds the page long.
function render(frame) {
  setHealth(frame.status);
  renderViewBar(frame);
  if (frame.charts && sameView(frame.view)) {  // views.js: a frame of a view this page left is not drawn
    renderSlowest(frame.charts.slowest);
    scheduleCharts(frame);
  }
}

function renderSlowest(rows) {
  const tbody = $("slowest").querySelector("tbody");
  const ids = rows.map((r) => r.id).join(",");
  if (tbody.dataset.ids === ids) return; // unchanged: keep the rows (and any click in progress)
  tbody.dataset.ids = ids;
  tbody.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.span = r.id;
    const phases = Object.entries(r.phases).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ");
    for (const c of [r.id, r.op, r.disk, r.offset, r.dur_us.toFixed(1), phases]) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    tr.onclick = () => openSpan(r.id);
    tbody.appendChild(tr);
  }
}

// Exports are links; with a token they are fetched with it and saved from memory instead.
for (const id of ["export-spans", "export-perfetto"]) {
  $(id).addEventListener("click", async (e) => {
    if (!token()) return;
    e.preventDefault();
    const link = $(id);
    try {
      const res = await fetch(link.href, withToken());
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      const url = URL.createObjectURL(await res.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = link.href.split("/").pop();
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      showError(`export failed: ${err.message}`);
    }
  });
}

$("refresh").onclick = loadProcesses;
$("crosscheck-start").onclick = startCrosscheck;
$("detach").onclick = detach;
// once every script ran (views.js, detail.js, find.js define what this calls)
document.addEventListener("DOMContentLoaded", () => {
  loadProcesses();
  api("/api/sessions").then((list) => {
    if (openPermalink(list)) return;  // detail.js: #session=...&span=... in the address
    const live = list.find((s) => s.state === "attached" || s.state === "attaching");
    if (live) watch(live.id);
  }).catch((e) => showError(`cannot list sessions: ${e.message}`));
});
