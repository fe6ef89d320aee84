// Browser tests: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) on a
// page served from 127.0.0.1 that loads the built package (dist/) as an ES module, subscribes,
// receives events published here, and resumes across a proxy cut (recovered:true) and a server
// restart (recovered:false). Then what a browser cannot see: a refused Origin (HTTP 403) and an
// expired `?token=` (HTTP 401) both look like close 1006 to the page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { pkgDir, startServer, startProxy, makeToken, signToken, publish, chat, sleep } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHANNEL = "task:browser";

let site;
let server;
let proxy;
let browser;
let page;
const pageErrors = [];

/** A tiny static server: `/` is the test page, `/dist/*` the built package. */
async function startSite() {
  const types = { ".js": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8", ".map": "application/json" };
  const srv = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    let file;
    if (url.pathname === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === "/") file = path.join(pkgDir, "test/browser/page.html");
    else if (url.pathname.startsWith("/dist/")) {
      file = path.join(pkgDir, path.normalize(url.pathname).replace(/^(\.\.[/\\])+/, ""));
      if (!file.startsWith(path.join(pkgDir, "dist") + path.sep)) file = undefined;
    }
    if (!file || !existsSync(file)) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(await readFile(file));
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return { srv, origin: `http://127.0.0.1:${srv.address().port}` };
}

before(async () => {
  site = await startSite();
  // only this page's Origin may connect: the browser really sends one
  server = await startServer({ extraArgs: ["--allowed-origin", site.origin] });
  proxy = await startProxy(server.port);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = await browser.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    // Chromium logs every failed WebSocket handshake (expected while the server restarts)
    if (m.type() === "error" && !/^WebSocket connection to .* failed/.test(m.text())) pageErrors.push(m.text());
  });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
  await new Promise((resolve) => (site ? site.srv.close(resolve) : resolve()));
});

const rt = () => page.evaluate(() => window.__rt);

async function waitInPage(fn, arg, what, timeout = 10000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 20 });
  } catch (e) {
    throw new Error(`${what}: ${e.message}\npage state: ${JSON.stringify(await rt())}\npage errors: ${pageErrors.join("\n")}`);
  }
}

async function expect202(body) {
  const res = await publish(server, body);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body;
}

test("browser: the built package subscribes, receives typed events, resumes across a cut and a restart", async () => {
  const token = makeToken({ sub: "u_browser" });
  const q = new URLSearchParams({ url: proxy.wsUrl, token, channel: CHANNEL });
  await page.goto(`${site.origin}/?${q}`);
  await waitInPage(() => window.__rt && (window.__rt.ready || window.__rt.failure), undefined, "subscribed");
  let s = await rt();
  assert.equal(s.failure, null);
  assert.equal(s.state, "connected");
  assert.equal(s.connected[0].userId, "u_browser");
  assert.equal(s.subscribed.length, 1);
  const epoch1 = s.subscribed[0].epoch;

  // --- typed events published from Node
  await expect202({
    events: [
      { orgId: "o_1", type: "task.status_changed", payload: { taskId: "t_1", oldStatus: "todo", newStatus: "done" }, channels: [CHANNEL] },
      { orgId: "o_1", type: "chief.task.progress", payload: { taskId: "t_1", progress: 42, message: "half" }, channels: [CHANNEL] },
      chat(CHANNEL, 1),
    ],
  });
  await waitInPage(() => window.__rt.events.length === 3, undefined, "3 events");
  s = await rt();
  assert.deepEqual(s.typed, ["status t_1 todo->done", "progress t_1 42%", "chat m_1: message 1"]);
  assert.deepEqual(s.events.map((e) => e.offset), [1, 2, 3]);

  // --- a proxy cut: the page reconnects and resumes losslessly
  const cutOpen = proxy.cut();
  assert.equal(cutOpen, 1, "the page's one connection went through the proxy");
  for (let i = 2; i <= 4; i++) await expect202(chat(CHANNEL, i));
  await waitInPage(() => window.__rt.subscribed.length === 2, undefined, "resubscribed after the cut");
  await waitInPage(() => window.__rt.events.length === 6, undefined, "6 events");
  s = await rt();
  assert.equal(s.subscribed[1].resumed, true);
  assert.equal(s.subscribed[1].recovered, true);
  assert.equal(s.disconnected[0].code, 1006);
  assert.deepEqual(s.events.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);

  // --- a server restart on the same port: a new epoch, recovered:false
  server = await server.restart();
  await waitInPage(() => window.__rt.subscribed.length === 3, undefined, "resubscribed after the restart");
  s = await rt();
  assert.equal(s.subscribed[2].resumed, true);
  assert.equal(s.subscribed[2].recovered, false);
  assert.notEqual(s.subscribed[2].epoch, epoch1);
  assert.ok(s.disconnected.some((d) => d.code === 1001), "drained with 1001");
  await expect202(chat(CHANNEL, 5));
  await waitInPage(() => window.__rt.events.length === 7, undefined, "an event of the new epoch");
  s = await rt();
  const last = s.events[6];
  assert.equal(last.epoch, s.subscribed[2].epoch);
  assert.equal(last.offset, s.subscribed[2].offset + 1);
  assert.equal(last.payload.seq, 5);

  // --- exactly once throughout
  assert.equal(new Set(s.events.map((e) => e.id)).size, 7);
  // attempts made while the server was restarting failed before opening: reported as such
  assert.deepEqual(s.errors.filter((e) => e.kind !== "transport" || e.closeCode !== 1006), []);
  assert.deepEqual(pageErrors, []);

  // --- close(): 1000, no reconnect
  await page.evaluate(() => window.__client.close());
  assert.equal((await rt()).state, "closed");
});

