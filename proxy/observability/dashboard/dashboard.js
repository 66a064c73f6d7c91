// Turnout's dashboard: reads GET /turnout/stats every 5 s and draws it on canvases. No libraries.
// After each draw <body data-rendered> counts the renders and every canvas says in data-points how
// many non-zero values it drew (the headless-browser test reads both).
"use strict";

const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#db2777", "#7c3aed", "#0891b2", "#ea580c", "#65a30d",
                 "#475569", "#b91c1c"];
const LOCAL = "#0d9488", CLOUD = "#6366f1", FALLBACK = "#ea580c", GRID = "#e5e7eb", INK = "#6b7280";
const $ = (id) => document.getElementById(id);
let key = new URLSearchParams(location.hash.slice(1)).get("key") || sessionStorage.getItem("turnout-key") || "";
if (key) sessionStorage.setItem("turnout-key", key);
if (location.hash) history.replaceState(null, "", location.pathname + location.search);  // keep the key out of history
let renders = 0;

function colorOf(targets, name) { return PALETTE[targets.indexOf(name) % PALETTE.length]; }

function canvas(id) {
  const c = $(id), dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
  c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
  const ctx = c.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { c, ctx, w, h };
}

function hhmm(t) { const d = new Date(t * 1000); return d.toTimeString().slice(0, 5); }

function fmtUsd(v) {
  if (v === 0) return "$0";
  if (v >= 0.1) return "$" + v.toFixed(2);
  if (v >= 0.001) return "$" + v.toFixed(4);
  return "$" + v.toPrecision(2);
}

// group the stats buckets so that a chart has at most `max` bars
function group(times, values, max) {
  const size = Math.max(1, Math.ceil(times.length / max)), out = [], ts = [];
  for (let i = 0; i < times.length; i += size) {
    ts.push(times[i]);
    let s = 0;
    for (let j = i; j < Math.min(i + size, times.length); j++) s += values[j];
    out.push(s);
  }
  return [ts, out];
}

// a round axis maximum (1, 2 or 5 times a power of ten) at or above v
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

function stacked(id, times, series, fmt) {
  const { c, ctx, w, h } = canvas(id);
  const left = 58, right = 8, top = 6, bottom = 18, pw = w - left - right, ph = h - top - bottom;
  const groups = series.map((s) => group(times, s.values, 60));
  const ts = groups.length ? groups[0][0] : group(times, times.map(() => 0), 60)[0];
  const n = ts.length, sums = new Array(n).fill(0);
  groups.forEach(([, v]) => v.forEach((x, i) => { sums[i] += x; }));
  const max = niceMax(Math.max(...sums, 0));
  ctx.strokeStyle = GRID; ctx.fillStyle = INK; ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const f of [0, 0.5, 1]) {
    const y = top + ph - f * ph;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(w - right, y + 0.5); ctx.stroke();
    ctx.fillText(fmt(max * f), left - 6, y);
  }
  const bw = pw / n, base = new Array(n).fill(0);
  let points = 0;
  series.forEach((s, k) => {
    ctx.fillStyle = s.color;
    groups[k][1].forEach((v, i) => {
      if (!v) return;
      points++;
      const y0 = top + ph - (base[i] / max) * ph, bh = (v / max) * ph;
      ctx.fillRect(left + i * bw + 1, y0 - bh, Math.max(1, bw - 2), bh);
      base[i] += v;
    });
  });
  ctx.fillStyle = INK; ctx.textAlign = "center"; ctx.textBaseline = "top";
  const every = Math.max(1, Math.ceil(n / 8));
  for (let i = 0; i < n; i += every) ctx.fillText(hhmm(ts[i]), left + i * bw + bw / 2, top + ph + 4);
  c.dataset.points = points;
  return points;
}

function legend(id, items) {
  $(id).innerHTML = items.map(([name, color, extra]) =>
    `<span><i style="background:${color}"></i>${esc(name)}${extra ? ` <span class="muted">${esc(extra)}</span>` : ""}</span>`).join("");
}

function esc(s) { return String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`); }

function sum(xs) { return xs.reduce((a, b) => a + b, 0); }

function drawShare(d) {
  const { c, ctx, w, h } = canvas("c-share");
  let local = 0, cloud = 0;
  for (const t of d.targets) {
    const n = sum(d.requests[t] || []);
    if (d.locality_of[t] === "local") local += n; else if (d.locality_of[t] === "cloud") cloud += n;
  }
  const total = local + cloud, r = Math.min(w, h) / 2 - 6, cx = w / 2, cy = h / 2;
  ctx.lineWidth = r * 0.38;
  if (!total) {
    ctx.strokeStyle = GRID; ctx.beginPath(); ctx.arc(cx, cy, r * 0.8, 0, 2 * Math.PI); ctx.stroke();
  } else {
    let a = -Math.PI / 2;
    for (const [v, col] of [[local, LOCAL], [cloud, CLOUD]]) {
      if (!v) continue;
      const b = a + (v / total) * 2 * Math.PI;
      ctx.strokeStyle = col; ctx.beginPath(); ctx.arc(cx, cy, r * 0.8, a, b); ctx.stroke(); a = b;
    }
  }
  ctx.fillStyle = "#1d2330"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.font = "bold 18px system-ui, sans-serif";
  ctx.fillText(total ? Math.round((100 * local) / total) + "%" : "–", cx, cy - 7);
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = INK;
  ctx.fillText("local", cx, cy + 11);
  c.dataset.points = (local ? 1 : 0) + (cloud ? 1 : 0);
  legend("l-share", [["local", LOCAL, `${local} req`], ["cloud", CLOUD, `${cloud} req`]]);
}

function drawFallbacks(d) {
  stacked("c-fallbacks", d.times, [{ name: "fallbacks", color: FALLBACK, values: d.fallbacks_over_time }], (v) => Math.round(v));
  $("fb-total").textContent = `${sum(d.fallbacks_over_time)} in window`;
  const rows = d.fallbacks.slice(0, 8).map((f) =>
    `<tr><td>${esc(f.from)}</td><td>${esc(f.to)}</td><td>${esc(f.reason)}</td><td>${f.count}</td></tr>`);
  $("t-fallbacks").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="4" class="empty">no fallbacks yet</td></tr>`;
}

