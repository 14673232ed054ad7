// AMC Service status page: plain JS, no dependencies. Polls the JSON API and draws SVG charts.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 480, H = 260, M = { l: 58, r: 24, t: 12, b: 36 };
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : (Math.abs(x) >= 1e6 ? (x / 1e6).toFixed(2) + "M" : Math.abs(x) >= 1e3 ? (x / 1e3).toFixed(1) + "k" : (+x).toFixed(d));
const pct = (x) => (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + "%";

// ---- the API token ----------------------------------------------------------------------------
// Every API call needs the bearer token. The page asks for it once and keeps it for this tab only
// (sessionStorage: gone when the tab closes, never sent anywhere but this server's API).
const TOKEN_KEY = "amc-api-token";
class Unauthorized extends Error {}
class ServerSaid extends Error {}  // an HTTP error with the server's reason (its `detail`)
const token = () => sessionStorage.getItem(TOKEN_KEY);

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  const form = $("#login");
  $("#login-message").textContent = message || "";
  form.hidden = false;
  $("#list-view").hidden = true;
  $("#job-view").hidden = true;
  $("#token-input").focus();
}

async function apiFetch(url) {
  const r = await fetch(url, { cache: "no-store", headers: { Authorization: `Bearer ${token()}` } });
  if (r.status === 401) {
    askForToken("The server refused this token; enter the current one.");
    throw new Unauthorized(url);
  }
  if (!r.ok) {
    // The server's own reason (e.g. "the database ... is unreachable") is what the page shows.
    let detail = "";
    try { const body = await r.json(); detail = typeof body.detail === "string" ? body.detail : ""; } catch (_) { /* not JSON */ }
    throw new ServerSaid(detail || `${url}: HTTP ${r.status}`);
  }
  return r;
}

async function getJSON(url) {
  return (await apiFetch(url)).json();
}

// Artifacts need the token too: fetch them and hand the browser the bytes.
async function objectURL(url) {
  return URL.createObjectURL(await (await apiFetch(url)).blob());
}

document.addEventListener("click", async (ev) => {
  const a = ev.target.closest && ev.target.closest("a[data-artifact]");
  if (!a) return;
  ev.preventDefault();
  const link = document.createElement("a");
  link.href = await objectURL(a.getAttribute("href"));
  link.download = a.dataset.artifact;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
});

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- charts ---------------------------------------------------------------------------------
function scale(d0, d1, r0, r1) {
  if (d1 === d0) { d0 -= 1; d1 += 1; }
  return (v) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0);
}
function extent(vals, pad = 0.05) {
  let lo = Math.min(...vals), hi = Math.max(...vals);
  const p = (hi - lo) * pad || Math.abs(hi) * 0.05 || 1;
  return [lo - p, hi + p];
}
function ticks(lo, hi, n = 5) { const out = []; for (let i = 0; i <= n; i++) out.push(lo + ((hi - lo) * i) / n); return out; }
const axisFmt = (v) => Math.abs(v) >= 1e3 ? fmt(v) : (+v.toPrecision(3)).toString();
const intTicks = (lo, hi) => { const out = [], step = Math.max(1, Math.ceil((hi - lo) / 8)); for (let v = Math.ceil(lo); v <= hi; v += step) out.push(v); return out; };

