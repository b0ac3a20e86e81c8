// runq dashboard: one live snapshot a second over server-sent events (polling where
// EventSource is missing), rendered with plain DOM calls. Task names, arguments and
// errors come from users, so they only ever reach the page as text, never as HTML.
"use strict";

const STATES = ["pending", "scheduled", "waiting", "running", "succeeded", "failed", "cancelled"];
const HISTORY_SECONDS = 600;
const CHART_SECONDS = 300; // the widest window; it starts at one minute and grows with the history
const RATE_WINDOW = 5; // seconds of counter deltas behind each point of the finished/s line
const $ = (id) => document.getElementById(id);

// -- the token: taken from ?token= once, then kept for this tab only ---------------
const token = (() => {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem("runq-token", given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem("runq-token");
})();

function withToken(path) {
  return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  // The dashboard refuses a state change without a JSON content type (an HTML form cannot send one).
  if (options.body !== undefined || (options.method || "GET") !== "GET") headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body && JSON.stringify(options.body) });
  if (response.status === 401) location.replace("/");
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.detail;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail || response.statusText));
  }
  return data;
}

// -- small DOM helpers --------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 1 : 0) + " ms";
  if (value < 120) return value.toFixed(value < 10 ? 2 : 1) + " s";
  if (value < 7200) return (value / 60).toFixed(1) + " min";
  return (value / 3600).toFixed(1) + " h";
}

function ago(iso, now) {
  if (!iso) return "–";
  const age = Math.max(0, now - Date.parse(iso) / 1000);
  if (age < 60) return age.toFixed(0) + " s ago";
  if (age < 3600) return (age / 60).toFixed(0) + " min ago";
  if (age < 172800) return (age / 3600).toFixed(0) + " h ago";
  return new Date(iso).toLocaleString();
}

function shortId(id) {
  const dot = id.lastIndexOf(".");
  return dot < 0 ? id : id.slice(0, dot + 1) + "…" + id.slice(-6);
}

function taskLink(id) {
  return el("a", { href: "#" + id, class: "id", title: id, onclick: (e) => { e.preventDefault(); showTask(id); } },
    shortId(id));
}

function pill(status) {
  return el("span", { class: "pill st-" + status }, status);
}

function toast(message, bad = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, 3500);
}

// -- rendering one snapshot ---------------------------------------------------------
const history_ = [];
let lastSnapshot = null;

function render(snap) {
  lastSnapshot = snap;
  document.body.dataset.updated = snap.time; // lets scripts and tests wait for the next update
  const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const queue of Object.values(snap.stats.queues)) for (const s of STATES) totals[s] += queue[s] || 0;
  for (const s of STATES) document.querySelector(`[data-testid="count-${s}"]`).textContent = totals[s].toLocaleString();

  const counters = snap.stats.counters;
  $("counters").replaceChildren(...Object.entries(counters).map(([k, v]) =>
    el("div", {}, el("dt", {}, k), el("dd", {}, v.toLocaleString()))));
  for (const kind of ["wait", "run"]) for (const p of ["p50", "p95", "p99"]) $(`${kind}-${p}`).textContent = seconds(snap.stats[kind][p]);
  $("throughput").textContent = snap.stats.throughput.toFixed(1) + " /s";
  const kept = snap.retained;
  $("retained").textContent = kept.tasks.toLocaleString() + " tasks" +
    (kept.storage_bytes == null ? "" : " · broker store " + (kept.storage_bytes / 1e6).toFixed(1) + " MB");

  // A paused queue is marked, and listed even while empty; its button resumes it.
  const paused = new Set(snap.paused || []);
  const names = [...new Set([...Object.keys(snap.stats.queues), ...paused])].sort();
  fill($("queues"), names.map((name) => {
    const q = snap.stats.queues[name] || {};
    const on = paused.has(name);
    return el("tr", { "data-queue": name, class: on ? "paused" : null },
      el("th", {}, name, on ? el("span", { class: "pill bad", "data-testid": "paused-" + name }, "paused") : null),
      ...STATES.map((s) => el("td", { class: q[s] ? "n st-" + s : "n zero" }, q[s] || 0)),
      el("td", {}, el("button", { type: "button", "data-testid": "pause-" + name, onclick: () => pause(name, !on) },
        on ? "Resume" : "Pause")));
  }));

  renderWorkers(snap);
  renderPeriodic(snap);
  renderDead(snap);
  fill($("recent"), snap.recent.map((t) => el("tr", {},
    el("td", {}, taskLink(t.id)), el("td", {}, t.name), el("td", {}, t.queue), el("td", {}, pill(t.status)),
    el("td", { class: "n" }, t.attempts), el("td", {}, ago(t.enqueued_at, snap.time)))));

  const finished = (counters.succeeded || 0) + (counters.failed || 0);
  history_.push({ t: snap.time, finished, avg: snap.stats.throughput });
  while (history_.length && history_[0].t < snap.time - HISTORY_SECONDS) history_.shift();
  drawChart();
}

