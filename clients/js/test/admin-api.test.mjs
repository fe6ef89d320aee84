// The admin API against its OpenAPI document (docs/admin-api.openapi.json): the real
// `cortex-realtime serve --admin-listen 127.0.0.1:0 --admin-key K`, every route of the document
// exercised (200s, 400s, 401s, a 429 from another loopback address, the console's assets and its
// WebSocket; with a throwaway redis-server, two nodes and a broadcast disconnect), and each answer's status, headers and JSON body checked against the document with
// a JSON Schema 2020-12 validator (ajv). A status the document does not list for a route fails,
// and so does a body missing a required field (checked here on a real answer with a field
// removed). At the end, every operation and every documented status (except 503, which needs a
// backplane that is away) must have been seen.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { CortexRealtime } from "../dist/index.js";
import { pkgDir, startServer, startRedis, redisMissing, makeToken, publish, chat, waitFor, ADMIN_KEY } from "./harness.mjs";

const DOC_PATH = path.resolve(pkgDir, "../../docs/admin-api.openapi.json");
const doc = JSON.parse(readFileSync(DOC_PATH, "utf8"));
const DOC_ID = "https://cortex-realtime.invalid/admin-api.openapi.json";

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ ...doc, $id: DOC_ID });

let server;
const clients = [];
/** "METHOD /route STATUS" of every answer checked against the document. */
const seen = new Set();

before(async () => {
  server = await startServer({ admin: true });
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

// --- the document --------------------------------------------------------------------------------

const escape = (s) => s.replace(/~/g, "~0").replace(/\//g, "~1");

/** The object a local `$ref` ("#/a/b") points at. */
function deref(obj) {
  let hops = 0;
  while (obj && typeof obj.$ref === "string") {
    assert.ok(obj.$ref.startsWith("#/"), `only local refs: ${obj.$ref}`);
    obj = pointer(obj.$ref.slice(1));
    assert.ok(++hops < 10, "a $ref loop");
  }
  return obj;
}

function pointer(p) {
  let o = doc;
  for (const part of p.split("/").slice(1)) {
    const key = part.replace(/~1/g, "/").replace(/~0/g, "~");
    assert.ok(o && Object.hasOwn(o, key), `the document has no ${p}`);
    o = o[key];
  }
  return o;
}

/** A validator for the JSON body of `route` `method` answering `status`, from the document. */
function bodyValidator(route, method, status) {
  const op = doc.paths[route]?.[method];
  assert.ok(op, `the document has no ${method.toUpperCase()} ${route}`);
  let ptr = `/paths/${escape(route)}/${method}/responses/${status}`;
  let resp = op.responses[String(status)];
  if (resp?.$ref) {
    ptr = resp.$ref.slice(1);
    resp = deref(resp);
  }
  return { resp, ptr };
}

const compiled = new Map();
function validatorAt(ptr) {
  if (!compiled.has(ptr)) compiled.set(ptr, ajv.getSchema(`${DOC_ID}#${ptr}`) ?? ajv.compile({ $ref: `${DOC_ID}#${ptr}` }));
  return compiled.get(ptr);
}

/**
 * Checks one answer against the document: the status is listed for the route, every required
 * header is there (with its `const`, if any), the content type is one of those listed, and a
 * JSON body matches the schema. Returns the parsed body.
 */
function conform(route, method, res, { record = true } = {}) {
  const { resp, ptr } = bodyValidator(route, method, res.status);
  const where = `${method.toUpperCase()} ${route} -> ${res.status}`;
  assert.ok(resp, `${where}: the document lists no ${res.status} for this route (body: ${res.text.slice(0, 300)})`);
  for (const [name, h0] of Object.entries(resp.headers ?? {})) {
    const h = deref(h0);
    const value = res.headers[name.toLowerCase()];
    if (h.required) assert.ok(value !== undefined, `${where}: header ${name} is required`);
    if (value !== undefined && h.schema) {
      const v = ajv.compile(h.schema);
      assert.ok(v(value), `${where}: header ${name}: ${value} does not match ${JSON.stringify(h.schema)}`);
    }
  }
  let body;
  if (resp.content) {
    const type = (res.headers["content-type"] ?? "").split(";")[0].trim();
    assert.ok(Object.hasOwn(resp.content, type), `${where}: content type ${type} is not one of ${Object.keys(resp.content)}`);
    if (type === "application/json") {
      body = JSON.parse(res.text);
      const v = validatorAt(`${ptr}/content/application~1json/schema`);
      assert.ok(v(body), `${where}: the body does not match the document: ${ajv.errorsText(v.errors)}\n${res.text.slice(0, 2000)}`);
    } else {
      const v = validatorAt(`${ptr}/content/${escape(type)}/schema`);
      assert.ok(v(res.text), `${where}: the body does not match the document: ${ajv.errorsText(v.errors)}`);
    }
  }
  if (record) seen.add(`${method.toUpperCase()} ${route} ${res.status}`);
  return body;
}

// --- HTTP -----------------------------------------------------------------------------------------

/**
 * One request to the admin listener (or `port`), from `from` (a loopback address: the rate
 * limit counts per address). Resolves with `{status, headers, text}`.
 */
function request(method, url, { key, headers = {}, body, from = "127.0.0.1", port } = {}) {
  const h = { ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  let data;
  if (body !== undefined) {
    data = typeof body === "string" ? body : JSON.stringify(body);
    h["content-type"] ??= "application/json";
    h["content-length"] = Buffer.byteLength(data);
  }
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: port ?? server.adminPort, path: url, method, headers: h, localAddress: from },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, text }));
      },
    );
    req.on("error", reject);
    req.setTimeout(10000, () => req.destroy(new Error(`${method} ${url}: no answer in 10 s`)));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