function drawHealth(hh) {
  const sys = $("system");
  sys.className = "badge " + hh.status; sys.textContent = hh.status;
  $("system-reason").textContent = hh.reason || "";
  $("health").innerHTML = hh.backends.map((b) => {
    const rate = b.success_rate == null ? "no traffic" : `${Math.round(b.success_rate * 100)}% ok`;
    const lat = b.latency_ms ? ` · p50 ${b.latency_ms.p50} ms` : "";
    return `<div class="tile ${b.state}" title="${esc(b.reason || b.state)}"><b>${esc(b.name)}</b>` +
      `<small>${esc(b.state)} · ${esc(b.type)}</small><small>${rate}${lat}</small>` +
      `<small>${esc(b.reason || "")}</small></div>`;
  }).join("") + sharedTile(hh.state);
}

function sharedTile(st) {  // the state every replica shares (Redis): limits and breakers are fleet-wide while ok
  if (!st) return "";
  const cls = st.status === "ok" ? "healthy" : "degraded";
  const what = st.status === "ok" ? "fleet-wide limits and circuits" :
    (st.on_error === "local" ? "own counters until it is back" : "shared limits refused (503)");
  return `<div class="tile ${cls}" title="${esc(st.reason || st.url || "")}"><b>shared state</b>` +
    `<small>${esc(st.status)} · ${esc(st.backend)}</small><small>${esc(what)}</small>` +
    `<small>${esc(st.reason || "")}</small></div>`;
}

function drawLimits(gauges) {
  const byLabels = (name) => new Map(gauges.filter((g) => g.name === name).map((g) => [JSON.stringify(g.labels), g.value]));
  const label = (l) => Object.values(l).join(" · ");
  const bars = [];
  const qLimit = byLabels("turnout_quota_limit");
  for (const g of gauges.filter((g) => g.name === "turnout_quota_remaining")) {
    const limit = qLimit.get(JSON.stringify(g.labels));
    bars.push([`quota ${label(g.labels)}`, g.value, limit, `${Math.round(g.value)} left` + (limit ? ` of ${Math.round(limit)}` : "")]);
  }
  const bLimit = byLabels("turnout_budget_limit_usd");
  for (const g of gauges.filter((g) => g.name === "turnout_budget_spent_usd")) {
    const limit = bLimit.get(JSON.stringify(g.labels));
    const left = limit == null ? null : Math.max(0, limit - g.value);
    bars.push([`budget ${label(g.labels)}`, left, limit, limit == null ? `${fmtUsd(g.value)} spent` : `${fmtUsd(left)} left of ${fmtUsd(limit)}`]);
  }
  $("limits").innerHTML = bars.map(([name, left, limit, text]) => {
    const f = limit ? Math.max(0, Math.min(1, left / limit)) : 1;
    const cls = f <= 0 ? "out" : f < 0.2 ? "low" : "";
    return `<div class="bar">${esc(name)} <span class="muted">${esc(text)}</span>` +
      `<div class="track"><div class="fill ${cls}" style="width:${(f * 100).toFixed(1)}%"></div></div></div>`;
  }).join("") || `<div class="empty">No quotas or budgets configured.</div>`;
}

function render(d) {
  const targets = d.targets.filter((t) => sum(d.requests[t] || []) > 0 || sum(d.cost_usd[t] || []) > 0);
  const color = (t) => colorOf(d.targets, t);
  const req = targets.map((t) => ({ name: t, color: color(t), values: d.requests[t] }));
  stacked("c-requests", d.times, req, (v) => Math.round(v) + "");
  // "none": requests no target answered (errors before or during routing and dispatch)
  legend("l-requests", targets.map((t) => [t === "none" ? "no answer" : t, color(t),
    `${sum(d.requests[t])} req, ${sum(d.errors[t])} err`]));
  $("req-total").textContent = `${sum(targets.map((t) => sum(d.requests[t])))} in window`;
  const costTargets = targets.filter((t) => sum(d.cost_usd[t]) > 0);
  stacked("c-cost", d.times, costTargets.map((t) => ({ name: t, color: color(t), values: d.cost_usd[t] })), fmtUsd);
  legend("l-cost", costTargets.map((t) => [t, color(t), fmtUsd(sum(d.cost_usd[t]))]));
  $("cost-total").textContent = fmtUsd(sum(costTargets.map((t) => sum(d.cost_usd[t])))) + " in window";
  drawShare(d);
  drawFallbacks(d);
  drawHealth(d.health);
  drawLimits(d.gauges || []);
  $("updated").textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString();
  document.body.dataset.rendered = String(++renders);
  document.body.dataset.requests = String(sum(targets.map((t) => sum(d.requests[t]))));
}

async function refresh() {
  const minutes = $("window").value;
  try {
    const r = await fetch(`/turnout/stats?minutes=${minutes}`, { headers: key ? { authorization: "Bearer " + key } : {} });
    if (r.status === 401) { $("auth").hidden = false; return; }
    $("auth").hidden = true;
    render(await r.json());
  } catch (e) {
    $("updated").textContent = "update failed: " + e;
  }
}

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  key = $("auth-key").value.trim();
  sessionStorage.setItem("turnout-key", key);
  refresh();
});
$("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, 5000);