function renderWorkers(snap) {
  $("worker-count").textContent = snap.workers.length;
  $("workers-empty").hidden = snap.workers.length > 0;
  fill($("workers"), snap.workers.map((w) => {
    const busy = w.current.length / Math.max(1, w.concurrency);
    const stale = w.heartbeat_age > 10;
    return el("tr", {},
      el("td", { title: w.id }, el("b", {}, w.host), el("small", {}, " pid " + w.pid)),
      el("td", {}, `${w.pool} ×${w.concurrency}`),
      el("td", {}, w.queues.join(", ")),
      el("td", {}, el("span", { class: "bar", title: `${w.current.length} of ${w.concurrency} slots` },
        el("i", { style: `width:${Math.round(busy * 100)}%` }))),
      el("td", { class: "chips" }, ...(w.current.length ? w.current.map(taskLink) : [el("span", { class: "muted" }, "idle")])),
      el("td", { class: "n" }, Object.values(w.counts).reduce((a, b) => a + b, 0)),
      el("td", { class: stale ? "bad" : "" }, seconds(w.heartbeat_age) + " ago"));
  }));
}

function renderPeriodic(snap) {
  const rows = snap.periodic || [];
  $("periodic-count").textContent = rows.length;
  $("periodic-empty").hidden = rows.length > 0;
  fill($("periodic"), rows.map((p) => {
    const args = [...p.args.map((a) => JSON.stringify(a)), ...Object.entries(p.kwargs).map(([k, v]) => `${k}=${JSON.stringify(v)}`)];
    const due = Math.max(0, Date.parse(p.next_run) / 1000 - snap.time);
    return el("tr", { "data-periodic": p.name },
      el("td", {}, p.name), el("td", {}, el("code", {}, p.schedule)), el("td", { class: "muted" }, args.join(", ")),
      el("td", { title: p.next_run }, new Date(p.next_run).toLocaleString() + " (in " + seconds(due) + ")"));
  }));
}

function renderDead(snap) {
  $("dead-count").textContent = snap.dead.length + (snap.dead.length >= 50 ? "+" : "");
  $("dead-empty").hidden = snap.dead.length > 0;
  $("retry-all").disabled = $("purge").disabled = snap.dead.length === 0;
  fill($("dead"), snap.dead.map((t) => {
    const error = t.error ? `${t.error.type || "Error"}: ${t.error.message || ""}` : "";
    return el("tr", { "data-task": t.id },
      el("td", {}, taskLink(t.id)), el("td", {}, t.name), el("td", { class: "n" }, t.attempts),
      el("td", { class: "error", title: error }, error), el("td", {}, ago(t.finished_at, snap.time)),
      el("td", {}, el("button", { type: "button", "data-testid": "retry-" + t.id, onclick: () => retry(t.id) }, "Retry")));
  }));
}

