// qspan dashboard: every traced QEMU on the host (GET /api/host), a row each; "view" opens
// one VM's live view (app.js's watch). Uses app.js's $, api and watch.
"use strict";

const HOST_REFRESH_MS = 2000;

function hostDisks(disks) {
  const out = [];
  for (const [disk, ops] of Object.entries(disks)) {
    for (const [op, s] of Object.entries(ops)) {
      out.push(`${disk} ${op}: ${s.requests} req, p50 ${s.p50_us.toFixed(0)} us, p99 ${s.p99_us.toFixed(0)} us`);
    }
  }
  return out;
}

function renderHost(h) {
  const traced = h.vms.filter((vm) => vm.session);
  $("host-panel").hidden = !h.follow_all && traced.length < 2;  // one VM: its own view says it all
  $("host-mode").textContent = h.follow_all ? "following every QEMU on this host" : "";
  $("host-window").textContent = `${h.window_s} s`;
  const rows = h.vms.map((vm) => {
    const tr = document.createElement("tr");
    tr.dataset.pid = vm.pid;
    const cells = [vm.name || "", String(vm.pid), vm.state || (vm.error ? "not traceable" : "not traced"),
      vm.requests_per_s === null ? "" : vm.requests_per_s.toFixed(0)];
    for (const c of cells) tr.appendChild(Object.assign(document.createElement("td"), { textContent: c }));
    const disks = document.createElement("td");
    const lines = vm.error && !vm.session ? [vm.error] : hostDisks(vm.disks);
    // past the server's 5,000 kept spans the percentiles cover less than the window: say so
    if (vm.percentiles_over_s && vm.percentiles_over_s < h.window_s) lines.push(`(percentiles over the last ${vm.percentiles_over_s} s)`);
    disks.replaceChildren(...lines.map((t) => Object.assign(document.createElement("div"), { textContent: t })));
    tr.appendChild(disks);
    const act = document.createElement("td");
    if (vm.session) {
      const b = Object.assign(document.createElement("button"), { type: "button", textContent: "view", className: "view" });
      b.onclick = () => watch(vm.session);
      act.appendChild(b);
    }
    tr.appendChild(act);
    return tr;
  });
  $("host").querySelector("tbody").replaceChildren(...rows);
}

async function refreshHost() {
  try {
    renderHost(await api("/api/host"));
  } catch (e) {
    // the rest of the page says what is wrong with the server; the host view waits for the next round
  }
}

refreshHost();
setInterval(refreshHost, HOST_REFRESH_MS);