/** A WebSocket upgrade request; resolves with the HTTP status (101 or a refusal). */
function upgrade(port, url) {
  return new Promise((resolve, reject) => {
    const req = http.get({
      host: "127.0.0.1",
      port,
      path: url,
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        origin: `http://127.0.0.1:${port}`,
      },
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode, headers: res.headers, text: "" });
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, headers: res.headers, text: "" });
    });
    req.on("error", reject);
  });
}

const get = (url, opts) => request("GET", url, { key: ADMIN_KEY, ...opts });
const post = (url, body, opts) => request("POST", url, { key: ADMIN_KEY, body, ...opts });

function client(opts) {
  const c = new CortexRealtime({ backoff: { baseMs: 100, capMs: 400 }, ...opts });
  clients.push(c);
  return c;
}

/** A plain WebSocket that records its frames and its close. */
function rawSocket(url) {
  const ws = new WebSocket(url);
  const r = { ws, frames: [], closed: null };
  ws.onmessage = (m) => r.frames.push(JSON.parse(m.data));
  ws.onclose = (e) => (r.closed = { code: e.code, reason: e.reason });
  r.opened = new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`${url}: the WebSocket failed`));
  });
  return r;
}

// --- the tests ------------------------------------------------------------------------------------

test("the document: OpenAPI 3.1, bearer security, every $ref resolves, every schema compiles", () => {
  assert.match(doc.openapi, /^3\.1\./);
  assert.deepEqual(doc.components.securitySchemes.adminKey, {
    ...doc.components.securitySchemes.adminKey,
    type: "http",
    scheme: "bearer",
  });
  assert.deepEqual(doc.security, [{ adminKey: [] }]);
  const walk = (o, at) => {
    if (Array.isArray(o)) return o.forEach((v, i) => walk(v, `${at}/${i}`));
    if (!o || typeof o !== "object") return;
    if (typeof o.$ref === "string") deref(o);
    for (const [k, v] of Object.entries(o)) walk(v, `${at}/${escape(k)}`);
  };
  walk(doc, "");
  const ids = new Set();
  for (const [route, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      assert.ok(op.operationId && !ids.has(op.operationId), `${method} ${route}: a unique operationId`);
      ids.add(op.operationId);
      assert.ok(Object.keys(op.responses).length, `${method} ${route}: responses`);
      for (const name of route.match(/\{[^}]+\}/g) ?? []) {
        assert.ok(
          (op.parameters ?? []).some((p) => p.in === "path" && `{${p.name}}` === name && p.required),
          `${method} ${route}: the path parameter ${name} is declared`,
        );
      }
      if (route.startsWith("/admin/api/")) {
        assert.equal(op.security, undefined, `${route} uses the document's bearer security`);
        for (const s of ["401", "429"]) assert.ok(op.responses[s], `${method} ${route} lists ${s}`);
      } else {
        assert.deepEqual(op.security, [], `${route} needs no key`);
      }
    }
  }
  for (const name of Object.keys(doc.components.schemas)) validatorAt(`/components/schemas/${name}`);
  // the routes of the agreed shape, no more and no fewer
  const ops = Object.entries(doc.paths).flatMap(([r, item]) => Object.keys(item).map((m) => `${m.toUpperCase()} ${r}`));
  assert.deepEqual(ops.sort(), [
    "GET /",
    "GET /admin/api/history",
    "GET /admin/api/info",
    "GET /admin/api/stats",
    "GET /admin/api/top",
    "GET /api/ws",
    "GET /console/client/{file}",
    "GET /console/{file}",
    "GET /healthz",
    "GET /metrics",
    "GET /readyz",
    "POST /admin/api/disconnect",
    "POST /admin/api/tail-token",
  ]);
});