// -- the throughput chart: drawn on a canvas, history kept in this tab ----------------
function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width) return;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const css = getComputedStyle(document.body);
  const [ink, grid, now, avg] = ["--muted", "--line", "--accent", "--ok"].map((v) => css.getPropertyValue(v).trim());

  const points = [];
  for (let i = 1, j = 0; i < history_.length; i++) {
    const b = history_[i];
    while (j < i - 1 && history_[j + 1].t <= b.t - RATE_WINDOW) j++;
    const a = history_[j], dt = b.t - a.t;
    if (dt > 0) points.push({ t: b.t, rate: Math.max(0, (b.finished - a.finished) / dt), avg: b.avg });
  }
  const end = history_.length ? history_[history_.length - 1].t : Date.now() / 1000;
  const span = history_.length ? end - history_[0].t : 0;
  const windowSeconds = Math.min(CHART_SECONDS, Math.max(60, Math.ceil(span / 30) * 30));
  const start = end - windowSeconds;
  const top = niceMax(Math.max(1, ...points.map((p) => Math.max(p.rate, p.avg))));
  const left = 40, bottom = height - 20, right = width - 8, topPx = 8;
  const x = (t) => left + ((t - start) / windowSeconds) * (right - left);
  const y = (v) => bottom - (v / top) * (bottom - topPx);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = ink;
  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (top / 4) * i, py = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(right, py); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(formatRate(v), left - 6, py + 4);
  }
  ctx.textAlign = "center";
  const tick = windowSeconds <= 60 ? 15 : windowSeconds <= 150 ? 30 : 60;
  for (let s = 0; s <= windowSeconds; s += tick) {
    ctx.textAlign = s === windowSeconds ? "left" : s === 0 ? "right" : "center";
    ctx.fillText(s === 0 ? "now" : s % 60 ? `-${s}s` : `-${s / 60}m`, x(end - s), height - 4);
  }

  const visible = points.filter((p) => p.t >= start);
  if (visible.length < 2) {
    ctx.fillText("collecting…", (left + right) / 2, (topPx + bottom) / 2);
    return;
  }
  ctx.beginPath();
  ctx.moveTo(x(visible[0].t), bottom);
  for (const p of visible) ctx.lineTo(x(p.t), y(p.rate));
  ctx.lineTo(x(visible[visible.length - 1].t), bottom);
  ctx.closePath();
  ctx.globalAlpha = 0.18; ctx.fillStyle = now; ctx.fill(); ctx.globalAlpha = 1;
  line(ctx, visible, x, (p) => y(p.rate), now, 1.5);
  line(ctx, visible, x, (p) => y(p.avg), avg, 2);
}

function line(ctx, points, x, y, color, width) {
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p)) : ctx.moveTo(x(p.t), y(p))));
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.stroke();
}

function niceMax(value) {
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * step).find((v) => v >= value);
}

function formatRate(v) {
  return v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(Number(v.toFixed(2)));
}

