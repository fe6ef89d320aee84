// The admin console in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against the real `cortex-realtime serve --admin-listen 127.0.0.1:0 --admin-key K`: the page is
// the one compiled into the binary. A wrong key shows an error; the right key shows the node with
// 0 connections; real WebSocket clients connect and the count on the page follows (and the closes
// table, when the admin API disconnects them); a live tail of a channel (our JavaScript client,
// vendored into the console, with a tail token sent in the first frame) shows an event published
// through POST /api/events; with Redis, a second node appears in the list and leaves it when it
// stops; 10 failed attempts show the 429. No
// console error, no CSP violation, nothing stored in the browser. A screenshot is kept in
// clients/js/test-artifacts/console.png. Also: the vendored client equals a fresh build, and
// every file of crates/server/console/ is served with the CSP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { CortexRealtime } from "../dist/index.js";
import { pkgDir, startServer, startRedis, redisMissing, makeToken, publish, chat, waitFor, ADMIN_KEY } from "./harness.mjs";
import { drift, vendorDir } from "./console-vendor.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CONSOLE_DIR = path.resolve(pkgDir, "../../crates/server/console");
const ARTIFACTS = path.join(pkgDir, "test-artifacts");
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const TAIL_CHANNEL = "project:p_console";

let server;
let browser;
let page;
const clients = [];
const pageErrors = [];
/** Console errors Chromium logs for the answers the test provokes (401, 429 of the admin API). */
const expectedErrors = [];
const sockets = [];