test("the console's page and assets, health and metrics: no key, the CSP on every console answer", async () => {
  const page = await request("GET", "/");
  conform("/", "get", page);
  assert.equal(page.status, 200);
  assert.match(page.text, /<script type="module" src="\/console\/console\.js"><\/script>/);
  for (const f of ["console.js", "console.css"]) {
    const r = await request("GET", `/console/${f}`);
    assert.equal(r.status, 200, f);
    conform("/console/{file}", "get", r);
  }
  const missing = await request("GET", "/console/no-such-file.js");
  assert.equal(missing.status, 404);
  conform("/console/{file}", "get", missing);
  const mod = await request("GET", "/console/client/index.js");
  assert.equal(mod.status, 200);
  conform("/console/client/{file}", "get", mod);
  const missingMod = await request("GET", "/console/client/nope.js");
  assert.equal(missingMod.status, 404);
  conform("/console/client/{file}", "get", missingMod);
  for (const r of ["/healthz", "/readyz", "/metrics"]) {
    const res = await request("GET", r);
    assert.equal(res.status, 200, r);
    conform(r, "get", res);
  }
});

test("every admin route: 401 without the key, with a wrong key, with the key in the query string", async () => {
  // from 127.0.0.3, so these failures do not count against 127.0.0.1
  const from = "127.0.0.3";
  const routes = [
    ["get", "/admin/api/info"],
    ["get", "/admin/api/stats"],
    ["get", "/admin/api/top"],
    ["post", "/admin/api/disconnect", { orgId: "o_1", userId: "u_1" }],
    ["get", "/admin/api/history", undefined, "?orgId=o_1&channelId=task:t_1"],
    ["post", "/admin/api/tail-token", { orgId: "o_1", channelId: "task:t_1" }],
  ];
  for (const [method, route, body, query = ""] of routes) {
    const res = await request(method.toUpperCase(), route + query, { body, from });
    assert.equal(res.status, 401, `${method} ${route} without a key`);
    assert.equal(conform(route, method, res).error, "unauthorized");
  }
  const wrong = await get("/admin/api/info", { key: "not-the-key", from: "127.0.0.4" });
  assert.equal(wrong.status, 401);
  conform("/admin/api/info", "get", wrong);
  const basic = await request("GET", "/admin/api/info", {
    headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN_KEY}`).toString("base64")}` },
    from: "127.0.0.4",
  });
  assert.equal(basic.status, 401, "the key in Basic auth");
  const query = await request("GET", `/admin/api/info?key=${ADMIN_KEY}&token=${ADMIN_KEY}`, { from: "127.0.0.4" });
  assert.equal(query.status, 401, "the key in the query string");
  conform("/admin/api/info", "get", query);
});