function frame(svg, xd, yd, xlabel, ylabel, xfmt = axisFmt, yfmt = axisFmt, xticks = null) {
  svg.replaceChildren();
  const x = scale(xd[0], xd[1], M.l, W - M.r), y = scale(yd[0], yd[1], H - M.b, M.t);
  svg.append(el("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#fbfcfe", stroke: "#d9dde6" }));
  for (const t of ticks(...yd, 4)) {
    svg.append(el("line", { x1: M.l, x2: W - M.r, y1: y(t), y2: y(t), stroke: "#eceef3" }));
    svg.append(el("text", { x: M.l - 4, y: y(t) + 3, "text-anchor": "end" }, yfmt(t)));
  }
  for (const t of (xticks || ticks(...xd, 5))) svg.append(el("text", { x: x(t), y: H - M.b + 14, "text-anchor": "middle" }, xfmt(t)));
  svg.append(el("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, xlabel));
  svg.append(el("text", { x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`, "text-anchor": "middle" }, ylabel));
  return { x, y };
}

function note(svg, text) {
  svg.replaceChildren();
  svg.append(el("rect", { x: 1, y: 1, width: W - 2, height: H - 2, fill: "#fbfcfe", stroke: "#d9dde6" }));
  svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, text));
}

function drawReward(svg, eps) {
  const pts = eps.filter((e) => e.record.reward !== null && e.record.reward !== undefined);
  if (!pts.length) return note(svg, "waiting for the first episode…");
  const xs = pts.map((e) => e.episode), ys = pts.map((e) => e.record.reward);
  const { x, y } = frame(svg, [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)], extent(ys), "episode", "reward", (v) => String(v), axisFmt, intTicks(Math.min(...xs), Math.max(...xs)));
  let best = -Infinity, bestPath = "";
  pts.forEach((e, i) => { best = Math.max(best, e.record.reward); bestPath += `${i ? "L" : "M"}${x(e.episode).toFixed(1)},${y(best).toFixed(1)}`; });
  svg.append(el("path", { d: pts.map((e, i) => `${i ? "L" : "M"}${x(e.episode).toFixed(1)},${y(e.record.reward).toFixed(1)}`).join(""), fill: "none", stroke: "#9db7e8", "stroke-width": 1.2, class: "series" }));
  svg.append(el("path", { d: bestPath, fill: "none", stroke: "#2f6fdf", "stroke-width": 2, class: "series" }));
  for (const e of pts) svg.append(el("circle", { cx: x(e.episode), cy: y(e.record.reward), r: 2.2, fill: "#2f6fdf", class: "point" }));
}

function costOf(r, useLatency) { return useLatency ? r.latency_ms : r.macs; }

function paretoFront(points) {
  // Keep the points no other point beats on both lower cost and higher accuracy.
  const sorted = [...points].sort((a, b) => a.cost - b.cost || b.acc - a.acc);
  const front = []; let bestAcc = -Infinity;
  for (const p of sorted) if (p.acc > bestAcc) { front.push(p); bestAcc = p.acc; }
  return front;
}

function drawPareto(svg, eps) {
  const useLatency = eps.length > 0 && eps.every((e) => typeof e.record.latency_ms === "number");
  const pts = eps.filter((e) => typeof e.record.accuracy === "number" && typeof costOf(e.record, useLatency) === "number")
    .map((e) => ({ ep: e.episode, acc: e.record.accuracy, cost: costOf(e.record, useLatency) }));
  if (!pts.length) return note(svg, "waiting for the first episode…");
  const { x, y } = frame(svg, extent(pts.map((p) => p.cost)), extent(pts.map((p) => p.acc)),
    useLatency ? "latency (ms)" : "MACs", "accuracy", axisFmt, (v) => (100 * v).toFixed(1) + "%");
  const front = paretoFront(pts);
  for (const p of pts) {
    const c = el("circle", { cx: x(p.cost), cy: y(p.acc), r: 3, fill: "#9db7e8", stroke: "#2f6fdf", "stroke-width": 0.6, class: "point" });
    c.append(el("title", {}, `episode ${p.ep}: ${pct(p.acc)}, ${fmt(p.cost)}`));
    svg.append(c);
  }
  svg.append(el("path", { d: front.map((p, i) => `${i ? "L" : "M"}${x(p.cost).toFixed(1)},${y(p.acc).toFixed(1)}`).join(""), fill: "none", stroke: "#c83232", "stroke-width": 1.6, class: "pareto" }));
  for (const p of front) svg.append(el("circle", { cx: x(p.cost), cy: y(p.acc), r: 4, fill: "#c83232", class: "pareto-point" }));
}

function drawRatios(svg, best) {
  const ratios = best && Array.isArray(best.ratios) ? best.ratios : [];
  if (!ratios.length) return note(svg, "no policy yet");
  const { y } = frame(svg, [0, ratios.length], [0, 1], "prunable layer", "preserve ratio", () => "", (v) => v.toFixed(2), []);
  const bw = (W - M.l - M.r) / ratios.length;
  ratios.forEach((r, i) => {
    const b = el("rect", { x: M.l + i * bw + bw * 0.15, y: y(r), width: bw * 0.7, height: y(0) - y(r), fill: "#2f6fdf", class: "vbar" });
    b.append(el("title", {}, `layer ${i}: keep ${(100 * r).toFixed(0)}%`));
    svg.append(b);
    if (ratios.length <= 24) svg.append(el("text", { x: M.l + (i + 0.5) * bw, y: H - M.b + 14, "text-anchor": "middle" }, String(i)));
  });
}

function drawLatency(svg, job, eps) {
  const lat = (job.report && job.report.latency) || {};
  const cands = (lat.candidates || []).filter((c) => typeof c.predicted_ms === "number" && typeof c.measured_ms === "number");
  if (cands.length) {
    // The best candidates, measured on the device after the search: predicted (x) vs measured (y).
    const d = extent(cands.flatMap((c) => [c.predicted_ms, c.measured_ms]), 0.2);
    const { x, y } = frame(svg, d, d, "predicted by the lookup table (ms)", "measured (ms)");
    svg.append(el("line", { x1: x(d[0]), y1: y(d[0]), x2: x(d[1]), y2: y(d[1]), stroke: "#aab", "stroke-dasharray": "4 3", class: "diagonal" }));
    const err = cands.reduce((s, c) => s + Math.abs(c.predicted_ms - c.measured_ms) / c.measured_ms, 0) / cands.length;
    svg.append(el("text", { x: M.l + 6, y: M.t + 14 }, `${cands.length} measured · mean |error| ${(100 * err).toFixed(1)}% · dashed: exact`));
    for (const c of cands) {
      const chosen = c.measured_ms === lat.measured_ms && c.predicted_ms === lat.predicted_ms;
      const p = el("circle", { cx: x(c.predicted_ms), cy: y(c.measured_ms), r: chosen ? 5 : 3.5, fill: chosen ? "#c83232" : "#2f6fdf", class: "point" });
      p.append(el("title", {}, `episode ${c.episode}: predicted ${c.predicted_ms.toFixed(3)} ms, measured ${c.measured_ms.toFixed(3)} ms`));
      svg.append(p);
    }
    return;
  }
  const perEp = eps.filter((e) => typeof e.record.latency_ms === "number");
  if (perEp.length) {
    // While searching only predictions exist; the best candidates are measured at the end.
    const xs = perEp.map((e) => e.episode), ys = perEp.map((e) => e.record.latency_ms);
    const { x, y } = frame(svg, [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)], extent(ys), "episode (measured after the search)",
      "predicted ms", (v) => String(v), axisFmt, intTicks(Math.min(...xs), Math.max(...xs)));
    svg.append(el("path", { d: perEp.map((e, i) => `${i ? "L" : "M"}${x(e.episode).toFixed(1)},${y(e.record.latency_ms).toFixed(1)}`).join(""), fill: "none", stroke: "#9db7e8", class: "series" }));
    for (const e of perEp) svg.append(el("circle", { cx: x(e.episode), cy: y(e.record.latency_ms), r: 2.5, fill: "#2f6fdf", class: "point" }));
    return;
  }
  note(svg, job.state && FINISHED.has(job.state)
    ? "no latency for this job (FLOPs/params target, no latency reward)"
    : "latency appears when the job uses a device's latency table");
}

// ---- views ----------------------------------------------------------------------------------
function bar(p) { return `<div class="bar"><div style="width:${(100 * p).toFixed(1)}%"></div></div>`; }

async function refreshList() {
  const data = await getJSON("/jobs?limit=200");
  $("#counts").textContent = Object.entries(data.counts).map(([k, v]) => `${v} ${k}`).join(" · ") || "no jobs yet";
  $("#jobs tbody").innerHTML = data.jobs.map((j) => `<tr data-id="${esc(j.id)}">
    <td><a href="/ui/jobs/${esc(j.id)}" class="mono">${esc(j.id.slice(0, 8))}</a></td><td>${esc(j.model)}</td>
    <td>${esc(j.target)}</td><td>${esc(j.strategy)}</td><td>${esc(j.device)}</td>
    <td><span class="state ${esc(j.state)}">${esc(j.state)}</span></td>
    <td>${bar(j.progress)}${j.episodes_done}/${j.episodes_total}</td><td>${pct(j.best_accuracy)}</td>
    <td>${esc(new Date(j.created_at + "Z").toLocaleString())}</td></tr>`).join("");
  return data.jobs.some((j) => !FINISHED.has(j.state));
}

async function refreshDevices() {
  const data = await getJSON("/devices");
  $("#devices tbody").innerHTML = data.devices.map((d) => `<tr><td class="mono">${esc(d.spec)}</td><td>${esc(d.source)}</td>
    <td>${esc((d.info && (d.info.model || d.info.name)) || "")}</td><td class="health-${esc(d.health)}">${esc(d.health)}</td>
    <td>${esc([d.host ? `on ${d.host}` : "", d.lease ? `leased by ${d.lease.holder}${d.lease.measuring ? " (measuring)" : ""}` : "",
      d.detail].filter(Boolean).join("; "))}</td></tr>`).join("");
  $("#device-notes").textContent = data.notes.join(" ");
}

const jobView = { id: null, episodes: [], last: 0 };

async function refreshJob() {
  const job = await getJSON(`/jobs/${jobView.id}`);
  const more = await getJSON(`/jobs/${jobView.id}/episodes?after=${jobView.last}`);
  for (const e of more.episodes) { jobView.episodes.push(e); jobView.last = Math.max(jobView.last, e.episode); }
  $("#job-id").textContent = job.id.slice(0, 8);
  const st = $("#job-state"); st.textContent = job.state; st.className = `state ${job.state}`;
  $("#job-phase").textContent = `${job.phase}: ${job.message}`;
  $("#job-bar").style.width = `${(100 * job.progress).toFixed(1)}%`;
  const targets = job.spec.targets || [];
  $("#job-progress").textContent = `${job.episodes_done} / ${job.episodes_total} episodes` +
    (targets.length ? ` (${targets.length} searches: ${targets.join(", ")})` : "") +
    (job.best ? ` · best so far: episode ${job.best.episode}${job.best.target ? ` (${job.best.target})` : ""}, accuracy ${pct(job.best.accuracy)}, ${fmt(job.best.macs, 0)} MACs` : "");
  $("#job-spec").textContent = Object.entries(job.spec).map(([k, v]) => `${k}=${v}`).join("  ");
  const err = $("#job-error"); err.hidden = !job.error; err.textContent = job.error ? `${job.error}  (log: ${job.links.log})` : "";
  const evs = $("#job-events"); evs.hidden = !job.events.length;  // restarts and resumes, and why
  evs.innerHTML = job.events.map((e) => `<li>${esc(new Date(e.at).toLocaleString())} · ${esc(e.kind)}: ${esc(e.message)}</li>`).join("");
  const rep = job.report;
  const ms = (r) => (r && typeof r.latency_measured_ms === "number") ? `, ${r.latency_measured_ms.toFixed(3)} ms measured` : "";
  $("#job-result").innerHTML = rep && rep.result && rep.baseline ? `<p>Baseline ${pct(rep.baseline.accuracy)} at ${fmt(rep.baseline.macs, 0)} MACs${ms(rep.baseline)} →
    pruned ${pct(rep.result.accuracy)} at ${fmt(rep.result.macs, 0)} MACs (${fmt(rep.result.params, 0)} params)${ms(rep.result)}</p>` : "";
  // A single search's section (a frontier's, by model and phone model, is drawn with the frontier).
  $("#job-result").insertAdjacentHTML("beforeend", phoneModels(rep && rep.result ? rep.latency_per_phone_model : null));
  drawCurves(job);
  drawRecovery(job);
  drawFrontier(job);
  $("#job-artifacts").innerHTML = job.state === "succeeded"
    ? "Artifacts: " + Object.entries(job.links.artifacts).map(([n, u]) => `<a href="${esc(u)}" data-artifact="${esc(n.replace("/", "-"))}">${esc(n)}</a>`).join(" · ") : "";
  drawReward($("#chart-reward"), jobView.episodes);
  drawPareto($("#chart-pareto"), jobView.episodes);
  drawRatios($("#chart-ratios"), job.best);
  drawLatency($("#chart-latency"), job, jobView.episodes);
  return !FINISHED.has(job.state);
}

// The final model's latency on each phone model of the farm (report.latency_per_phone_model).
function phoneModels(sec) {
  if (!sec) return "";
  if (!sec.models.length) return `<p class="muted" id="phone-models-note">${esc(sec.note)}</p>`;
  const ms = (v) => typeof v === "number" ? v.toFixed(3) : "—";
  const rows = sec.models.map((r) => `<tr data-phone-model="${esc(r.device)}"><td>${esc(r.model)}</td><td>${r.phones}</td>` +
    `<td>${ms(r.median_ms)}</td><td>${ms(r.baseline_median_ms)}</td><td class="mono">${esc(r.median_ms === null ? `not measured: ${r.error}` : (r.measured_on || "cache"))}</td></tr>`).join("");
  return `<table id="phone-models"><caption>Latency on every phone model of the farm (median ms)</caption>` +
    `<thead><tr><th>phone model</th><th>phones</th><th>pruned</th><th>unpruned</th><th>measured on</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// Best reward so far of the search's strategy and, with compare, of the baselines (curves.svg).
function drawCurves(job) {
  const img = $("#curves-plot");
  const svg = job.links.artifacts["curves.svg"];
  img.hidden = !svg;
  if (svg && img.dataset.url !== svg) {
    img.dataset.url = svg;
    objectURL(svg).then((u) => img.setAttribute("src", u)).catch(() => { delete img.dataset.url; });
  }
}

// Recovery (fine-tuning) after the search: one bar per search (a frontier has one per target).
function drawRecovery(job) {
  const box = $("#job-recovery");
  const epochs = job.spec.finetune_epochs || 0;
  const qatEpochs = job.spec.qat_epochs || 0;
  box.hidden = !(epochs > 0 || qatEpochs > 0);
  if (box.hidden) return;
  const latest = new Map(), latestQat = new Map();
  for (const r of job.recovery || []) {
    const key = r.target || "", seen = r.stage === "qat" ? latestQat : latest;
    if (!seen.has(key) || r.epoch >= seen.get(key).epoch) seen.set(key, r);
  }
  const keys = (job.spec.targets && job.spec.targets.length) ? job.spec.targets.map((t) => latestKey(latest, t)) : [""];
  const on = job.spec.train_data ? ` on ${esc(job.spec.train_data)}${job.spec.train_with_search ? " and the search split" : ""}`
    : " on the search split";
  box.innerHTML = `<div class="muted">Recovery: ${esc(job.spec.finetune_method || "distill")}, ${epochs} epoch${epochs === 1 ? "" : "s"}${on} after ${keys.length > 1 ? "each search" : "the search"}</div>` +
    keys.map((k) => {
      const r = latest.get(k);
      const done = r ? r.epoch : 0, total = r ? r.epochs : epochs;
      const info = r ? `epoch ${done} / ${total} · loss ${fmt(r.loss, 4)}` +
        (typeof r.holdout_accuracy === "number" ? ` · held-out ${pct(r.holdout_accuracy)}` : "") + ` · ${fmt(r.seconds, 1)} s/epoch` +
        (typeof r.eta_seconds === "number" && r.eta_seconds > 0 ? ` · ETA ${Math.round(r.eta_seconds / 60)} min` : "")
        : "waiting for the search";
      const q = latestQat.get(k);
      const qat = !qatEpochs ? "" : `<div class="row recovery-qat" data-target="${esc(k)}"><span class="muted">int8</span>${bar(q ? q.epoch / q.epochs : 0)}<span>${esc(q
        ? `quantization-aware epoch ${q.epoch} / ${q.epochs} · loss ${fmt(q.loss, 4)}` + (typeof q.holdout_accuracy === "number" ? ` · held-out (int8) ${pct(q.holdout_accuracy)}` : "")
        : `quantization-aware recovery: ${qatEpochs} epoch${qatEpochs === 1 ? "" : "s"} after recovery`)}</span></div>`;
      return `<div class="row recovery" data-target="${esc(k)}">${k ? `<span class="mono">${esc(k)}</span>` : ""}${bar(total ? done / total : 0)}<span>${esc(info)}</span></div>` + qat;
    }).join("");
}
// A frontier's targets as the job spec gave them may be spelled differently from the search's (flops=0.50).
function latestKey(latest, target) {
  if (latest.has(target)) return target;
  const [kind, value] = target.split("=");
  for (const k of latest.keys()) { const [k2, v2] = k.split("="); if (k2 === kind.toLowerCase() && +v2 === +value) return k; }
  return target;
}

function drawFrontier(job) {
  const box = $("#job-frontier");
  const f = job.report && Array.isArray(job.report.points) ? job.report : null;
  const isFrontier = !!(job.spec.targets || job.spec.references);
  box.hidden = !isFrontier;
  if (!isFrontier) return;
  const svg = job.links.artifacts["frontier.svg"];
  const img = $("#frontier-plot");
  img.hidden = !svg;
  if (svg && img.dataset.url !== svg) {
    img.dataset.url = svg;
    objectURL(svg).then((u) => img.setAttribute("src", u)).catch(() => { delete img.dataset.url; });
  }
  if (!f) {
    $("#frontier-table tbody").innerHTML = "";
    $("#frontier-phone-models").innerHTML = "";
    $("#frontier-note").textContent = job.state === "succeeded" ? "" : "the plot and the table appear when every search has finished";
    return;
  }
  const ms = (x) => typeof x === "number" ? x.toFixed(3) : "–";
  const macs = (x) => typeof x === "number" ? x.toLocaleString("en") : "–";
  const link = (p) => {
    const url = job.links.artifacts[`${p.dir}/report.md`];
    return url ? `<a href="${esc(url)}" class="mono" data-artifact="${esc(p.dir)}-report.md">${esc(p.target)}</a>` : `<span class="mono">${esc(p.target)}</span>`;
  };
  const u = f.unpruned || {};
  const rows = [`<tr class="unpruned"><td>${esc(u.name)} (unpruned)</td><td>${pct(u.accuracy)}</td><td>–</td><td>${ms(u.latency_measured_ms)}</td><td>${macs(u.macs)}</td><td>–</td></tr>`];
  for (const p of f.points) rows.push(`<tr class="point" data-target="${esc(p.target)}"><td>${link(p)}${p.budget_met === false ? " (budget not met)" : ""}</td>
    <td>${pct(p.accuracy)}</td><td>${pct(p.accuracy_before_recovery)}</td><td>${ms(p.latency_measured_ms)}</td><td>${macs(p.macs)}</td><td>${esc(p.blocks_removed)}</td></tr>`);
  for (const r of f.references || []) rows.push(`<tr class="reference"><td>${esc(r.name)} (reference)</td><td>${pct(r.accuracy)}</td><td>–</td>
    <td>${ms(r.latency_measured_ms)}</td><td>${macs(r.macs)}</td><td>–</td></tr>`);
  $("#frontier-table tbody").innerHTML = rows.join("");
  $("#frontier-note").textContent = `Accuracy on ${f.report_split}; latency measured on ${f.device} (median).`;
  $("#frontier-phone-models").innerHTML = frontierPhoneModels(f.latency_per_phone_model, link);
}

// A frontier's models (unpruned, each target, each reference) on every phone model of the farm.
function frontierPhoneModels(sec, link) {
  if (!sec) return "";
  if (!sec.models.length) return `<p class="muted" id="frontier-phone-models-note">${esc(sec.note)}</p>`;
  const ms = (v) => typeof v === "number" ? v.toFixed(3) : "—";
  const head = sec.models.map((m) => `<th data-phone-model="${esc(m.device)}">${esc(m.model)} (${m.phones})</th>`).join("");
  const name = (r) => r.kind === "point" ? link({ dir: r.dir, target: r.name }) : `${esc(r.name)} (${esc(r.kind)})`;
  const rows = sec.rows.map((r) => `<tr class="${esc(r.kind)}"><td>${name(r)}</td>` +
    sec.models.map((m) => `<td title="${esc((r.errors || {})[m.device] || "")}">${ms(r.ms[m.device])}</td>`).join("") + "</tr>").join("");
  return `<table id="frontier-phone-models-table"><caption>Latency on every phone model of the farm (median ms; phones per model)</caption>` +
    `<thead><tr><th>model</th>${head}</tr></thead><tbody>${rows}</tbody></table>`;
}

function poll(fn, ms) {
  const live = $("#live");
  const tick = async () => {
    let again = true;
    try { again = await fn(); live.className = "live"; live.textContent = again ? "live" : "finished"; live.title = "updates every second"; }
    catch (e) {
      if (e instanceof Unauthorized) return;  // the token form is shown; submitting it reloads the page
      live.className = "live off";
      // The server answered with a reason (503: its database is down, ...): say it; else it is unreachable.
      live.textContent = e instanceof ServerSaid ? `${e.message.slice(0, 160)} (retrying)` : "offline, retrying";
      live.title = e instanceof ServerSaid ? e.message : "the server does not answer (retrying)";
    }
    setTimeout(tick, again ? ms : ms * 5);
  };
  tick();
}

window.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("#token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    location.reload();
  });
  if (!token()) { askForToken(""); return; }
  const m = location.pathname.match(/^\/ui\/jobs\/([0-9a-f]+)/);
  if (m) {
    jobView.id = m[1];
    $("#job-view").hidden = false;
    poll(refreshJob, 1000);
  } else {
    $("#list-view").hidden = false;
    poll(refreshList, 2000);
    poll(async () => { await refreshDevices(); return true; }, 15000);
  }
});
