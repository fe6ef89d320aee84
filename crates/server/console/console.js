// The admin console: asks for the admin key (kept in a variable of this module only: never in
// storage, a cookie or a URL), then polls the admin API (docs/admin-api.openapi.json) and draws
// nodes, charts, closes and the top orgs and channels; the live tail is ./tail.js. Everything the
// server sends is written with textContent (never as HTML).

import { call, describe, ApiError } from "./api.js";
import { Chart, formatNumber } from "./chart.js";
import { Tail } from "./tail.js";

/** How often /admin/api/info is asked; /stats and /top every STATS_EVERY polls. */
const POLL_MS = 1000;
const STATS_EVERY = 2;

/** Close codes (CONTRACT.md section 8). */
const CLOSE_MEANING = {
  1000: "normal close",
  1001: "server shutting down or draining",
  1005: "closed by the client, no code",
  1006: "abnormal (no close frame)",
  1008: "policy violation",
  1009: "frame too large",
  1011: "server error",
  4001: "token missing or invalid",
  4002: "token expired",
  4003: "no auth frame in time",
  4008: "rate limited",
  4009: "slow consumer",
  4029: "too many connections",
  other: "any other code",
};

const $ = (id) => document.getElementById(id);

/** The admin key: only here, in memory, while signed in. */
let key = null;
/** The current signed-in session (its poll loop stops when this changes). */
let session = null;

const charts = {
  connections: new Chart($("c-connections"), { label: "connections", color: "#4fa3ff" }),
  subscriptions: new Chart($("c-subscriptions"), { label: "subscriptions", color: "#b48cff" }),
  eventsPerSecond: new Chart($("c-events"), { label: "events/s", color: "#4cc38a" }),
  deliveriesPerSecond: new Chart($("c-deliveries"), { label: "deliveries/s", color: "#f2b84b" }),
};

function showError(text) {
  const el = $("error");
  el.textContent = text ?? "";
  el.hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function api(method, path, body) {
  if (key === null) return Promise.reject(new ApiError(401, "unauthorized", "signed out"));
  return call(key, method, path, body);
}

const tail = new Tail({
  mint: (orgId, channelId) => api("POST", "/admin/api/tail-token", { orgId, channelId }),
  list: $("tail-events"),
  status: (t) => ($("tail-status").textContent = t),
  error: (t) => {
    $("tail-error").textContent = t ?? "";
    $("tail-error").hidden = !t;
  },
});

// --- rendering ----------------------------------------------------------------------------------

function td(text, cls) {
  const c = document.createElement("td");
  c.textContent = text;
  if (cls) c.className = cls;
  return c;
}

/** Replaces a table body's rows; `empty` is shown in one cell when there are none. */
function fillTable(table, rows, columns, empty) {
  const body = table.tBodies[0];
  body.textContent = "";
  if (!rows.length) {
    const tr = document.createElement("tr");
    const c = td(empty, "empty");
    c.colSpan = columns;
    tr.append(c);
    body.append(tr);
    return;
  }
  for (const r of rows) body.append(r);
}

function uptime(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function ago(rfc3339) {
  const t = Date.parse(rfc3339);
  if (!Number.isFinite(t)) return "–";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  return s < 2 ? "now" : `${s}s ago`;
}

function rate(v) {
  return typeof v === "number" ? formatNumber(v) : "–";
}

function renderInfo(info) {
  $("t-connections").textContent = String(info.connections);
  $("t-subscriptions").textContent = String(info.subscriptions);
  $("t-events").textContent = rate(info.node?.eventsPerSecond);
  $("t-deliveries").textContent = rate(info.node?.deliveriesPerSecond);
  $("t-backplane").textContent = info.backplane ?? "–";
  const nodes = Array.isArray(info.nodes) ? info.nodes : info.node ? [info.node] : [];
  $("t-nodes").textContent = String(nodes.length);
  const selfId = info.node?.id;
  const rows = nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = n.id;
    if (n.id === selfId) tr.className = "self";
    const cells = [
      ["id", n.id],
      ["address", n.address],
      ["version", n.version],
      ["uptime", uptime(n.uptimeSeconds)],
      ["connections", String(n.connections), "num"],
      ["subscriptions", String(n.subscriptions), "num"],
      ["eventsPerSecond", rate(n.eventsPerSecond), "num"],
      ["deliveriesPerSecond", rate(n.deliveriesPerSecond), "num"],
      ["ready", n.ready ? "ready" : "not ready", n.ready ? "ready" : "not-ready"],
      ["lastSeen", ago(n.lastSeen)],
    ];
    for (const [field, text, cls] of cells) {
      const c = td(text, cls);
      c.dataset.field = field;
      tr.append(c);
    }
    tr.title = `started ${n.startedAt}`;
    return tr;
  });
  fillTable($("nodes"), rows, 10, "no node");
}

