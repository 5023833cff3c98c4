// The operator's page: fleet, live plots, learning, registry, events and audit, and the software stop.
"use strict";

const KEPT_S = 65;          // seconds of live data kept per robot (the longest window, and a little)
const STALE_AFTER_MS = 1000; // no message, or a silent learner, this long: STALE
const GAP_S = 0.25;          // rows further apart than this are drawn with a gap (the reset between episodes)
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f"];

const state = {
  token: null, who: null, robot: null, ws: null, backoff: 500, lastMessage: 0, feedAge: null,
  fleet: {}, buffers: {}, selected: null, plots: {}, dirty: false, fleetDirty: false, plotsBuiltFor: null,
};
window.dashboardStats = { frames: [], work: [], stops: [], messages: 0, samples: 0, dropped: 0 };

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
};
const operator = () => state.who && state.who.role !== "viewer";

function toast(text) {
  const t = $("toast"); t.textContent = text; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { "Authorization": `Bearer ${state.token}`,
    "Content-Type": "application/json", ...(options.headers || {}) } });
  if (response.status === 401) { showLogin(); throw new Error("the token was refused"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body && body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

async function control(path, body, what) {
  try {
    const answer = await api(path, { method: "POST", body: JSON.stringify(body) });
    toast(`${what}: ${answer.audit ? answer.audit.outcome : "done"}`);
    refreshAudit(); refreshRegistry();
  } catch (error) { toast(`${what} failed: ${error.message}`); }
}

// ---- auth ----------------------------------------------------------------------------------------------------------

function showLogin() {
  sessionStorage.removeItem("robot-app-token");
  $("login").hidden = false;
}

async function start() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {  // kept for this tab; taken off the address bar and the history
    sessionStorage.setItem("robot-app-token", fromUrl);
    history.replaceState(null, "", location.pathname);
  }
  state.token = sessionStorage.getItem("robot-app-token");
  if (!state.token) { showLogin(); return; }
  try {
    state.who = await api("/api/whoami");
    state.robot = await api("/api/robot");
  } catch (error) { toast(error.message); return; }
  $("login").hidden = true;
  $("who").textContent = `${state.who.name} (${state.who.role})`;
  for (const id of ["stop-fleet", "reset-fleet", "rollback"]) $(id).hidden = !operator();
  connect();
  refreshLearning(); refreshRegistry(); refreshAudit();
  setInterval(refreshLearning, 5000); setInterval(refreshRegistry, 3000); setInterval(refreshAudit, 3000);
  setInterval(checkStale, 200); setInterval(renderFleet, 250);
  requestAnimationFrame(frame);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("robot-app-token", $("token-input").value.trim());
  location.reload();
});

// ---- the live socket -----------------------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`, ["robot-app.v1", `bearer.${state.token}`]);
  state.ws = ws;
  ws.onopen = () => { state.backoff = 500; setConnection("live", "ok"); };
  ws.onmessage = (event) => take(JSON.parse(event.data));
  ws.onclose = () => {
    setConnection(`disconnected; retrying in ${(state.backoff / 1000).toFixed(1)} s`, "bad");
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 10000);
  };
}

function setConnection(text, kind) { const c = $("connection"); c.textContent = text; c.className = `badge ${kind}`; }

function checkStale() {
  const open = state.ws && state.ws.readyState === WebSocket.OPEN;
  const silent = performance.now() - state.lastMessage > STALE_AFTER_MS;
  const learnerSilent = state.feedAge === null || state.feedAge * 1000 > STALE_AFTER_MS;
  const why = !open ? "the dashboard's socket is closed" : silent ? "no data from the dashboard" :
    learnerSilent ? "no telemetry from the learner" : "";
  $("stale").hidden = !why;
  $("stale").title = why;
  $("stale").textContent = why ? `STALE: ${why}` : "STALE";
}

function take(message) {
  state.lastMessage = performance.now();
  state.feedAge = message.feed_age_s;
  state.fleet = message.fleet;
  state.fleetDirty = true;
  const stats = window.dashboardStats;
  stats.messages++; stats.dropped = message.dropped;
  for (const batch of message.data) {
    for (const [robot, columns] of Object.entries(batch)) { append(robot, columns); stats.samples += columns.t.length; }
  }
  for (const event of message.events) addEvent(event);
  if (!state.selected && Object.keys(state.fleet).length) selectRobot(Object.keys(state.fleet)[0]);
  state.dirty = true;
}