/** The HTTP status a WebSocket upgrade from `origin` gets (what a browser never shows the page). */
function upgradeStatus(port, origin) {
  return new Promise((resolve, reject) => {
    const req = http.get({
      host: "127.0.0.1",
      port,
      path: "/api/ws",
      headers: {
        origin,
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      },
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on("error", reject);
  });
}

/** Loads the test page with these query parameters and waits for the client to exist. */
async function openPage(params) {
  await page.goto(`${site.origin}/?${new URLSearchParams(params)}`);
  await waitInPage(() => window.__client !== undefined || window.__rt?.failure, undefined, "the client");
}

test("browser: a refused Origin (403) is an error at every attempt; close() rejects the pending subscribe", async () => {
  // a server that allows another origin only: the page's handshake is refused with HTTP 403
  const strict = await startServer({ extraArgs: ["--allowed-origin", "http://allowed.example"] });
  try {
    assert.equal(await upgradeStatus(strict.port, site.origin), 403, "the server refuses this Origin");

    await openPage({ url: strict.wsUrl, token: makeToken({ sub: "u_origin" }), channel: CHANNEL });
    await waitInPage(() => window.__rt.errors.length >= 3, undefined, "an error at each of 3 attempts");
    let s = await rt();
    for (const e of s.errors) {
      assert.equal(e.kind, "transport");
      assert.equal(e.closeCode, 1006);
      assert.match(e.message, /--allowed-origin/);
      assert.match(e.message, /down or unreachable/);
    }
    assert.equal(s.connected.length, 0);
    assert.equal(s.subscribed.length, 0);
    assert.equal(s.failure, null, "subscribe() still waits while the client retries");
    assert.ok(["connecting", "waiting"].includes(s.state), s.state);

    await page.evaluate(() => window.__client.close());
    await waitInPage(() => window.__rt.failure !== null, undefined, "subscribe() rejected");
    s = await rt();
    assert.equal(s.failureKind, "closed");
    assert.equal(s.state, "closed");
    assert.deepEqual(pageErrors, []);
  } finally {
    await strict.stop();
  }
});

test("browser: an expired ?token= is never sent: a fixed one stops with an auth error", async () => {
  const expired = signToken({ sub: "u_exp", exp: Math.floor(Date.now() / 1000) - 120 });
  const before = proxy.accepted;
  await openPage({ url: proxy.wsUrl, token: expired, fixed: "1", transport: "query", channel: CHANNEL });
  await waitInPage(() => window.__rt.failure !== null, undefined, "subscribe() rejected");
  const s = await rt();
  assert.equal(s.state, "closed");
  assert.deepEqual(
    s.errors.map((e) => [e.kind, e.closeCode]),
    [["auth", 4002]],
  );
  assert.equal(s.failureKind, "closed");
  await sleep(300);
  assert.equal(proxy.accepted, before, "no connection attempt with the expired token");
  assert.deepEqual(pageErrors, []);
});

test("browser: an expired ?token= from the provider is replaced before connecting", async () => {
  const expired = signToken({ sub: "u_exp", exp: Math.floor(Date.now() / 1000) - 120 });
  const fresh = makeToken({ sub: "u_fresh" });
  const before = proxy.accepted;
  await openPage({ url: proxy.wsUrl, token: expired, fresh, transport: "query", channel: CHANNEL });
  await waitInPage(() => window.__rt.ready || window.__rt.failure, undefined, "subscribed");
  const s = await rt();
  assert.equal(s.failure, null);
  assert.deepEqual(s.reasons, ["connect", "expired"]);
  assert.equal(s.connected[0].userId, "u_fresh");
  assert.deepEqual(s.errors, []);
  assert.equal(proxy.accepted - before, 1, "one connection, with the fresh token");
  await page.evaluate(() => window.__client.close());
  assert.deepEqual(pageErrors, []);
});