test("info, stats and top answer as documented; top's limit is checked", async () => {
  const info = conform("/admin/api/info", "get", await get("/admin/api/info"));
  assert.equal(info.backplane, "memory");
  assert.equal(info.nodes[0].id, info.node.id, "this node first");
  assert.equal(info.nodes.length, 1);
  assert.equal(info.node.address, `127.0.0.1:${server.port}`);
  assert.equal(info.node.ready, true);

  const stats = conform("/admin/api/stats", "get", await get("/admin/api/stats"));
  assert.equal(stats.intervalSeconds, 1);

  // a published event shows in top
  const pub = await publish(server, chat("project:p_top", 1, "o_top"));
  assert.equal(pub.status, 202, JSON.stringify(pub.body));
  const top = await waitFor(
    async () => {
      const t = conform("/admin/api/top", "get", await get("/admin/api/top?limit=5"));
      return t.channels.some((c) => c.channelId === "project:p_top") ? t : undefined;
    },
    { what: "the published channel in top", timeoutMs: 5000, intervalMs: 200 },
  );
  assert.ok(top.orgs.some((o) => o.orgId === "o_top" && o.events >= 1));
  assert.ok(top.orgs.length <= 5 && top.channels.length <= 5);
  conform("/admin/api/top", "get", await get("/admin/api/top?limit=50"));
  for (const bad of ["0", "51", "abc", "-1"]) {
    const res = await get(`/admin/api/top?limit=${bad}`);
    assert.equal(res.status, 400, `limit=${bad}`);
    assert.equal(conform("/admin/api/top", "get", res).error, "bad_request");
  }
});

test("disconnect by user and by connection: the clients see the code; stats counts the closes; bad bodies are 400", async () => {
  const closes = [];
  const mk = (sub) => {
    const c = client({ url: server.wsUrl, token: makeToken({ sub }), refreshMarginMs: false });
    c.on("disconnected", (d) => closes.push([sub, d.code]));
    c.on("closed", (d) => closes.push([sub, `closed ${d.code}`]));
    return c;
  };
  const a = mk("u_dc");
  const b = mk("u_dc");
  const other = mk("u_other");
  for (const c of [a, b, other]) c.connect();
  await waitFor(() => [a, b, other].every((c) => c.state === "connected"), { what: "3 connected" });

  const res = await post("/admin/api/disconnect", { orgId: "o_1", userId: "u_dc", code: 4001 });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(conform("/admin/api/disconnect", "post", res), { disconnected: 2 });
  // Each client reports "disconnected" then "closed": wait for both clients, not two reports.
  await waitFor(() => [a, b].every((c) => c.state === "closed"), { what: "both u_dc clients closed" });
  assert.deepEqual(
    closes.filter(([s, c]) => s === "u_dc" && c === 4001).length,
    2,
    `both u_dc connections closed with 4001: ${JSON.stringify(closes)}`,
  );
  assert.equal(other.state, "connected", "another user is untouched");

  const id = other.connection.connectionId;
  const byId = await post("/admin/api/disconnect", { connectionId: id });
  assert.deepEqual(conform("/admin/api/disconnect", "post", byId), { disconnected: 1 });
  await waitFor(() => closes.some(([s, c]) => s === "u_other" && c === 1008), { what: "close 1008 (the default)" });
  const none = await post("/admin/api/disconnect", { connectionId: "c_nobody", code: 1000 });
  assert.deepEqual(conform("/admin/api/disconnect", "post", none), { disconnected: 0 });

  for (const bad of [
    { orgId: "o_1", userId: "u_1", code: 4003 },
    { orgId: "o_1", userId: "u_1", code: "1000" },
    { orgId: "o_1" },
    {},
    "not json",
    [],
  ]) {
    const r = await post("/admin/api/disconnect", bad);
    assert.equal(r.status, 400, `body ${JSON.stringify(bad)}: ${r.text}`);
    assert.equal(conform("/admin/api/disconnect", "post", r).error, "bad_request");
  }

  const stats = await waitFor(
    async () => {
      const s = conform("/admin/api/stats", "get", await get("/admin/api/stats"));
      return (s.closes["4001"] ?? 0) >= 2 && (s.closes["1008"] ?? 0) >= 1 ? s : undefined;
    },
    { what: "the closes in stats", intervalMs: 100 },
  );
  assert.ok(stats.closes["4001"] >= 2);
  for (const c of [a, b, other]) c.close();
});