function append(robot, columns) {
  let buffer = state.buffers[robot];
  if (!buffer) {
    buffer = state.buffers[robot] = { t: [], q: columns.q.map(() => []), dq: columns.dq.map(() => []),
      cmd: columns.cmd.map(() => []), act: columns.act.map(() => []), r: [], arrivals: [] };
  }
  const last = buffer.t[buffer.t.length - 1];
  if (last !== undefined && columns.t[0] - last > GAP_S) {  // between episodes: a gap, not a line across it
    buffer.t.push(last + 1e-3); buffer.r.push(null);
    for (const name of ["q", "dq", "cmd", "act"]) buffer[name].forEach((series) => series.push(null));
  }
  buffer.t.push(...columns.t); buffer.r.push(...columns.r);
  for (const name of ["q", "dq", "cmd", "act"]) columns[name].forEach((values, i) => buffer[name][i].push(...values));
  const latest = buffer.t[buffer.t.length - 1];
  if (buffer.t[0] > latest - KEPT_S - 5) return;  // trimmed in steps of 5 s, not searched at every batch
  const cut = buffer.t.findIndex((t) => t >= latest - KEPT_S);
  if (cut > 0) {
    buffer.t.splice(0, cut); buffer.r.splice(0, cut);
    for (const name of ["q", "dq", "cmd", "act"]) buffer[name].forEach((series) => series.splice(0, cut));
  }
}

// ---- fleet ---------------------------------------------------------------------------------------------------------

function renderFleet() {
  if (!state.fleetDirty) return;
  state.fleetDirty = false;
  const robots = Object.values(state.fleet);
  const body = $("fleet-table").querySelector("tbody");
  body.replaceChildren(...robots.map((r) => {
    const latched = r.estop || r.fault;
    const buttons = el("td");
    buttons.append(el("button", { onclick: () => selectRobot(r.robot) }, "live"));
    if (operator()) {
      buttons.append(el("button", { class: "control stop-robot", "data-robot": r.robot,
        onclick: () => control("/api/stop", { robot: r.robot }, `software stop of ${r.robot}`) }, "stop"));
      buttons.append(el("button", { class: "control reset-robot", "data-robot": r.robot,
        onclick: () => confirmReset(r.robot) }, "reset…"));
    }
    return el("tr", { class: latched ? "latched" : "", "data-robot": r.robot },
      el("td", {}, r.robot),
      el("td", { class: r.link_up ? "up" : "down" }, `${r.link_up ? "up" : "DOWN"} ${r.link_age_s.toFixed(1)} s`),
      el("td", {}, r.version || "—"),
      el("td", {}, r.episode ?? "—"),
      el("td", {}, `${r.return ?? "—"}${r.last_return !== null ? ` (last ${r.last_return})` : ""}`),
      el("td", { class: "estop" }, r.estop ? `LATCHED: ${r.estop}` : "off"),
      el("td", { class: "fault" }, r.fault || "none"),
      el("td", {}, r.jitter_p99_us === null ? "—" : `${r.jitter_p99_us} µs`),
      el("td", {}, r.interventions_per_min.toFixed(1)),
      el("td", { class: "plan-fallbacks" },
        r.plan_fallback_share === null ? "—" : `${(100 * r.plan_fallback_share).toFixed(1)}%`),
      el("td", {}, r.backlog ?? "—"),
      buttons);
  }));
  $("fleet-empty").hidden = robots.length > 0;
  const stopped = robots.filter((r) => r.estop).length;
  const plural = robots.length > 1 ? "s" : "";
  $("fleet-state").textContent = robots.length ? `${stopped} of ${robots.length} robot${plural} e-stopped` : "";
  $("fleet-state").className = `badge ${stopped ? "bad" : "ok"}`;
  const select = $("live-robot");
  if (select.options.length !== robots.length) {
    select.replaceChildren(...robots.map((r) => el("option", { value: r.robot }, r.robot)));
    if (state.selected) select.value = state.selected;
  }
}

function confirmReset(robot) {
  const what = robot ? `robot ${robot}` : "every robot";
  if (confirm(`Release the software stop of ${what}? The robot may move again at its next episode.`)) {
    control("/api/reset", { robot, confirm: true }, `reset of ${what}`);
  }
}

function stopFleet() {
  window.dashboardStats.stops.push(performance.timeOrigin + performance.now());  // epoch ms, for the benchmark
  control("/api/stop", {}, "software stop of the fleet");
}

$("stop-fleet").addEventListener("click", stopFleet);
$("reset-fleet").addEventListener("click", () => confirmReset(null));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && operator()) { event.preventDefault(); stopFleet(); }
});

// ---- live plots ----------------------------------------------------------------------------------------------------