before(async () => {
  server = await startServer({ admin: true });
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
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  // recorded by the test harness (CDP), not by the page: the CSP does not apply to it
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective}: ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  page.on("pageerror", (e) => pageErrors.push(`pageerror: ${e}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    if (/Failed to load resource: the server responded with a status of (401|429)/.test(text)) expectedErrors.push(text);
    else pageErrors.push(`console: ${text}`);
  });
  page.on("requestfailed", (r) => pageErrors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("websocket", (ws) => {
    const s = { url: ws.url(), sent: [], received: [] };
    sockets.push(s);
    ws.on("framesent", (f) => s.sent.push(String(f.payload)));
    ws.on("framereceived", (f) => s.received.push(String(f.payload)));
  });
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  await server?.stop();
});

/** Every file under crates/server/console/, as paths relative to it. */
function consoleFiles(dir = CONSOLE_DIR, prefix = "") {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    return statSync(full).isDirectory() ? consoleFiles(full, `${prefix}${name}/`) : [`${prefix}${name}`];
  });
}

async function waitInPage(fn, arg, what, timeout = 10000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    const shot = path.join(ARTIFACTS, "console-failure.png");
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    const error = await page.textContent("#error").catch(() => "?");
    const status = await page.textContent("#status").catch(() => "?");
    throw new Error(
      `${what}: ${e.message}\nerror banner: ${error}\nstatus: ${status}\nscreenshot: ${shot}\npage errors: ${pageErrors.join("\n")}`,
    );
  }
}

/** The text of a cell of the node row. */
const nodeCell = (field) =>
  page.evaluate((f) => document.querySelector(`#nodes tbody tr[data-node-id] td[data-field="${f}"]`)?.textContent ?? null, field);

async function signIn(key) {
  await page.fill("#key", key);
  await page.click("#login-button");
}

test("the vendored client in crates/server/console/client/ equals a fresh build of clients/js", () => {
  assert.deepEqual(drift(), [], "run scripts/console-vendor");
  // its modules import each other by relative paths, so they work from /console/client/
  for (const name of readdirSync(vendorDir)) {
    const text = readFileSync(path.join(vendorDir, name), "utf8");
    for (const m of text.matchAll(/\b(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']/g)) {
      assert.match(m[1], /^\.\/[a-z]+\.js$/, `${name} imports ${m[1]}`);
      assert.ok(readdirSync(vendorDir).includes(m[1].slice(2)), `${name} imports ${m[1]}, which is vendored`);
    }
  }
});

test("every console file is served by the binary with the CSP and nosniff; the page has no inline script or style", async () => {
  const files = consoleFiles();
  assert.ok(files.includes("index.html") && files.includes("console.js") && files.includes("client/index.js"), String(files));
  const types = { ".html": /^text\/html/, ".js": /^text\/javascript/, ".css": /^text\/css/ };
  for (const f of files) {
    const url = f === "index.html" ? "/" : `/console/${f}`;
    const res = await fetch(`${server.adminUrl}${url}`);
    assert.equal(res.status, 200, `${url}: is ${f} listed in crates/server/src/admin/console.rs?`);
    assert.equal(res.headers.get("content-security-policy"), CSP, url);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff", url);
    assert.match(res.headers.get("content-type") ?? "", types[path.extname(f)] ?? /./, url);
    assert.equal(await res.text(), readFileSync(path.join(CONSOLE_DIR, f), "utf8"), `${url} is the file as it is now (rebuild the binary)`);
  }
  const html = readFileSync(path.join(CONSOLE_DIR, "index.html"), "utf8");
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, "no inline script");
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, "no inline style or handler");
  assert.doesNotMatch(html, /https?:\/\//, "nothing from another origin");
});

test("console: wrong key, the node and its connections, charts, closes, a live tail of a published event", async () => {
  const res = await page.goto(`${server.adminUrl}/`);
  assert.equal(res.status(), 200);
  assert.equal(res.headers()["content-security-policy"], CSP);
  await waitInPage(() => document.body.dataset.ready === "true", undefined, "the console's modules loaded");
  assert.equal(await page.isVisible("#login"), true);
  assert.equal(await page.isVisible("#dash"), false);

  // --- a wrong key: a visible error, no dashboard
  await signIn("not-the-admin-key");
  await waitInPage(() => !document.getElementById("error").hidden, undefined, "the error for a wrong key");
  assert.match(await page.textContent("#error"), /Wrong admin key.*401/);
  assert.equal(await page.isVisible("#dash"), false);
  assert.equal(await page.isVisible("#login"), true);

  // --- the right key: the node, with 0 connections
  await signIn(ADMIN_KEY);
  await waitInPage(() => document.querySelector("#nodes tbody tr[data-node-id]"), undefined, "the node row");
  assert.equal(await page.isVisible("#error"), false, "the error is gone");
  const info = await (await fetch(`${server.adminUrl}/admin/api/info`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json();
  assert.equal(await page.getAttribute("#nodes tbody tr[data-node-id]", "data-node-id"), info.node.id);
  assert.equal(await nodeCell("address"), `127.0.0.1:${server.port}`);
  assert.equal(await nodeCell("connections"), "0");
  assert.equal(await nodeCell("ready"), "ready");
  assert.equal(await page.textContent("#t-backplane"), "memory");

  // the key is nowhere but in the module's memory
  const kept = await page.evaluate((key) => ({
    local: localStorage.length,
    session: sessionStorage.length,
    cookie: document.cookie,
    url: location.href.includes(key),
    dom: document.documentElement.outerHTML.includes(key),
    input: document.getElementById("key").value,
  }), ADMIN_KEY);
  assert.deepEqual(kept, { local: 0, session: 0, cookie: "", url: false, dom: false, input: "" });

  // --- real clients connect: the count on the page follows, and the chart (from the server's ring)
  for (let i = 0; i < 3; i++) {
    const c = new CortexRealtime({ url: server.wsUrl, token: makeToken({ sub: "u_console" }), refreshMarginMs: false });
    clients.push(c);
    c.connect();
  }
  await waitFor(() => clients.every((c) => c.state === "connected"), { what: "3 clients connected" });
  await waitInPage(
    () => document.querySelector('#nodes td[data-field="connections"]')?.textContent === "3" &&
      document.getElementById("t-connections").textContent === "3",
    undefined,
    "3 connections on the page",
  );
  await waitInPage(() => document.getElementById("c-connections").dataset.last === "3", undefined, "the connections chart at 3");
  assert.ok(Number(await page.getAttribute("#c-connections", "data-points")) >= 2, "the chart has the ring's points");

  // --- the admin API closes them (4001: the clients stop): the count goes back, the closes table
  // counts them
  const dc = await fetch(`${server.adminUrl}/admin/api/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ orgId: "o_1", userId: "u_console", code: 4001 }),
  });
  assert.deepEqual(await dc.json(), { disconnected: 3 });
  await waitFor(() => clients.every((c) => c.state === "closed"), { what: "the clients stopped" });
  clients.splice(0);
  await waitInPage(() => document.querySelector('#nodes td[data-field="connections"]')?.textContent === "0", undefined, "0 connections again");
  await waitInPage(
    () => document.querySelector('#closes tr[data-code="4001"] td[data-field="count"]')?.textContent === "3",
    undefined,
    "3 closes with 4001 in the closes table",
  );
  // Every code the server counts is a row, "other" (codes outside the list) last, none garbled.
  const codes = await page.evaluate(() => [...document.querySelectorAll("#closes tr[data-code]")].map((tr) => tr.dataset.code));
  assert.equal(codes.at(-1), "other", `the closes table's codes: ${codes}`);
  assert.ok(codes.includes("1005") && !codes.includes("NaN"), `the closes table's codes: ${codes}`);

  // --- the live tail: our client, a tail token in the first frame, a published event appears
  await page.fill("#tail-org", "o_1");
  await page.fill("#tail-channel", TAIL_CHANNEL);
  await page.click("#tail-start");
  await waitInPage(() => document.getElementById("tail-events").dataset.subscribed === "true", undefined, "the tail subscribed");
  const published = await publish(server, chat(TAIL_CHANNEL, 7));
  assert.equal(published.status, 202, JSON.stringify(published.body));
  await waitInPage((id) => document.querySelector(`#tail-events li[data-id="${id}"]`), published.body.id, "the event in the tail");
  const row = await page.textContent(`#tail-events li[data-id="${published.body.id}"]`);
  assert.match(row, /chat\.message/);
  assert.match(row, /message 7/);
  assert.equal(await page.isVisible("#tail-error"), false);

  const tailSockets = sockets.filter((s) => s.url.startsWith(`ws://127.0.0.1:${server.adminPort}/`));
  assert.equal(tailSockets.length, 1, `one tail WebSocket, to the admin listener: ${sockets.map((s) => s.url)}`);
  assert.equal(tailSockets[0].url, `ws://127.0.0.1:${server.adminPort}/api/ws`, "no token in the URL");
  const first = JSON.parse(tailSockets[0].sent[0]);
  assert.equal(first.type, "auth", "the token goes in the first frame");
  const claims = JSON.parse(Buffer.from(first.token.split(".")[1], "base64url"));
  assert.deepEqual([claims.sub, claims.org, claims.channels], ["admin-console", "o_1", [TAIL_CHANNEL]]);

  // the busiest channels list has it too
  await waitInPage((ch) => document.querySelector(`#top-channels tr[data-channel="${ch}"]`), TAIL_CHANNEL, "the channel in top channels");
  await waitInPage(() => document.querySelector('#top-orgs tr[data-org="o_1"]'), undefined, "the org in top orgs");

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "console.png"), fullPage: true });

  // --- stop the tail, sign out: the key is forgotten
  await page.click("#tail-stop");
  await waitInPage(() => /stopped/.test(document.getElementById("tail-status").textContent), undefined, "the tail stopped");
  await page.click("#signout");
  assert.equal(await page.isVisible("#login"), true);
  assert.equal(await page.isVisible("#dash"), false);

  assert.deepEqual(await page.evaluate(() => window.__csp), [], "no CSP violation");
  assert.deepEqual(pageErrors, []);
  assert.equal(expectedErrors.length, 1, `only the wrong key's 401 was logged: ${expectedErrors}`);
});

test("console: with Redis, every live node is listed with its connections; a stopped node leaves the list", { skip: redisMissing() }, async () => {
  const redis = await startRedis();
  const a = await startServer({ admin: true, extraArgs: ["--redis", redis.url] });
  const b = await startServer({ admin: true, extraArgs: ["--redis", redis.url] });
  const c = new CortexRealtime({ url: b.wsUrl, token: makeToken({ sub: "u_node_b" }), refreshMarginMs: false });
  try {
    await page.goto(`${a.adminUrl}/`);
    await waitInPage(() => document.body.dataset.ready === "true", undefined, "the console loaded");
    await signIn(ADMIN_KEY);
    await waitInPage(() => document.querySelectorAll("#nodes tbody tr[data-node-id]").length === 2, undefined, "both nodes listed");
    assert.equal(await page.textContent("#t-backplane"), "redis");
    const addressOf = (port) =>
      page.evaluate((addr) => {
        const row = [...document.querySelectorAll("#nodes tbody tr[data-node-id]")].find(
          (r) => r.querySelector('td[data-field="address"]').textContent === addr,
        );
        return row ? { self: row.classList.contains("self"), connections: row.querySelector('td[data-field="connections"]').textContent } : null;
      }, `127.0.0.1:${port}`);
    assert.deepEqual(await addressOf(a.port), { self: true, connections: "0" }, "this node first");
    assert.equal((await addressOf(b.port))?.self, false);
    assert.equal(await page.getAttribute("#nodes tbody tr:first-child", "class"), "self");

    // a client of node B shows in B's row (from B's heartbeat)
    c.connect();
    await waitFor(() => c.state === "connected", { what: "the client of B connected" });
    await waitInPage(
      (addr) => [...document.querySelectorAll("#nodes tbody tr[data-node-id]")].some(
        (r) => r.querySelector('td[data-field="address"]').textContent === addr &&
          r.querySelector('td[data-field="connections"]').textContent === "1",
      ),
      `127.0.0.1:${b.port}`,
      "node B with 1 connection",
    );
    c.close();

    // B stops: gone from the list once its heartbeats stop (5 s)
    await b.stop();
    await waitInPage(() => document.querySelectorAll("#nodes tbody tr[data-node-id]").length === 1, undefined, "node B gone", 15000);
    assert.equal((await addressOf(a.port))?.self, true);
    await page.click("#signout");
    assert.deepEqual(await page.evaluate(() => window.__csp), []);
    assert.deepEqual(pageErrors, []);
  } finally {
    c.close();
    await b.stop();
    await a.stop();
    await redis.stop();
  }
});

test("console: after 10 failed attempts the page shows the 429 with its wait, even for the right key", async () => {
  await page.goto(`${server.adminUrl}/`);
  await waitInPage(() => document.body.dataset.ready === "true", undefined, "the console loaded");
  // one wrong key was already tried by the test before, from this address
  for (let i = 0; i < 9; i++) {
    await signIn(`wrong-${i}`);
    await waitInPage((n) => /401/.test(document.getElementById("error").textContent) && !document.getElementById("login-button").disabled, i, `401 #${i}`);
  }
  await signIn(ADMIN_KEY);
  await waitInPage(() => /429/.test(document.getElementById("error").textContent), undefined, "the 429 error");
  const text = await page.textContent("#error");
  assert.match(text, /Too many failed attempts.*429.*Try again in \d+ s/);
  assert.equal(await page.isVisible("#dash"), false);
  assert.equal(await page.isVisible("#error"), true);
  assert.deepEqual(await page.evaluate(() => window.__csp), []);
  assert.deepEqual(pageErrors, []);
});