test("history: the newest events as delivered, oldest first; bad parameters are 400", async () => {
  const channel = "task:t_hist";
  const ids = [];
  for (let i = 1; i <= 3; i++) {
    const r = await publish(server, chat(channel, i));
    assert.equal(r.status, 202);
    ids.push(r.body.id);
  }
  const res = await get(`/admin/api/history?orgId=o_1&channelId=${encodeURIComponent(channel)}&limit=2`);
  assert.equal(res.status, 200, res.text);
  const h = conform("/admin/api/history", "get", res);
  assert.equal(h.orgId, "o_1");
  assert.equal(h.channelId, channel);
  assert.equal(h.offset, 3);
  assert.deepEqual(
    h.events.map((e) => [e.offset, e.id, e.type, e.channelId, e.epoch, e.payload.seq]),
    [
      [2, ids[1], "chat.message", channel, h.epoch, 2],
      [3, ids[2], "chat.message", channel, h.epoch, 3],
    ],
  );
  const all = conform("/admin/api/history", "get", await get(`/admin/api/history?orgId=o_1&channelId=${channel}`));
  assert.equal(all.events.length, 3, "default limit 50");
  const empty = conform("/admin/api/history", "get", await get("/admin/api/history?orgId=o_1&channelId=task:never"));
  assert.deepEqual([empty.offset, empty.events], [0, []]);

  for (const q of [
    "orgId=o_1&channelId=nope",
    "orgId=o_1&channelId=task:",
    "orgId=o_1",
    "channelId=task:t_hist",
    "orgId=&channelId=task:t_hist",
    "orgId=o_1&channelId=task:t_hist&limit=0",
    "orgId=o_1&channelId=task:t_hist&limit=101",
  ]) {
    const r = await get(`/admin/api/history?${q}`);
    assert.equal(r.status, 400, `${q}: ${r.text}`);
    assert.equal(conform("/admin/api/history", "get", r).error, "bad_request");
  }
});

