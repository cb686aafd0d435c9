"use strict";
const STATE_EVERY_MS = 2000, LOG_EVERY_MS = 1000, LOG_KEEP = 200;
const $ = (id) => document.getElementById(id);
const errors = { state: "", log: "" };
let refreshes = 0, chartRows = -1, logAfter = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function safe(word) { return String(word).replace(/[^a-z_]/gi, ""); }
function num(v, digits) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "\u2013";
}
function setText(id, text) { $(id).textContent = text; }
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
}
function chip(status) { return el("span", status, "chip s-" + safe(status)); }
function desc(text) {
  const d = el("div", text, "desc");
  d.title = String(text || "");
  return d;
}
function cell(tr, content, cls) {
  const td = el("td", null, cls);
  if (content instanceof Node) td.append(content);
  else td.textContent = content === undefined || content === null ? "" : String(content);
  tr.append(td);
  return td;
}
function fill(tableId, items, build, empty) {
  const table = $(tableId);
  const rows = items.map(build);
  if (!rows.length) {
    const tr = el("tr", null, "empty");
    cell(tr, empty).colSpan = table.tHead.rows[0].cells.length;
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
}
function showErrors() {
  const text = [errors.state, errors.log].filter(Boolean).join("; ");
  $("error").hidden = !text;
  $("error").textContent = text;
}

function renderHeader(s) {
  setText("tag", s.tag);
  document.title = "autoresearch " + s.tag;
  const pill = $("run-status");
  const paused = s.running && s.state && s.state.paused === "1";
  pill.textContent = paused ? "paused" : s.running ? "running" : (s.stop_reason || "not running");
  pill.className = "pill " + (s.running ? "on" : "off");
  document.body.dataset.running = s.running ? "1" : "0";
  setText("updated", "updated " + clock(s.now));
  setText("experiments", String(s.experiments));
  setText("per-hour", num(s.per_hour, 1) + " / hour over " + num(s.hours, 2) + " h");
  setText("best", s.best ? num(s.best.val_bpb, 6) : "\u2013");
  setText("best-note", s.best ? s.best.id + "  " + s.best.description : "no baseline yet");
  const base = s.baseline;
  const pct = s.gain !== null && base && base.val_bpb ? 100 * s.gain / base.val_bpb : null;
  setText("gain", num(s.gain, 6));
  setText("baseline", base ? "baseline " + num(base.val_bpb, 6) + " (" + num(pct, 2) + " %)" : "");
  const nz = s.noise;
  setText("noise", num(nz.sigma, 4) + " / " + num(nz.margin, 4));
  setText("noise-note", "\u03c3 from " + nz.dof + " dof");
  const llm = s.llm;
  setText("llm-cost", "$" + num(llm.cost_usd, 4));
  const tokens = (llm.prompt_tokens + llm.completion_tokens).toLocaleString("en-US");
  setText("llm-tokens", tokens + " tokens" + (llm.model ? " \u00b7 " + llm.model : ""));
  setText("queued", String(s.queue.queued));
  setText("waiting", s.queue.waiting.length ? s.queue.waiting.join(" ") : "nothing waiting");
  const counts = Object.entries(s.counts).sort((a, b) => b[1] - a[1]);
  $("counts").replaceChildren(...counts.map(([k, v]) => chip(k + " " + v)),
    ...Object.entries(s.cages || {}).map(([k, v]) => chip("cage " + k + " " + v)));
}

function renderChart(s) {
  if (s.rows === chartRows) return;
  chartRows = s.rows;
  if (s.rows > 0) $("chart").src = "/progress.png?rows=" + s.rows;
}

function workerRow(w, tag) {
  const tr = el("tr");
  tr.dataset.worker = w.name;
  tr.dataset.exp = w.exp_id || "";
  const who = el("div");
  who.append(el("div", w.name, "id"));
  who.append(el("div", [w.host, w.gpu, w.state].filter(Boolean).join(" \u00b7 "), "small"));
  if (w.hardware) who.append(el("div", w.hardware, "small hardware"));  // its signature
  cell(tr, who);
  if (!w.exp_id) {
    cell(tr, "idle", "small").colSpan = 5;
    return tr;
  }
  const what = el("div");
  const other = w.tag && w.tag !== tag ? w.tag + "/" : "";
  what.append(el("span", other + w.exp_id, "id exp"));
  what.append(desc(w.description));
  cell(tr, what);
  cell(tr, w.phase || "", "phase");
  cell(tr, w.step === undefined ? "" : w.step, "num step");
  cell(tr, typeof w.loss === "number" ? w.loss.toFixed(4) : (w.loss ?? ""), "num loss");
  const left = cell(tr, w.remaining_s === undefined ? "" : Math.round(w.remaining_s) + " s",
    "num left");
  if (typeof w.progress === "number") {
    const bar = el("div", null, "bar"), fillBar = el("div");
    fillBar.style.width = Math.max(0, Math.min(100, 100 * w.progress)) + "%";
    bar.append(fillBar);
    left.append(bar);
  }
  return tr;
}

function keptRow(r, i, base) {
  const tr = el("tr");
  tr.dataset.id = r.id;
  cell(tr, r.id, "id");
  const v = typeof r.mean === "number" ? r.mean : r.val_bpb;  // the mean over its runs
  cell(tr, num(v, 6), "num");
  const delta = base && typeof v === "number" ? v - base : null;
  cell(tr, i === 0 ? "baseline" : num(delta, 6), "num");
  cell(tr, desc(r.why ? r.description + "  (why: " + r.why + ")" : r.description));
  return tr;
}

function lastRow(r) {
  const tr = el("tr");
  tr.dataset.id = r.id;
  cell(tr, r.id, "id");
  cell(tr, chip(r.status));
  cell(tr, r.val_bpb, "num");
  cell(tr, desc(r.description));
  cell(tr, desc(r.error), "small");
  return tr;
}

function render(s) {
  renderHeader(s);
  renderChart(s);
  setText("worker-count", String(s.workers.length));
  fill("workers", s.workers, (w) => workerRow(w, s.tag), "no worker connected");
  const base = s.baseline ? s.baseline.val_bpb : null;
  const kept = s.kept.map((r, i) => keptRow(r, i, base)).reverse();
  fill("leaderboard", kept, (tr) => tr, "no baseline yet");
  fill("last", s.last.slice().reverse(), lastRow, "no results yet");
}

function logLine(e) {
  const line = el("div", null, "line k-" + safe(e.kind));
  line.dataset.id = e.id;
  line.dataset.kind = e.kind;
  if (e.event === "decided") {
    line.classList.add("decided");
    line.dataset.status = e.status || "";
  }
  line.append(el("span", clock(e.t), "t"), el("span", e.id || "run", "id"));
  if (e.phase) line.append(el("span", e.phase, "ph"));
  line.append(el("span", e.text, "tx"));
  return line;
}

function appendLog(entries) {
  if (!entries.length) return;
  const box = $("log");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(...entries.map(logLine));
  while (box.childElementCount > LOG_KEEP) box.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    let why = "HTTP " + r.status;
    try { why += ": " + (await r.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(why);
  }
  return r.json();
}

async function pollState() {
  try {
    render(await getJSON("/api/state"));
    refreshes += 1;
    document.body.dataset.updated = String(refreshes);
    errors.state = "";
  } catch (err) {
    errors.state = "state: " + err.message;
  }
  showErrors();
  setTimeout(pollState, STATE_EVERY_MS);
}

async function pollLog() {
  let wait = LOG_EVERY_MS;
  try {
    const query = logAfter === null ? "" : "?after=" + encodeURIComponent(logAfter);
    const data = await getJSON("/api/log" + query);
    appendLog(data.entries);
    logAfter = data.last;
    if (data.more) wait = 0;
    errors.log = "";
  } catch (err) {
    errors.log = "log: " + err.message;
  }
  showErrors();
  setTimeout(pollLog, wait);
}

const chart = $("chart");
chart.onload = () => {
  chart.hidden = false;
  $("chart-empty").hidden = true;
  chart.dataset.chartLoaded = "1";
};
chart.onerror = () => {
  if (chart.dataset.chartLoaded !== "1") setText("chart-empty", "chart unavailable");
};
pollState();
pollLog();