function renderStats(stats) {
  const points = Array.isArray(stats.points) ? stats.points : [];
  const interval = Number(stats.intervalSeconds) || 1;
  const span = Math.max(points.length * interval, 60);
  for (const [field, chart] of Object.entries(charts)) {
    chart.set(
      points.map((p) => ({ t: Date.parse(p.t), v: Number(p[field]) })),
      span,
    );
  }
  $("chart-span").textContent = points.length ? `last ${uptime(points.length * interval)}, every ${interval} s` : "";
  // Numeric codes in order, then "other".
  const rank = (code) => (code === "other" ? Infinity : Number(code));
  const closes = Object.entries(stats.closes ?? {})
    .map(([code, n]) => [code, Number(n)])
    .sort((a, b) => rank(a[0]) - rank(b[0]));
  const rows = closes.map(([code, n]) => {
    const tr = document.createElement("tr");
    tr.dataset.code = String(code);
    if (n === 0) tr.className = "zero";
    tr.append(td(String(code), "num"), td(CLOSE_MEANING[code] ?? ""), td(String(n), "num"));
    tr.lastChild.dataset.field = "count";
    return tr;
  });
  fillTable($("closes"), rows, 3, "no connection closed yet");
}

function renderTop(top) {
  $("top-window").textContent = top.windowSeconds ? `last ${top.windowSeconds} s (estimates)` : "";
  const orgs = (top.orgs ?? []).map((o) => {
    const tr = document.createElement("tr");
    tr.dataset.org = o.orgId;
    tr.append(td(o.orgId), td(String(o.events), "num"), td(rate(o.eventsPerSecond), "num"));
    return tr;
  });
  fillTable($("top-orgs"), orgs, 3, "no events in the window");
  const channels = (top.channels ?? []).map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.org = c.orgId;
    tr.dataset.channel = c.channelId;
    tr.append(td(c.orgId), td(c.channelId), td(String(c.events), "num"), td(rate(c.eventsPerSecond), "num"));
    return tr;
  });
  fillTable($("top-channels"), channels, 4, "no events in the window");
}

// --- session --------------------------------------------------------------------------------------

/** A failed call while signed in: a wrong key or a 429 signs out; anything else is shown and retried. */
function failed(e) {
  if (e instanceof ApiError && (e.status === 401 || e.status === 429)) {
    signOut(describe(e));
    return;
  }
  showError(describe(e));
  setStatus("signed in: the last poll failed");
}

async function poll(s) {
  if (session !== s) return;
  try {
    const want = s.polls % STATS_EVERY === 0;
    const [info, stats, top] = await Promise.all([
      api("GET", "/admin/api/info"),
      want ? api("GET", "/admin/api/stats") : undefined,
      want ? api("GET", "/admin/api/top?limit=10") : undefined,
    ]);
    if (session !== s) return;
    renderInfo(info);
    if (stats) renderStats(stats);
    if (top) renderTop(top);
    showError(null);
    setStatus(`signed in · updated ${new Date().toLocaleTimeString()}`);
    document.body.dataset.polls = String(s.polls + 1);
  } catch (e) {
    if (session === s) failed(e);
  } finally {
    s.polls += 1;
    if (session === s) s.timer = setTimeout(() => poll(s), POLL_MS);
  }
}

async function signIn(candidate) {
  showError(null);
  setStatus("checking the key…");
  $("login-button").disabled = true;
  try {
    // the first call decides: a wrong key never shows the dashboard
    const info = await call(candidate, "GET", "/admin/api/info");
    key = candidate;
    session = { polls: 0, timer: undefined };
    $("login").hidden = true;
    $("dash").hidden = false;
    $("signout").hidden = false;
    renderInfo(info);
    for (const c of Object.values(charts)) c.draw();
    poll(session);
  } catch (e) {
    key = null;
    setStatus("signed out");
    showError(describe(e));
    $("key").focus();
  } finally {
    $("login-button").disabled = false;
  }
}

function signOut(reason) {
  if (session) clearTimeout(session.timer);
  session = null;
  key = null;
  tail.stop();
  $("dash").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  setStatus("signed out");
  showError(reason ?? null);
}

// --- wiring -------------------------------------------------------------------------------------

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("key");
  const candidate = input.value;
  input.value = ""; // the key does not stay in the DOM
  if (!candidate) {
    showError("Enter the admin key.");
    return;
  }
  signIn(candidate);
});

$("signout").addEventListener("click", () => signOut(null));

$("tail-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const orgId = $("tail-org").value.trim();
  const channelId = $("tail-channel").value.trim();
  $("tail-stop").disabled = false;
  try {
    await tail.start(orgId, channelId);
  } catch (e) {
    tail.stop();
    $("tail-error").textContent = `Live tail: ${describe(e)}`;
    $("tail-error").hidden = false;
    if (e instanceof ApiError && (e.status === 401 || e.status === 429)) failed(e);
  }
  $("tail-stop").disabled = !tail.running;
});

$("tail-stop").addEventListener("click", () => {
  tail.stop();
  $("tail-stop").disabled = true;
});

document.body.dataset.ready = "true";