test("tail-token: a JWT for one channel, signed with the key derived from the admin key; only the admin /api/ws takes it", async () => {
  const channel = "project:p_tail";
  const res = await post("/admin/api/tail-token", { orgId: "o_1", channelId: channel });
  assert.equal(res.status, 200, res.text);
  const t = conform("/admin/api/tail-token", "post", res);
  const [h, p, sig] = t.token.split(".");
  const derived = createHmac("sha256", ADMIN_KEY).update("cortex-realtime console token").digest();
  assert.equal(createHmac("sha256", derived).update(`${h}.${p}`).digest("base64url"), sig, "signed with the derived key");
  assert.equal(JSON.parse(Buffer.from(h, "base64url")).alg, "HS256");
  const claims = JSON.parse(Buffer.from(p, "base64url"));
  assert.equal(claims.sub, "admin-console");
  assert.equal(claims.org, "o_1");
  assert.deepEqual(claims.channels, [channel]);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(claims.exp - (now + 300)) <= 5, `exp ${claims.exp} is now + 300 s`);
  assert.ok(Math.abs(Date.parse(t.expiresAt) / 1000 - claims.exp) <= 1, "expiresAt is exp");

  // the admin listener's /api/ws: the token in the first frame; its one channel only
  const adminWs = `ws://127.0.0.1:${server.adminPort}${t.url}`;
  const s = rawSocket(adminWs);
  await s.opened;
  s.ws.send(JSON.stringify({ type: "auth", token: t.token }));
  s.ws.send(JSON.stringify({ type: "subscribe", channelId: channel, ref: 1 }));
  s.ws.send(JSON.stringify({ type: "subscribe", channelId: "project:p_other", ref: 2 }));
  await waitFor(() => s.frames.filter((f) => f.ref === 1 || f.ref === 2).length === 2 || s.closed, { what: "two replies" });
  assert.equal(s.closed, null, JSON.stringify(s.frames));
  assert.equal(s.frames.find((f) => f.ref === 1)?.type, "subscribed", JSON.stringify(s.frames));
  assert.deepEqual(
    [s.frames.find((f) => f.ref === 2)?.type, s.frames.find((f) => f.ref === 2)?.code],
    ["error", "forbidden"],
  );
  s.ws.close();

  // the main listener refuses it
  const m = rawSocket(server.wsUrl);
  await m.opened;
  m.ws.send(JSON.stringify({ type: "auth", token: t.token }));
  await waitFor(() => m.closed, { what: "the main listener closes" });
  assert.equal(m.closed.code, 4001, "a console token is not a user token");
  // a user token is not a console token
  const u = rawSocket(adminWs);
  await u.opened;
  u.ws.send(JSON.stringify({ type: "auth", token: makeToken() }));
  await waitFor(() => u.closed, { what: "the admin listener closes" });
  assert.equal(u.closed.code, 4001, "a user token is not a console token");

  // the WebSocket route itself: 101 with no token in the URL, 401 with one
  const ok = await upgrade(server.adminPort, "/api/ws");
  assert.equal(ok.status, 101);
  conform("/api/ws", "get", ok);
  const inUrl = await upgrade(server.adminPort, `/api/ws?token=${t.token}`);
  assert.equal(inUrl.status, 401, "?token= is refused on the admin listener");
  conform("/api/ws", "get", inUrl);
  const plain = await request("GET", "/api/ws");
  assert.equal(plain.status, 426, "a plain GET is not an upgrade");
  conform("/api/ws", "get", plain);

  for (const bad of [{ orgId: "o_1", channelId: "nope" }, { orgId: "o_1" }, { channelId: channel }, { orgId: "", channelId: channel }, "{"]) {
    const r = await post("/admin/api/tail-token", bad);
    assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${r.text}`);
    assert.equal(conform("/admin/api/tail-token", "post", r).error, "bad_request");
  }
});

test("with Redis: info lists every live node, top merges them, a disconnect is broadcast", { skip: redisMissing() }, async () => {
  const redis = await startRedis();
  const a = await startServer({ admin: true, extraArgs: ["--redis", redis.url] });
  const b = await startServer({ admin: true, extraArgs: ["--redis", redis.url] });
  const c = client({ url: b.wsUrl, token: makeToken({ sub: "u_far" }), refreshMarginMs: false });
  const closes = [];
  c.on("disconnected", (d) => closes.push(d.code));
  try {
    const onA = (method, url, body) => request(method, url, { key: ADMIN_KEY, body, port: a.adminPort });
    const info = await waitFor(
      async () => {
        const i = conform("/admin/api/info", "get", await onA("GET", "/admin/api/info"));
        return i.nodes.length === 2 ? i : undefined;
      },
      { what: "both nodes in info", timeoutMs: 5000, intervalMs: 200 },
    );
    assert.equal(info.backplane, "redis");
    assert.deepEqual(info.nodes.map((n) => n.address), [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`]);

    const pub = await publish(b, chat("project:p_far", 1, "o_far"));
    assert.equal(pub.status, 202);
    await waitFor(
      async () => {
        const t = conform("/admin/api/top", "get", await onA("GET", "/admin/api/top"));
        return t.channels.some((ch) => ch.orgId === "o_far" && ch.channelId === "project:p_far");
      },
      { what: "node B's publish in node A's top", timeoutMs: 5000, intervalMs: 200 },
    );

    c.connect();
    await waitFor(() => c.state === "connected", { what: "the client of node B" });
    const res = await onA("POST", "/admin/api/disconnect", { orgId: "o_1", userId: "u_far", code: 4009 });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(conform("/admin/api/disconnect", "post", res), { disconnected: 0, broadcast: true });
    await waitFor(() => closes.includes(4009), { what: "node B closed its connection with 4009" });
  } finally {
    c.close();
    await b.stop();
    await a.stop();
    await redis.stop();
  }
});

