// rackboot status page: polls api/machines every second and redraws the table.
// All text goes through textContent: names, details and log lines come from
// the network and are never parsed as HTML.
"use strict";

const groups = {
  discovered: "netboot", dhcp: "netboot", ipxe: "netboot", script: "netboot",
  kernel: "netboot", initrd: "netboot", config: "netboot",
  installing: "install", installed: "install", rebooted: "install",
  running: "done", "local-boot": "done",
  "proxy-ignored": "problem", "install-failed": "problem", "config-error": "problem",
  denied: "problem", "cannot-boot": "problem",
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString();
}

function ago(now, iso) {
  const t = new Date(iso);
  if (isNaN(t) || t.getUTCFullYear() < 2000) return "never";
  const s = Math.round((now - t) / 1000);
  if (!isFinite(s)) return "-";
  if (s < 60) return Math.max(s, 0) + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  return Math.floor(s / 3600) + "h ago";
}

// What the machine pulled from the registry mirror (images, bytes).
function pulled(p) {
  if (!p) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let n = p.bytes, u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  const size = (u ? n.toFixed(1) : n) + " " + units[u];
  return p.imageCount + (p.imageCount === 1 ? " image, " : " images, ") + size;
}

function row(m, now) {
  const stage = el("td", { class: "stage", "data-stage": m.stage, "data-group": groups[m.stage] || "other" },
    el("span", {}, m.stage || "not seen yet"));
  if (m.detail) stage.append(el("span", { class: "detail" }, m.detail));
  const timeline = el("ol", { class: "timeline" });
  for (const e of (m.timeline || []).slice(-12)) {
    timeline.append(el("li", { "data-stage": e.stage }, clock(e.time) + " " + e.stage + (e.detail ? " — " + e.detail : "")));
  }
  const log = el("pre", { class: "log" }, (m.logs || []).slice(-8).map(l => l.msg).join("\n"));
  return el("tr", { "data-key": m.key },
    el("td", { class: "name" }, m.name || "(unknown)"),
    el("td", { class: "mono" }, (m.macs || []).join(" ")),
    el("td", { class: "mono" }, m.addr || "-"),
    stage,
    el("td", { class: "installed" }, m.installed ? "yes" : "no"),
    el("td", { class: "pulled", title: ((m.pulled || {}).images || []).join("\n") }, pulled(m.pulled)),
    el("td", {}, ago(now, m.lastSeen)),
    el("td", {}, timeline),
    el("td", {}, log));
}

function render(data) {
  const now = new Date(data.time);
  const rows = document.getElementById("rows");
  const machines = data.machines || [];
  if (machines.length === 0) {
    rows.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "8" }, "No machine has asked to boot yet.")));
  } else {
    rows.replaceChildren(...machines.map(m => row(m, now)));
  }
  const counts = {};
  for (const m of machines) counts[m.stage] = (counts[m.stage] || 0) + 1;
  const parts = (data.stages || []).filter(s => counts[s]).map(s => counts[s] + " " + s);
  document.getElementById("summary").textContent =
    machines.length + " machine" + (machines.length === 1 ? "" : "s") + (parts.length ? ": " + parts.join(", ") : "");
  const upd = document.getElementById("updated");
  upd.className = "muted";
  upd.textContent = "updated " + clock(data.time);
}

async function poll() {
  try {
    const resp = await fetch("api/machines", { cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
    render(await resp.json());
  } catch (err) {
    const upd = document.getElementById("updated");
    upd.className = "error";
    upd.textContent = "cannot reach rackboot: " + err.message;
  } finally {
    setTimeout(poll, 1000);
  }
}

poll();