// -- actions --------------------------------------------------------------------------
async function retry(id) {
  try {
    await api(`/api/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" });
    document.querySelector(`#dead tr[data-task="${CSS.escape(id)}"]`)?.remove();
    toast(`Retried ${shortId(id)}`);
  } catch (err) {
    toast(`Retry failed: ${err.message}`, true);
  }
}

async function pause(queue, on) {
  try {
    await api(`/api/queues/${encodeURIComponent(queue)}/${on ? "pause" : "resume"}`, { method: "POST" });
    toast(`${on ? "Paused" : "Resumed"} ${queue}`);
    render({ ...lastSnapshot, paused: [...(lastSnapshot.paused || []).filter((q) => q !== queue), ...(on ? [queue] : [])] });
  } catch (err) {
    toast(`${on ? "Pause" : "Resume"} failed: ${err.message}`, true);
  }
}

async function cancel(id) {
  try {
    await api(`/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    toast(`Cancelled ${shortId(id)}`);
  } catch (err) {
    toast(`Cancel failed: ${err.message}`, true);
  }
}

$("retry-all").addEventListener("click", async () => {
  const ids = (lastSnapshot?.dead || []).map((t) => t.id);
  const results = await Promise.allSettled(ids.map((id) => api(`/api/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" })));
  const done = results.filter((r) => r.status === "fulfilled").length;
  toast(`Retried ${done} of ${ids.length} task(s)`, done < ids.length);
});

$("purge").addEventListener("click", async () => {
  if (!confirm("Delete every failed task in the dead-letter set? This cannot be undone.")) return;
  try {
    const { purged } = await api("/api/purge", { method: "POST", body: { status: "failed" } });
    $("dead").replaceChildren();
    toast(`Purged ${purged} task(s)`);
  } catch (err) {
    toast(`Purge failed: ${err.message}`, true);
  }
});

// -- task detail (search and links) -------------------------------------------------------
const FINAL = ["succeeded", "failed", "cancelled"];
let following = null; // the event stream of the task shown, while it is not final

function progressOf(p) {
  if (!p) return [];
  const text = [p.value !== null ? `${Math.round(p.value * 100)}%` : null, p.message].filter((x) => x).join(" · ");
  return [el("progress", { max: 1, value: p.value }), el("span", {}, text)]; // no value: an indeterminate bar
}

function follow(task) {
  if (following) following.close();
  following = null;
  if (FINAL.includes(task.status) || !window.EventSource) return;
  const source = new EventSource(withToken(`/api/tasks/${encodeURIComponent(task.id)}/events`));
  following = source;
  source.addEventListener("task", (e) => {
    const change = JSON.parse(e.data);
    $("detail-title").replaceChildren(el("span", {}, task.name + " "), pill(change.status));
    $("detail-progress").replaceChildren(...progressOf(change.progress));
    if (FINAL.includes(change.status)) showTask(task.id); // the result or the error, and the stream ends
  });
  source.addEventListener("error", () => { // ended, or the broker is down: no reconnect loop
    source.close();
    if (following === source) following = null;
  });
}

async function showTask(id) {
  const dialog = $("detail");
  let task;
  try {
    task = await api(`/api/tasks/${encodeURIComponent(id)}`);
  } catch (err) {
    toast(err.message, true);
    return;
  }
  $("detail-title").replaceChildren(el("span", {}, task.name + " "), pill(task.status));
  const rows = [["id", task.id], ["queue", task.queue], ["priority", task.priority], ["attempts", task.attempts],
    ["worker", task.worker], ["key", task.key], ["eta", task.eta], ["enqueued", task.enqueued_at],
    ["started", task.started_at], ["finished", task.finished_at]].filter(([, v]) => v !== null && v !== undefined);
  const blocks = [el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("div", { id: "detail-progress", class: "progress" }, ...progressOf(task.progress))];
  blocks.push(el("h3", {}, "arguments"), el("pre", {}, JSON.stringify({ args: task.args, kwargs: task.kwargs }, null, 2)));
  if (task.status === "succeeded") blocks.push(el("h3", {}, "result"), el("pre", {}, JSON.stringify(task.result, null, 2)));
  if (task.error) {
    const e = task.error;
    blocks.push(el("h3", {}, "error"), el("pre", { class: "error" }, `${e.type}: ${e.message}\n\n${e.traceback || ""}`.trim()));
  }
  $("detail-body").replaceChildren(...blocks);
  const final = ["succeeded", "failed", "cancelled"].includes(task.status);
  $("detail-retry").hidden = !["failed", "cancelled"].includes(task.status);
  $("detail-cancel").hidden = final;
  $("detail-retry").onclick = async () => { await retry(task.id); showTask(task.id); };
  $("detail-cancel").onclick = async () => { await cancel(task.id); showTask(task.id); };
  if (!dialog.open) dialog.showModal();
  follow(task);
}

$("detail").addEventListener("close", () => {
  if (following) following.close();
  following = null;
});

$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("search-id").value.trim();
  if (id) showTask(id);
});

// -- live updates -----------------------------------------------------------------------
function connected(ok, text) {
  const conn = $("conn");
  conn.dataset.state = ok ? "live" : "down";
  conn.textContent = text;
}

function connect() {
  if (!window.EventSource) {
    const poll = () => api("/api/snapshot").then((s) => { connected(true, "live"); render(s); })
      .catch((e) => connected(false, e.message)).finally(() => setTimeout(poll, 1000));
    poll();
    return;
  }
  const source = new EventSource(withToken("/api/events"));
  source.addEventListener("snapshot", (e) => { connected(true, "live"); render(JSON.parse(e.data)); });
  source.addEventListener("error", (e) => {
    if (e.data) connected(false, JSON.parse(e.data).detail);
    else connected(false, "reconnecting…");
  });
}

$("metrics-link").href = withToken("/metrics");
window.addEventListener("resize", drawChart);
if (location.hash.length > 1) showTask(decodeURIComponent(location.hash.slice(1)));
connect();