function selectRobot(robot) {
  state.selected = robot;
  $("live-robot").value = robot;
  state.plotsBuiltFor = null;
  state.dirty = true;
}
$("live-robot").addEventListener("change", (event) => selectRobot(event.target.value));

function series(labels, dash) {
  return labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.2,
    dash: dash ? dash[i] : undefined }));
}

function buildPlots(buffer) {
  for (const plot of Object.values(state.plots)) plot.destroy();
  const joints = state.robot.joints, actuators = state.robot.actuators;
  const width = Math.max(480, ($("plot-q").parentElement.clientWidth || 600) - 10);
  const make = (id, labels, dash) => new uPlot({ width, height: 220, legend: { live: false },
    scales: { x: { time: false } }, axes: [{ label: "robot time (s)" }, {}],
    cursor: { drag: { x: true, y: false } }, series: [{ label: "t" }, ...series(labels, dash)] }, [[]], $(id));
  const limits = actuators.flatMap((a) => [`${a} low limit`, `${a} high limit`]);
  state.plots = {
    q: make("plot-q", joints), dq: make("plot-dq", joints.map((j) => `${j} velocity`)),
    cmd: make("plot-cmd", [...actuators.map((a) => `${a} command`), ...actuators.map((a) => `${a} policy`), ...limits],
      [...actuators.map(() => undefined), ...actuators.map(() => [4, 3]), ...limits.map(() => [2, 4])]),
    r: make("plot-r", ["reward"]),
  };
  state.plotsBuiltFor = state.selected;
}

function drawLive() {
  const buffer = state.buffers[state.selected];
  if (!buffer || !buffer.t.length || !$("follow").checked) return;
  if (state.plotsBuiltFor !== state.selected) buildPlots(buffer);
  const windowS = Number($("window").value);
  const latest = buffer.t[buffer.t.length - 1];
  let from = buffer.t.length - 1;
  while (from > 0 && buffer.t[from - 1] >= latest - windowS) from--;
  // At most two points per pixel column (more cost drawing time and show nothing more), and a gap kept a gap.
  const columns = 2 * state.plots.q.bbox.width / devicePixelRatio;
  const stride = Math.max(1, Math.floor((buffer.t.length - from) / columns));
  const picks = [];
  for (let i = from; i < buffer.t.length; i += stride) {
    const last = picks[picks.length - 1];
    if (last !== undefined && buffer.t[i] - buffer.t[last] > GAP_S) picks.push(-1 - last);  // a gap after `last`
    picks.push(i);
  }
  const every = (values) => picks.map((i) => (i >= 0 ? values[i] : null));
  const t = picks.map((i) => (i >= 0 ? buffer.t[i] : buffer.t[-1 - i] + 1e-3));
  const cut = (series) => series.map(every);
  const low = state.robot.command_low, high = state.robot.command_high;
  const limits = low.flatMap((l, i) => [t.map(() => l), t.map(() => high[i])]);
  const data = { q: [t, ...cut(buffer.q)], dq: [t, ...cut(buffer.dq)],
    cmd: [t, ...cut(buffer.cmd), ...cut(buffer.act), ...limits], r: [t, every(buffer.r)] };
  for (const [name, plot] of Object.entries(state.plots)) {
    plot.setData(data[name], false);
    plot.setScale("x", { min: latest - windowS, max: latest });
  }
  const recent = buffer.t.length - 1 - buffer.t.findLastIndex((v) => v < latest - 2);
  const rate = `${(recent / 2).toFixed(0)} Hz`;
  for (const name of ["q", "dq", "cmd", "r"]) $(`rate-${name}`).textContent = rate;
}

let lastFrame = null;
function frame(now) {
  const stats = window.dashboardStats;
  if (lastFrame !== null) { stats.frames.push(now - lastFrame); if (stats.frames.length > 5000) stats.frames.shift(); }
  lastFrame = now;
  if (state.dirty) {
    state.dirty = false;
    const started = performance.now();
    drawLive();
    stats.work.push(performance.now() - started); if (stats.work.length > 5000) stats.work.shift();
  }
  requestAnimationFrame(frame);
}

// ---- learning ------------------------------------------------------------------------------------------------------

function curve(id, xLabel, labels, data, logY) {
  const target = $(id);
  const width = Math.max(480, (target.parentElement.clientWidth || 600) - 10);
  if (target.plot && target.plot.series.length !== labels.length + 1) { target.plot.destroy(); target.plot = null; }
  if (!target.plot) {
    target.plot = new uPlot({ width, height: 220, scales: { x: { time: false }, y: logY ? { distr: 3 } : {} },
      axes: [{ label: xLabel }, {}], series: [{ label: xLabel }, ...series(labels)] }, data, target);
  } else target.plot.setData(data);
}

