// qspan dashboard: find requests by op, disk or node, offset range and latency (GET .../find).
// Uses app.js's $, state, api, showError; views.js's view and clockText; detail.js's openSpan.
"use strict";

const SIZE_SUFFIX = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

// "4096", "0x1000", "4K", "1.5M", "2G" -> bytes; "" -> null; anything else is an error
function parseOffset(text, what) {
  const t = text.trim();
  if (!t) return null;
  let m = /^0x([0-9a-f]+)$/i.exec(t);
  if (m) return parseInt(m[1], 16);
  m = /^(\d+(?:\.\d+)?)\s*([KMGT])?i?B?$/i.exec(t);
  if (m) return Math.round(Number(m[1]) * (m[2] ? SIZE_SUFFIX[m[2].toUpperCase()] : 1));
  throw new Error(`${what}: a byte offset such as 4096, 0x1000, 4K or 1M, not "${t}"`);
}

async function findRequests(ev) {
  ev.preventDefault();
  if (!state.session) return;
  showError("");
  const q = new URLSearchParams({ limit: "200" });
  try {
    const lo = parseOffset($("find-offset-min").value, "offset from");
    const hi = parseOffset($("find-offset-max").value, "offset to");
    if (lo !== null) q.set("offset_min", String(lo));
    if (hi !== null) q.set("offset_max", String(hi));
    if (lo !== null && hi !== null && hi <= lo) throw new Error("offset to must be past offset from");
  } catch (e) {
    $("find-note").textContent = e.message;
    return;
  }
  if ($("find-op").value) q.set("op", $("find-op").value);
  q.set("scope", $("find-scope").value || "all");
  const minUs = Number($("find-min-us").value || 0);
  if (minUs > 0) q.set("min_dur_us", String(minUs));
  const c = chartsFrame && chartsFrame.charts;
  if ($("find-in-window").checked && c) {
    q.set("since_ns", String(c.t0_s * 1e9));
    q.set("until_ns", String((c.t1_s + 1) * 1e9));
  }
  try {
    const r = await api(`/api/sessions/${state.session}/find?${q}`);
    renderFound(r);
  } catch (e) {
    $("find-note").textContent = `find failed: ${e.message}`;
  }
}

function renderFound(r) {
  const shown = r.spans.slice().reverse(); // newest first
  const tbody = $("find-results").querySelector("tbody");
  tbody.replaceChildren(...shown.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.span = s.id;
    for (const v of [s.id, s.op, s.disk, s.offset, s.bytes, (s.dur_ns / 1000).toFixed(1), clockText(s.end_ns / 1e9)]) {
      tr.appendChild(Object.assign(document.createElement("td"), { textContent: String(v) }));
    }
    tr.onclick = () => openSpan(s.id);
    return tr;
  }));
  const from = r.ring_spans ? `the newest ${r.ring_spans} requests (from ${clockText(r.ring_from_ns / 1e9)})` : "no requests yet";
  $("find-note").textContent = `${r.matched} found${r.matched > r.spans.length ? `, the newest ${r.spans.length} shown` : ""}; `
    + `searched ${from}; before them, the ${r.slowest_kept_per_second} slowest of each second, disk and op (10 min), `
    + `then the ${r.slowest_kept_per_minute} slowest of each minute; and ${r.pinned} opened before`;
}

$("find-form").addEventListener("submit", findRequests);