test("the main listener serves nothing under /admin/", async () => {
  for (const r of ["/admin/api/info", "/admin/", "/console/console.js"]) {
    const res = await request("GET", r, { key: ADMIN_KEY, port: server.port });
    assert.equal(res.status, 404, r);
  }
});

test("10 failed attempts from one address: 429 with Retry-After, even with the right key; other addresses unaffected", async () => {
  const from = "127.0.0.2";
  for (let i = 0; i < 10; i++) {
    const r = await get("/admin/api/info", { key: `wrong-${i}`, from });
    assert.equal(r.status, 401, `attempt ${i + 1}`);
  }
  const limited = await get("/admin/api/info", { from });
  assert.equal(limited.status, 429, limited.text);
  assert.equal(conform("/admin/api/info", "get", limited).error, "rate_limited");
  const secs = Number(limited.headers["retry-after"]);
  assert.ok(secs >= 1 && secs <= 60, `Retry-After ${limited.headers["retry-after"]}`);
  // every route refuses that address (the documented 429 of each)
  for (const [method, route, body, query = ""] of [
    ["get", "/admin/api/stats"],
    ["get", "/admin/api/top"],
    ["post", "/admin/api/disconnect", { connectionId: "c_x" }],
    ["get", "/admin/api/history", undefined, "?orgId=o_1&channelId=task:t_1"],
    ["post", "/admin/api/tail-token", { orgId: "o_1", channelId: "task:t_1" }],
  ]) {
    const r = await request(method.toUpperCase(), route + query, { key: ADMIN_KEY, body, from });
    assert.equal(r.status, 429, route);
    conform(route, method, r);
  }
  const elsewhere = await get("/admin/api/info");
  assert.equal(elsewhere.status, 200, "127.0.0.1 is not limited");
});

test("the check fails on an answer missing a required field, with an extra field, or with an undocumented status", async () => {
  const res = await get("/admin/api/info");
  const body = JSON.parse(res.text);
  const variant = (mutate) => {
    const b = structuredClone(body);
    mutate(b);
    return { ...res, text: JSON.stringify(b) };
  };
  const fails = (r, what) => assert.throws(() => conform("/admin/api/info", "get", r, { record: false }), /does not match|lists no/, what);
  conform("/admin/api/info", "get", res, { record: false });
  fails(variant((b) => delete b.connections), "no connections");
  fails(variant((b) => delete b.node.lastSeen), "a node without lastSeen");
  fails(variant((b) => delete b.nodes[0].id), "nodes[0] without id");
  fails(variant((b) => (b.backplane = "etcd")), "an unknown backplane");
  fails(variant((b) => (b.extra = 1)), "an undocumented field");
  fails({ ...res, status: 418 }, "an undocumented status");
  const err = { status: 401, headers: { "content-type": "application/json" }, text: JSON.stringify({ error: "unauthorized" }) };
  assert.throws(() => conform("/admin/api/info", "get", err, { record: false }), /does not match/, "an error without message");
});

test("every operation and every documented status (but 503) was seen", () => {
  const missing = [];
  for (const [route, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      for (const status of Object.keys(op.responses)) {
        if (status === "503") continue;
        const k = `${method.toUpperCase()} ${route} ${status}`;
        if (!seen.has(k)) missing.push(k);
      }
    }
  }
  assert.deepEqual(missing, []);
});