async function refreshLearning() {
  let rows;
  try { rows = await api("/api/learning"); } catch { return; }
  if (!rows.length) return;
  const transitions = rows.map((r) => r.transitions), updates = rows.map((r) => r.updates);
  const returns = rows.map((r) => r.recent_return);
  curve("plot-return-t", "transitions", ["return"], [transitions, returns]);
  curve("plot-return-u", "updates", ["return"], [updates, returns]);
  curve("plot-ups", "transitions", ["updates/s"], [transitions, rows.map((r) => r.updates_per_s)]);
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.losses)))].sort();
  if (names.length) {
    curve("plot-losses", "transitions", names,
      [transitions, ...names.map((n) => rows.map((r) => (r.losses[n] > 0 ? r.losses[n] : null)))], true);
  }
}

// ---- registry, events, audit ---------------------------------------------------------------------------------------

async function refreshRegistry() {
  let policies, history;
  try { [policies, history] = await Promise.all([api("/api/policies"), api("/api/history")]); } catch { return; }
  $("policies").querySelector("tbody").replaceChildren(...policies.slice().reverse().map((p) => {
    const actions = el("td", {}, el("button", { onclick: () => showReport(p.version) }, "report"));
    if (operator() && (p.state === "validated" || p.state === "retired")) {
      actions.append(el("button", { class: "control deploy", "data-version": p.version, onclick: () => {
        if (confirm(`Deploy ${p.version}? The robots switch to it at their next episode.`)) {
          control("/api/deploy", { version: p.version, confirm: true }, `deploy of ${p.version}`);
        }
      } }, "deploy…"));
    }
    return el("tr", { "data-version": p.version, "data-state": p.state }, el("td", {}, p.version),
      el("td", { class: "state" }, p.state), el("td", {}, p.verdict || "—"),
      el("td", {}, p.return_mean === null ? "—" : p.return_mean.toFixed(1)),
      el("td", {}, p.success_rate === null ? "—" : p.success_rate.toFixed(2)),
      el("td", {}, p.reasons.join("; ")), el("td", {}, p.training_step), actions);
  }));
  $("history").querySelector("tbody").replaceChildren(...history.slice(0, 100).map((h) => el("tr", {},
    el("td", {}, h.at), el("td", {}, h.version), el("td", {}, `${h.from_state || "—"} → ${h.to_state}`),
    el("td", {}, h.actor), el("td", {}, h.reason))));
}

async function showReport(version) {
  let policy;
  try { policy = await api(`/api/policies/${version}`); } catch (error) { toast(error.message); return; }
  $("report").hidden = false;
  $("report-title").textContent = `${version}: ${policy.state}, ${policy.verdict || "not judged"}` +
    (policy.reasons.length ? ` (${policy.reasons.join("; ")})` : "");
  const plots = $("report-plots");
  plots.replaceChildren();
  for (const name of ["returns.png", "traces.png"]) {
    const response = await fetch(`/api/policies/${version}/plots/${name}`,
      { headers: { "Authorization": `Bearer ${state.token}` } });
    if (response.ok) plots.append(el("img", { src: URL.createObjectURL(await response.blob()), alt: name }));
  }
  $("report-history").querySelector("tbody").replaceChildren(...policy.history.map((h) => el("tr", {},
    el("td", {}, h.at), el("td", {}, `${h.from_state || "—"} → ${h.to_state}`), el("td", {}, h.actor),
    el("td", {}, h.reason))));
}

$("rollback").addEventListener("click", () => {
  if (confirm("Roll back to the policy deployed before the current one?")) {
    control("/api/rollback", { confirm: true }, "rollback");
  }
});

function addEvent(event) {
  const list = $("event-list");
  const robot = event.robot ? `${event.robot}: ` : "";
  list.prepend(el("li", { class: `event ${event.kind}` }, `${event.at} ${robot}${event.text}`));
  while (list.children.length > 200) list.lastChild.remove();
}

async function refreshAudit() {
  let entries;
  try { entries = await api("/api/audit"); } catch { return; }
  $("audit").querySelector("tbody").replaceChildren(...entries.map((a) => el("tr", {},
    el("td", {}, a.at), el("td", {}, a.who), el("td", {}, a.role), el("td", {}, a.action), el("td", {}, a.target),
    el("td", {}, a.outcome), el("td", {}, a.detail))));
}

start();
