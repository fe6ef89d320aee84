// Integration tests against the real cortex-realtime binary (Node's WebSocket; Node 20 needs
// --experimental-websocket, which `npm test` passes).
import { test, describe, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { CortexRealtime } from "../dist/index.js";
import { startServer, startProxy, makeToken, signToken, publish, waitFor, record, chat, sleep } from "./harness.mjs";

let server;
let proxy;
const clients = [];

before(async () => {
  // leeway 0 so that the expiry tests take seconds, not the default 30 s
  server = await startServer({ extraArgs: ["--jwt-leeway", "0"] });
  proxy = await startProxy(server.port);
});

after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await server?.stop();
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function client(options = {}) {
  const c = new CortexRealtime({
    url: proxy.wsUrl,
    token: async () => makeToken(),
    backoff: { baseMs: 100, capMs: 400 },
    ...options,
  });
  clients.push(c);
  return c;
}

async function expectOk(res) {
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body;
}

describe("against cortex-realtime", () => {
  test("connect with the auth frame, subscribe, receive typed events", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    const info = await c.subscribe("project:p_4");
    assert.equal(info.channelId, "project:p_4");
    assert.equal(info.resumed, false);
    assert.equal(info.recovered, undefined);
    assert.equal(c.state, "connected");
    assert.equal(c.connection.userId, "u_1");
    assert.equal(c.connection.orgId, "o_1");
    assert.match(c.connection.connectionId, /^c_/);

    const published = await expectOk(
      await publish(server, {
        orgId: "o_1",
        type: "task.status_changed",
        payload: { taskId: "t_9", projectId: "p_4", oldStatus: "todo", newStatus: "in_progress" },
      }),
    );
    await expectOk(
      await publish(server, {
        events: [
          { orgId: "o_1", type: "task.created", payload: { taskId: "t_10", title: "Write it", projectId: "p_4" } },
          {
            orgId: "o_1",
            type: "agent.completed",
            payload: { agentId: "a", agentName: "coder", taskId: "t_10", result: { ok: true }, duration: 1234 },
            channels: ["project:p_4"],
          },
        ],
      }),
    );
    await waitFor(() => r.events.length === 3, { what: "3 events" });
    const [a, b, d] = r.events;
    assert.equal(a.type, "task.status_changed");
    assert.equal(a.id, published.id);
    assert.equal(a.channelId, "project:p_4");
    assert.equal(a.epoch, info.epoch);
    assert.deepEqual(
      r.events.map((e) => e.offset),
      [info.offset + 1, info.offset + 2, info.offset + 3],
    );
    // the discriminated union narrows the payload
    const seen = [];
    for (const e of r.events) {
      switch (e.type) {
        case "task.status_changed":
          seen.push(`${e.payload.taskId}:${e.payload.oldStatus}->${e.payload.newStatus}`);
          break;
        case "task.created":
          seen.push(`${e.payload.taskId}:${e.payload.title}`);
          break;
        case "agent.completed":
          seen.push(`${e.payload.agentName}:${e.payload.duration}`);
          break;
        default:
          seen.push("?");
      }
    }
    assert.deepEqual(seen, ["t_9:todo->in_progress", "t_10:Write it", "coder:1234"]);
    assert.match(a.payload.timestamp, /^\d{4}-\d\d-\d\dT/, "timestamp filled in by the server");
    assert.equal(b.payload.projectId, "p_4");
    assert.deepEqual(d.payload.result, { ok: true });
    assert.deepEqual(c.position("project:p_4"), { offset: d.offset, epoch: d.epoch });
    assert.equal(r.errors.length, 0);
  });

  test("token in the query string; per-channel handlers", async () => {
    const c = client({ tokenTransport: "query", url: server.wsUrl, token: makeToken() });
    c.connect();
    const mine = [];
    await c.subscribe("agent:coder", { onEvent: (e) => mine.push(e) });
    await expectOk(
      await publish(server, {
        orgId: "o_1",
        type: "agent.spawned",
        payload: { agentId: "a_1", agentName: "coder", taskId: "t_1" },
      }),
    );
    await waitFor(() => mine.length === 1, { what: "agent.spawned" });
    assert.equal(mine[0].type, "agent.spawned");
    assert.equal(mine[0].channelId, "agent:coder");
  });

  test("unsubscribe stops delivery; refused subscribes reject", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await c.subscribe("task:u_1");
    await c.subscribe("task:u_2");
    await expectOk(await publish(server, chat("task:u_1", 1)));
    await waitFor(() => r.events.length === 1);
    await c.unsubscribe("task:u_1");
    assert.deepEqual(c.channels(), ["task:u_2"]);
    await expectOk(await publish(server, chat("task:u_1", 2)));
    await expectOk(await publish(server, chat("task:u_2", 3)));
    await waitFor(() => r.events.some((e) => e.channelId === "task:u_2"), { what: "sentinel" });
    assert.deepEqual(
      r.events.map((e) => `${e.channelId}#${e.payload.seq}`),
      ["task:u_1#1", "task:u_2#3"],
    );

    await assert.rejects(c.subscribe("org:someone_else"), (e) => e.code === "forbidden");
    await assert.rejects(c.subscribe("nonsense"), (e) => e.code === "invalid_channel");
    assert.equal(r.errors.length, 2);
    assert.deepEqual(c.channels(), ["task:u_2"]);
    assert.equal(c.state, "connected");
  });

  test("reconnect after the socket is killed resumes with recovered:true", async () => {
    const c = client({ backoff: { baseMs: 300, capMs: 300, random: () => 1 } });
    const r = record(c);
    c.connect();
    const first = await c.subscribe("task:resume");
    for (let i = 1; i <= 3; i++) await expectOk(await publish(server, chat("task:resume", i)));
    await waitFor(() => r.events.length === 3);

    proxy.cut();
    await waitFor(() => c.state === "waiting", { what: "disconnect noticed" });
    // published while the client is away (it waits 300 ms before reconnecting)
    for (let i = 4; i <= 8; i++) await expectOk(await publish(server, chat("task:resume", i)));
    await waitFor(() => r.events.length === 8, { what: "the replay", timeoutMs: 5000 });
    for (let i = 9; i <= 10; i++) await expectOk(await publish(server, chat("task:resume", i)));
    await waitFor(() => r.events.length === 10, { what: "10 events", timeoutMs: 5000 });

    assert.equal(r.connected.length, 2);
    assert.equal(r.connected[1].reconnect, true);
    assert.equal(r.reconnecting[0].delayMs, 300);
    assert.deepEqual(
      r.subscribed.map((s) => [s.resumed, s.recovered]),
      [[false, undefined], [true, true]],
    );
    assert.deepEqual(r.events.map((e) => e.payload.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(
      r.events.map((e) => e.offset),
      Array.from({ length: 10 }, (_, i) => first.offset + 1 + i),
    );
    assert.equal(new Set(r.events.map((e) => e.id)).size, 10);
  });

  test("4001: an invalid token stops the client without a reconnect loop", async () => {
    const before = proxy.accepted;
    const c = client({ token: async () => "not.a.token" });
    const r = record(c);
    c.connect();
    await waitFor(() => r.closed.length === 1, { what: "closed" });
    assert.equal(r.closed[0].code, 4001);
    assert.equal(c.state, "closed");
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0].kind, "auth");
    assert.equal(r.errors[0].closeCode, 4001);
    assert.ok(!r.errors[0].message.includes("not.a.token"));
    await sleep(500);
    assert.equal(proxy.accepted - before, 1, "exactly one connection attempt");
    assert.equal(r.reconnecting.length, 0);
  });

  test("refresh before expiry keeps the connection", async () => {
    const reasons = [];
    const c = client({
      token: async ({ reason }) => {
        reasons.push(reason);
        return makeToken({ ttl: "3s" });
      },
    });
    const r = record(c);
    c.connect();
    await c.subscribe("task:refresh");
    const id = c.connection.connectionId;
    await waitFor(() => r.refreshed.length >= 2, { what: "two refreshes", timeoutMs: 8000 });
    assert.equal(c.connection.connectionId, id, "the same connection");
    assert.equal(r.disconnected.length, 0);
    assert.deepEqual(reasons.slice(0, 3), ["connect", "refresh", "refresh"]);
    assert.ok(Date.parse(r.refreshed[1].expiresAt) > Date.parse(r.connected[0].expiresAt));
  });

  test("4002: a new token from the provider, then reconnect and resume", async () => {
    const reasons = [];
    const c = client({
      refreshMarginMs: false,
      token: async ({ reason }) => {
        reasons.push(reason);
        return makeToken({ ttl: reason === "connect" ? "1s" : "1h" });
      },
    });
    const r = record(c);
    c.connect();
    await c.subscribe("task:expiry");
    await expectOk(await publish(server, chat("task:expiry", 1)));
    await waitFor(() => r.disconnected.length === 1, { what: "4002", timeoutMs: 5000 });
    assert.equal(r.disconnected[0].code, 4002);
    await expectOk(await publish(server, chat("task:expiry", 2)));
    await waitFor(() => r.subscribed.length === 2, { what: "resubscribed" });
    await waitFor(() => r.events.length === 2, { what: "event 2" });
    assert.deepEqual(reasons, ["connect", "expired"]);
    assert.equal(r.reconnecting[0].delayMs, 0, "no backoff for the first 4002");
    assert.equal(r.subscribed[1].recovered, true);
    assert.deepEqual(r.events.map((e) => e.payload.seq), [1, 2]);
  });

  test("server restart on the same port: resume reports recovered:false (new epoch)", async () => {
    const c = client({ backoff: { baseMs: 50, capMs: 200 } });
    const r = record(c);
    c.connect();
    const first = await c.subscribe("task:restart");
    await expectOk(await publish(server, chat("task:restart", 1)));
    await waitFor(() => r.events.length === 1);

    server = await server.restart();
    await waitFor(() => r.subscribed.length === 2, { what: "resubscribed", timeoutMs: 8000 });
    const again = r.subscribed[1];
    assert.equal(again.resumed, true);
    assert.equal(again.recovered, false);
    assert.notEqual(again.epoch, first.epoch);
    assert.ok(r.disconnected.some((d) => d.code === 1001), "the drain closed with 1001");

    await expectOk(await publish(server, chat("task:restart", 2)));
    await waitFor(() => r.events.length === 2);
    assert.equal(r.events[1].epoch, again.epoch);
    assert.equal(r.events[1].offset, again.offset + 1);
    assert.deepEqual(c.position("task:restart"), { offset: r.events[1].offset, epoch: again.epoch });
  });

  test("a client that stops for good rejects its pending subscribes: 4001, 4002 with a fixed token, close()", { timeout: 30000 }, async () => {
    // 4001 (an invalid fixed token, first-frame transport)
    const bad = client({ token: "not.a.token" });
    const p1 = bad.subscribe("task:never");
    bad.connect();
    await assert.rejects(p1, (e) => e.kind === "closed" && e.closeCode === 4001 && e.channelId === "task:never");
    assert.deepEqual(bad.channels(), ["task:never"], "the subscription is kept for a later connect()");

    // 4002 with a fixed token: the server refuses an expired one (leeway 0 here)
    const old = client({ token: signToken({ exp: Math.floor(Date.now() / 1000) - 5 }) });
    const r = record(old);
    const p2 = old.subscribe("task:never");
    old.connect();
    await assert.rejects(p2, (e) => e.kind === "closed" && e.closeCode === 4002);
    assert.deepEqual(r.errors.map((e) => [e.kind, e.closeCode]), [["auth", 4002]]);

    // close() while connecting, and close() before connect()
    const c = client();
    c.connect();
    const p3 = c.subscribe("task:never");
    c.close();
    await assert.rejects(p3, (e) => e.kind === "closed" && e.closeCode === 1000);
    const idle = client();
    const p4 = idle.subscribe("task:never");
    idle.close();
    await assert.rejects(p4, (e) => e.kind === "closed");
  });

  test("query transport: an expired fixed token is never sent; auth error and stop", { timeout: 30000 }, async () => {
    const before = proxy.accepted;
    const c = client({ tokenTransport: "query", token: signToken({ exp: Math.floor(Date.now() / 1000) - 60 }) });
    const r = record(c);
    const p = c.subscribe("task:q");
    c.connect();
    await assert.rejects(p, (e) => e.kind === "closed" && e.closeCode === 4002);
    assert.equal(c.state, "closed");
    assert.deepEqual(r.errors.map((e) => [e.kind, e.closeCode]), [["auth", 4002]]);
    assert.equal(r.reconnecting.length, 0);
    await sleep(300);
    assert.equal(proxy.accepted, before, "no connection attempt");
  });

  test("query transport: an expired token from the provider is replaced before connecting", { timeout: 30000 }, async () => {
    const reasons = [];
    const before = proxy.accepted;
    const c = client({
      tokenTransport: "query",
      token: async ({ reason }) => {
        reasons.push(reason);
        // a stale cached token first
        return reason === "expired" ? makeToken({ sub: "u_new" }) : signToken({ exp: Math.floor(Date.now() / 1000) - 60 });
      },
    });
    const r = record(c);
    c.connect();
    await c.subscribe("task:q2");
    assert.deepEqual(reasons, ["connect", "expired"]);
    assert.equal(c.connection.userId, "u_new");
    assert.equal(proxy.accepted - before, 1);
    assert.deepEqual(r.errors, []);
  });

  test("query transport: a token within the 30 s leeway is sent; the server's refusal is a transport error at each attempt", { timeout: 30000 }, async () => {
    // this server has leeway 0: it refuses (HTTP 401) what the client still sends
    const token = signToken({ exp: Math.floor(Date.now() / 1000) - 10 });
    const c = client({ tokenTransport: "query", token });
    const r = record(c);
    c.connect();
    await waitFor(() => r.errors.length >= 2, { what: "two failed attempts" });
    for (const e of r.errors) {
      assert.equal(e.kind, "transport");
      assert.equal(e.closeCode, 1006);
      assert.match(e.message, /\?token=/);
      assert.ok(!e.message.includes(token), "the token is never in a message");
    }
    assert.ok(r.reconnecting.length >= 2, "it keeps retrying with backoff");
    c.close();
  });

  test("close() ends the connection with 1000 and stops", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await c.subscribe("task:bye");
    const before = proxy.accepted;
    c.close();
    assert.equal(c.state, "closed");
    assert.equal(r.closed[0].code, 1000);
    await sleep(300);
    assert.equal(proxy.accepted, before);
  });
});
