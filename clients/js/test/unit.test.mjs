// Unit tests: backoff, close-code policy, and the client's state machine against a scripted fake
// WebSocket (no server, no network).
import { test, describe, afterEach } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import {
  Backoff,
  backoffBound,
  closeAction,
  CortexRealtime,
  CloseCode,
  EVENT_TYPES,
  isEventType,
  isTokenExpired,
  tokenExpiresAt,
  TOKEN_EXP_LEEWAY_MS,
} from "../dist/index.js";

describe("backoff", () => {
  test("bounds double from 1 s and stop at 30 s", () => {
    const bounds = [0, 1, 2, 3, 4, 5, 6, 10, 100, 5000].map((a) => backoffBound(a, 1000, 30000));
    assert.deepEqual(bounds, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]);
  });

  test("defaults are 1 s, 30 s, reset after 30 s", () => {
    const b = new Backoff({ random: () => 1 });
    assert.equal(b.baseMs, 1000);
    assert.equal(b.capMs, 30000);
    assert.equal(b.resetAfterMs, 30000);
    assert.deepEqual(
      Array.from({ length: 8 }, () => b.next()),
      [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000],
    );
  });

  test("full jitter: the delay is random * bound, within [0, bound]", () => {
    const draws = [0, 0.5, 0.25, 0.999, 0.1, 0.75];
    let i = 0;
    const b = new Backoff({ random: () => draws[i++] });
    const got = draws.map(() => b.next());
    assert.deepEqual(got, [0, 1000, 1000, Math.round(0.999 * 8000), 1600, 22500]);
    // property: many draws with Math.random stay within bounds
    const r = new Backoff();
    for (let n = 0; n < 200; n++) {
      const bound = r.currentBound;
      const d = r.next();
      assert.ok(d >= 0 && d <= bound, `${d} within [0, ${bound}]`);
      assert.ok(bound <= 30000);
    }
  });

  test("a random function out of range is clamped", () => {
    const vals = [-1, 2, NaN];
    let i = 0;
    const b = new Backoff({ baseMs: 100, capMs: 100, random: () => vals[i++] });
    assert.deepEqual([b.next(), b.next(), b.next()], [0, 100, 0]);
  });

  test("configurable base and cap", () => {
    const b = new Backoff({ baseMs: 10, capMs: 50, random: () => 1 });
    assert.deepEqual(Array.from({ length: 5 }, () => b.next()), [10, 20, 40, 50, 50]);
    assert.throws(() => new Backoff({ baseMs: 100, capMs: 10 }), RangeError);
  });

  test("reset only after a connection that stayed up for 30 s", () => {
    const b = new Backoff({ random: () => 1 });
    b.next();
    b.next();
    b.next();
    b.connectionEnded(29999);
    assert.equal(b.currentBound, 8000);
    b.connectionEnded(30000);
    assert.equal(b.currentBound, 1000);
    assert.equal(b.attempts, 0);
  });
});

describe("close-code policy", () => {
  test("every code of CONTRACT section 8", () => {
    const table = {
      1000: "stop",
      1001: "reconnect",
      1008: "reconnect",
      1009: "reconnect",
      4001: "stop-auth",
      4002: "new-token",
      4003: "reconnect",
      4008: "reconnect",
      4009: "reconnect",
      4029: "reconnect",
      // not in the table: network failures and anything unknown reconnect
      1005: "reconnect",
      1006: "reconnect",
      1011: "reconnect",
      4999: "reconnect",
    };
    for (const [code, action] of Object.entries(table)) {
      assert.equal(closeAction(Number(code)), action, `close ${code}`);
    }
    assert.equal(CloseCode.TOKEN_INVALID, 4001);
  });

  test("the sixteen event types", () => {
    assert.equal(EVENT_TYPES.length, 16);
    assert.ok(isEventType("task.status_changed"));
    assert.ok(!isEventType("task.exploded"));
  });
});

// --- a scripted WebSocket -------------------------------------------------------------------

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = undefined;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  static reset() {
    FakeSocket.all = [];
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // server side
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  connected(expiresAt = new Date(Date.now() + 3600_000).toISOString()) {
    this.push({ type: "connected", connectionId: `c_${FakeSocket.all.length}`, userId: "u", orgId: "o", expiresAt });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  cmds(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

function ev(channelId, offset, epoch = "e_1", type = "task.deleted") {
  return { type, channelId, id: `evt_${epoch}_${offset}`, offset, epoch, payload: { taskId: "t", timestamp: "2026-01-01T00:00:00Z" } };
}

const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function fakeClient(extra = {}) {
  FakeSocket.reset();
  const tokenCalls = [];
  const client = new CortexRealtime({
    url: "ws://fake/api/ws",
    token: async (req) => {
      tokenCalls.push(req.reason);
      return `tok${tokenCalls.length}`;
    },
    WebSocket: FakeSocket,
    backoff: { baseMs: 20, capMs: 80, random: () => 1 },
    pingIntervalMs: 0,
    ...extra,
  });
  clients.push(client);
  const seen = { events: [], subscribed: [], errors: [], reconnecting: [], closed: [], refreshed: [] };
  client.on("event", (e) => seen.events.push(e));
  client.on("subscribed", (s) => seen.subscribed.push(s));
  client.on("error", (e) => seen.errors.push(e));
  client.on("reconnecting", (r) => seen.reconnecting.push(r));
  client.on("closed", (c) => seen.closed.push(c));
  client.on("refreshed", (r) => seen.refreshed.push(r));
  return { client, tokenCalls, seen };
}

async function until(fn, what = "condition", ms = 2000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(2);
  }
}

async function connectFake(client, subs = []) {
  for (const ch of subs) client.subscribe(ch);
  const before = FakeSocket.all.length;
  client.connect();
  await until(() => FakeSocket.all.length > before, "socket created");
  const s = FakeSocket.last();
  s.open();
  s.connected();
  for (const ch of subs) {
    const cmd = s.cmds("subscribe").find((c) => c.channelId === ch && !c.answered);
    cmd.answered = true;
    s.push({ type: "subscribed", channelId: ch, offset: 0, epoch: "e_1", ref: cmd.ref });
  }
  return s;
}

describe("client state machine (fake socket)", () => {
  test("auth frame first by default; query transport puts the token in the URL", async () => {
    const { client, tokenCalls } = fakeClient();
    client.subscribe("task:t_1");
    client.connect();
    await until(() => FakeSocket.all.length === 1);
    const s = FakeSocket.last();
    assert.equal(s.url, "ws://fake/api/ws");
    s.open();
    assert.deepEqual(s.sent[0], { type: "auth", token: "tok1" });
    s.connected();
    assert.equal(s.sent[1].type, "subscribe");
    assert.equal(s.sent[1].channelId, "task:t_1");
    assert.equal(s.sent[1].since, undefined);
    assert.deepEqual(tokenCalls, ["connect"]);
    client.close();

    const q = fakeClient({ tokenTransport: "query", token: "abc.def.ghi" });
    q.client.connect();
    await until(() => FakeSocket.all.length === 1);
    assert.equal(FakeSocket.last().url, "ws://fake/api/ws?token=abc.def.ghi");
    FakeSocket.last().open();
    assert.equal(FakeSocket.last().sent.length, 0, "no auth frame with the query transport");
    q.client.close();
  });

  test("4001 stops, reports an auth error, and never reconnects", async () => {
    const { client, seen } = fakeClient();
    const s = await connectFake(client);
    s.serverClose(4001, "invalid token");
    assert.equal(client.state, "closed");
    assert.equal(seen.errors.length, 1);
    assert.equal(seen.errors[0].kind, "auth");
    assert.equal(seen.errors[0].closeCode, 4001);
    assert.deepEqual(seen.closed, [{ code: 4001, reason: "invalid token" }]);
    await sleep(200);
    assert.equal(FakeSocket.all.length, 1, "no new socket");
  });

  test("1000 stops quietly", async () => {
    const { client, seen } = fakeClient();
    const s = await connectFake(client);
    s.serverClose(1000);
    assert.equal(client.state, "closed");
    assert.equal(seen.errors.length, 0);
    await sleep(150);
    assert.equal(FakeSocket.all.length, 1);
  });

  test("4002 asks the provider for a new token and reconnects at once", async () => {
    const { client, tokenCalls, seen } = fakeClient();
    const s = await connectFake(client);
    s.serverClose(4002, "token expired");
    assert.equal(seen.reconnecting[0].delayMs, 0);
    await until(() => FakeSocket.all.length === 2, "reconnected");
    assert.deepEqual(tokenCalls, ["connect", "expired"]);
    const s2 = FakeSocket.last();
    s2.open();
    assert.deepEqual(s2.sent[0], { type: "auth", token: "tok2" });
    // an expired token again (refused at auth): now it backs off
    s2.serverClose(4002);
    assert.ok(seen.reconnecting[1].delayMs > 0);
    client.close();
  });

  test("4002 with a fixed token stops (it cannot get a new one)", async () => {
    const { client, seen } = fakeClient({ token: "fixed" });
    const s = await connectFake(client);
    s.serverClose(4002);
    assert.equal(client.state, "closed");
    assert.equal(seen.errors[0].kind, "auth");
  });

  for (const code of [1001, 1006, 1008, 1009, 4003, 4008, 4009, 4029]) {
    test(`${code} reconnects with backoff and resumes`, async () => {
      const { client, seen } = fakeClient();
      const s = await connectFake(client, ["task:t_1"]);
      s.push(ev("task:t_1", 1));
      s.push(ev("task:t_1", 2));
      s.serverClose(code);
      assert.equal(seen.reconnecting.length, 1);
      assert.equal(seen.reconnecting[0].delayMs, 20, "random()=1 gives the full first bound");
      assert.equal(seen.reconnecting[0].code, code);
      assert.equal(client.state, "waiting");
      await until(() => FakeSocket.all.length === 2, "reconnected");
      const s2 = FakeSocket.last();
      s2.open();
      s2.connected();
      const sub = s2.cmds("subscribe")[0];
      assert.deepEqual(sub.since, { offset: 2, epoch: "e_1" });
      client.close();
    });
  }

  test("backoff doubles across failed attempts and resets after a connection that stayed up", async () => {
    const { client, seen } = fakeClient({ backoff: { baseMs: 5, capMs: 20, resetAfterMs: 50, random: () => 1 } });
    const s = await connectFake(client);
    s.serverClose(1006);
    for (let i = 2; i <= 4; i++) {
      await until(() => FakeSocket.all.length === i);
      FakeSocket.last().serverClose(1006); // fails before `connected`
    }
    assert.deepEqual(seen.reconnecting.map((r) => r.delayMs), [5, 10, 20, 20]);
    await until(() => FakeSocket.all.length === 5);
    const s5 = FakeSocket.last();
    s5.open();
    s5.connected();
    await sleep(60); // up for longer than resetAfterMs
    s5.serverClose(1001);
    assert.equal(seen.reconnecting.at(-1).delayMs, 5, "reset to the base");
    assert.equal(seen.reconnecting.at(-1).attempt, 1);
    client.close();
  });

  test("resume: replayed duplicates are dropped; recovered:false continues from the live edge", async () => {
    const { client, seen } = fakeClient();
    const s = await connectFake(client, ["task:t_1"]);
    for (let o = 1; o <= 3; o++) s.push(ev("task:t_1", o));
    s.push(ev("task:t_1", 2)); // a duplicate on the same connection
    s.serverClose(1006);
    await until(() => FakeSocket.all.length === 2);
    const s2 = FakeSocket.last();
    s2.open();
    s2.connected();
    const sub = s2.cmds("subscribe")[0];
    assert.deepEqual(sub.since, { offset: 3, epoch: "e_1" });
    s2.push({ type: "subscribed", channelId: "task:t_1", offset: 5, epoch: "e_1", recovered: true, ref: sub.ref });
    for (let o = 3; o <= 6; o++) s2.push(ev("task:t_1", o)); // 3 again, then 4..6
    assert.deepEqual(seen.events.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(
      seen.subscribed.map((x) => [x.resumed, x.recovered]),
      [[false, undefined], [true, true]],
    );
    assert.deepEqual(client.position("task:t_1"), { offset: 6, epoch: "e_1" });

    s2.serverClose(1001);
    await until(() => FakeSocket.all.length === 3);
    const s3 = FakeSocket.last();
    s3.open();
    s3.connected();
    const sub3 = s3.cmds("subscribe")[0];
    assert.deepEqual(sub3.since, { offset: 6, epoch: "e_1" });
    s3.push({ type: "subscribed", channelId: "task:t_1", offset: 2, epoch: "e_2", recovered: false, ref: sub3.ref });
    s3.push(ev("task:t_1", 3, "e_2"));
    assert.equal(seen.subscribed.at(-1).recovered, false);
    assert.deepEqual(seen.events.at(-1).epoch, "e_2");
    assert.deepEqual(client.position("task:t_1"), { offset: 3, epoch: "e_2" });
    client.close();
  });

  test("subscribe/unsubscribe any time; errors reject; events of other channels are dropped", async () => {
    const { client, seen } = fakeClient();
    const s = await connectFake(client);
    const p = client.subscribe("agent:a");
    const cmd = s.cmds("subscribe")[0];
    s.push({ type: "subscribed", channelId: "agent:a", offset: 7, epoch: "e_9", ref: cmd.ref });
    assert.deepEqual(await p, { channelId: "agent:a", offset: 7, epoch: "e_9", resumed: false });
    // again: idempotent, no new command
    assert.equal((await client.subscribe("agent:a")).offset, 7);
    assert.equal(s.cmds("subscribe").length, 1);

    const bad = client.subscribe("org:other");
    const cmd2 = s.cmds("subscribe")[1];
    s.push({ type: "error", code: "forbidden", message: "nope", channelId: "org:other", ref: cmd2.ref });
    await assert.rejects(bad, (e) => e.kind === "server" && e.code === "forbidden" && e.channelId === "org:other");
    assert.deepEqual(client.channels(), ["agent:a"]);

    s.push(ev("task:zzz", 1)); // never subscribed
    s.push(ev("agent:a", 8, "e_9"));
    const u = client.unsubscribe("agent:a");
    const ucmd = s.cmds("unsubscribe")[0];
    s.push(ev("agent:a", 9, "e_9")); // in flight before the server processed it
    s.push({ type: "unsubscribed", channelId: "agent:a", ref: ucmd.ref });
    await u;
    assert.deepEqual(seen.events.map((e) => `${e.channelId}/${e.offset}`), ["agent:a/8"]);
    client.close();
  });

  test("rate_limited subscribe is retried", async () => {
    const { client } = fakeClient();
    const s = await connectFake(client);
    const p = client.subscribe("task:x");
    const c1 = s.cmds("subscribe")[0];
    s.push({ type: "error", code: "rate_limited", message: "slow down", channelId: "task:x", ref: c1.ref });
    await until(() => s.cmds("subscribe").length === 2, "retry", 3000);
    const c2 = s.cmds("subscribe")[1];
    s.push({ type: "subscribed", channelId: "task:x", offset: 0, epoch: "e", ref: c2.ref });
    assert.equal((await p).channelId, "task:x");
    client.close();
  });

  test("refresh is sent ahead of expiresAt with a token from the provider", async () => {
    const { client, tokenCalls, seen } = fakeClient({ refreshMarginMs: 60000 });
    client.connect();
    await until(() => FakeSocket.all.length === 1);
    const s = FakeSocket.last();
    s.open();
    s.connected(new Date(Date.now() + 200).toISOString()); // halfway: ~100 ms
    await until(() => s.cmds("refresh").length === 1, "refresh sent");
    assert.deepEqual(tokenCalls, ["connect", "refresh"]);
    const r = s.cmds("refresh")[0];
    assert.equal(r.token, "tok2");
    const next = new Date(Date.now() + 3600_000).toISOString();
    s.push({ type: "refreshed", expiresAt: next, ref: r.ref });
    assert.equal(client.expiresAt, next);
    assert.equal(seen.refreshed.length, 1);
    client.close();
  });

  test("no connected within the connect timeout: retry", async () => {
    const { client, seen } = fakeClient({ connectTimeoutMs: 50 });
    client.connect();
    await until(() => FakeSocket.all.length === 1);
    FakeSocket.last().open();
    await until(() => seen.reconnecting.length === 1, "gave up on the attempt");
    assert.ok(FakeSocket.all[0].closedWith, "the stuck socket was closed");
    client.close();
  });

  test("no frame after a ping: the connection is dropped and retried", async () => {
    const { client, seen } = fakeClient({ pingIntervalMs: 30, pongTimeoutMs: 30 });
    const s = await connectFake(client);
    await until(() => s.cmds("ping").length === 1, "ping sent");
    await until(() => seen.reconnecting.length === 1, "dead connection noticed");
    client.close();
  });

  test("close() stops a pending retry", async () => {
    const { client } = fakeClient({ backoff: { baseMs: 50, capMs: 50, random: () => 1 } });
    const s = await connectFake(client);
    s.serverClose(1006);
    assert.equal(client.state, "waiting");
    client.close();
    assert.equal(client.state, "closed");
    await sleep(100);
    assert.equal(FakeSocket.all.length, 1);
  });

  test("a missing WebSocket implementation is a clear error", () => {
    const saved = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      assert.throws(() => new CortexRealtime({ url: "ws://x", token: "t" }), /WebSocket/);
    } finally {
      if (saved) globalThis.WebSocket = saved;
    }
  });
});

test("an unsubscribed the client did not ask for (narrower refresh token) forgets the channel", async () => {
  const { client } = fakeClient();
  const s = await connectFake(client, ["task:a", "task:b"]);
  s.push({ type: "unsubscribed", channelId: "task:a" });
  assert.deepEqual(client.channels(), ["task:b"]);
  s.serverClose(1006);
  await until(() => FakeSocket.all.length === 2);
  const s2 = FakeSocket.last();
  s2.open();
  assert.deepEqual(s2.cmds("subscribe").map((c) => c.channelId), ["task:b"]);
  client.close();
});

test("a token valid for months does not refresh at once (timer overflow)", async () => {
  const { client, tokenCalls } = fakeClient();
  client.connect();
  await until(() => FakeSocket.all.length === 1);
  const s = FakeSocket.last();
  s.open();
  s.connected(new Date(Date.now() + 90 * 24 * 3600 * 1000).toISOString());
  await sleep(50);
  assert.equal(s.cmds("refresh").length, 0);
  assert.deepEqual(tokenCalls, ["connect"]);
  client.close();
});

test("a fixed token is never refreshed", async () => {
  const { client } = fakeClient({ token: "fixed" });
  client.connect();
  await until(() => FakeSocket.all.length === 1);
  const s = FakeSocket.last();
  s.open();
  s.connected(new Date(Date.now() + 100).toISOString());
  await sleep(150);
  assert.equal(s.cmds("refresh").length, 0);
  client.close();
});

// --- continuity, unavailable, failed attempts, token expiry, stopping -------------------------

/** An unsigned JWT-shaped token with these claims (the client never checks signatures). */
function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2ln`;
}

describe("token exp (no signature check)", () => {
  test("reads exp from the base64url JSON payload", () => {
    assert.equal(tokenExpiresAt(jwt({ sub: "ü_1", exp: 1700000000 })), 1700000000 * 1000);
    assert.equal(tokenExpiresAt(jwt({ sub: "u" })), undefined, "no exp");
    assert.equal(tokenExpiresAt(jwt({ exp: "soon" })), undefined, "not a number");
    assert.equal(tokenExpiresAt("not.a.token"), undefined);
    assert.equal(tokenExpiresAt("abc"), undefined);
    assert.equal(tokenExpiresAt("a.!!!.c"), undefined);
  });

  test("expired only once exp is more than 30 s in the past", () => {
    const now = 1_800_000_000_000;
    const at = (s) => jwt({ exp: Math.floor(now / 1000) + s });
    assert.equal(TOKEN_EXP_LEEWAY_MS, 30000);
    assert.equal(isTokenExpired(at(60), now), false);
    assert.equal(isTokenExpired(at(-10), now), false, "within the leeway");
    assert.equal(isTokenExpired(at(-29), now), false);
    assert.equal(isTokenExpired(at(-30), now), true);
    assert.equal(isTokenExpired(at(-3600), now), true);
    assert.equal(isTokenExpired("opaque-token", now), false, "unknown: the server decides");
  });
});

describe("client state machine, continued (fake socket)", { timeout: 20000 }, () => {
  test("an unsolicited subscribed is reported as a resume that did not recover and moves the position", async () => {
    const { client, seen } = fakeClient();
    const s = await connectFake(client, ["task:t_1"]);
    s.push(ev("task:t_1", 1));
    s.push({ type: "subscribed", channelId: "task:t_1", offset: 0, epoch: "e_2", recovered: false });
    assert.deepEqual(seen.subscribed.at(-1), { channelId: "task:t_1", offset: 0, epoch: "e_2", resumed: true, recovered: false });
    assert.deepEqual(client.position("task:t_1"), { offset: 0, epoch: "e_2" });
    s.push(ev("task:t_1", 1, "e_2")); // offset 1 again, but of the new epoch: delivered
    assert.deepEqual(seen.events.map((e) => `${e.epoch}/${e.offset}`), ["e_1/1", "e_2/1"]);
    // a notice for a channel it is not subscribed to is ignored
    s.push({ type: "subscribed", channelId: "task:other", offset: 3, epoch: "e_9", recovered: false });
    assert.equal(seen.subscribed.length, 2);
    assert.equal(client.position("task:other"), undefined);
    // the next resume starts from the new position
    s.serverClose(1006);
    await until(() => FakeSocket.all.length === 2);
    const s2 = FakeSocket.last();
    s2.open();
    assert.deepEqual(s2.cmds("subscribe")[0].since, { offset: 1, epoch: "e_2" });
    client.close();
  });

  test("unavailable: the subscribe is sent again with growing, jittered delays; the promise waits for success", async () => {
    const draws = [];
    const { client, seen } = fakeClient({
      backoff: { baseMs: 30, capMs: 120, random: () => (draws.push(1), 1) },
    });
    const s = await connectFake(client);
    let settled = false;
    const p = client.subscribe("task:u");
    p.then(() => (settled = true), () => (settled = true));
    const sentAt = [];
    for (let i = 0; i < 4; i++) {
      await until(() => s.cmds("subscribe").length === i + 1, `subscribe #${i + 1}`, 3000);
      sentAt.push(Date.now());
      const cmd = s.cmds("subscribe")[i];
      s.push({ type: "error", code: "unavailable", message: "the backplane is unavailable", channelId: "task:u", ref: cmd.ref });
    }
    await until(() => s.cmds("subscribe").length === 5, "subscribe #5", 3000);
    sentAt.push(Date.now());
    const gaps = sentAt.slice(1).map((t, i) => t - sentAt[i]);
    // random() = 1: the full bound each time, doubling up to the cap
    for (const [i, min] of [30, 60, 120, 120].entries()) assert.ok(gaps[i] >= min - 2, `gap ${i}: ${gaps[i]} >= ${min}`);
    assert.equal(draws.length, 4, "each delay drawn from the jittered backoff");
    assert.equal(settled, false);
    assert.equal(seen.errors.length, 4);
    assert.ok(seen.errors.every((e) => e.kind === "server" && e.code === "unavailable"));
    const last = s.cmds("subscribe")[4];
    s.push({ type: "subscribed", channelId: "task:u", offset: 4, epoch: "e_1", ref: last.ref });
    assert.equal((await p).offset, 4);
    assert.equal(client.state, "connected");
    client.close();
  });

  test("every attempt that fails before the socket opened is a transport error naming the usual causes", async () => {
    const { client, seen } = fakeClient({ tokenTransport: "query" });
    client.connect();
    for (let i = 1; i <= 3; i++) {
      await until(() => FakeSocket.all.length === i, `attempt ${i}`);
      FakeSocket.last().serverClose(1006); // a refused handshake: no open, close 1006
    }
    assert.equal(seen.errors.length, 3);
    for (const e of seen.errors) {
      assert.equal(e.kind, "transport");
      assert.equal(e.closeCode, 1006);
      assert.match(e.message, /--allowed-origin/);
      assert.match(e.message, /\?token=/);
      assert.match(e.message, /down or unreachable/);
      assert.ok(!/tok\d/.test(e.message), "no token in the message");
    }
    assert.equal(seen.reconnecting.length, 3, "it keeps retrying");
    client.close();
  });

  test("query transport: an expired fixed token stops before any socket; an expired one from the provider is replaced", async () => {
    const expired = jwt({ sub: "u", exp: Math.floor(Date.now() / 1000) - 120 });
    const fixed = fakeClient({ tokenTransport: "query", token: expired });
    const p = fixed.client.subscribe("task:x");
    fixed.client.connect();
    await assert.rejects(p, (e) => e.kind === "closed" && e.closeCode === 4002);
    assert.equal(FakeSocket.all.length, 0);
    assert.equal(fixed.seen.errors[0].kind, "auth");

    const reasons = [];
    const fresh = jwt({ sub: "u", exp: Math.floor(Date.now() / 1000) + 3600 });
    const prov = fakeClient({
      tokenTransport: "query",
      token: async ({ reason }) => (reasons.push(reason), reason === "expired" ? fresh : expired),
    });
    prov.client.connect();
    await until(() => FakeSocket.all.length === 1);
    assert.deepEqual(reasons, ["connect", "expired"]);
    assert.ok(FakeSocket.last().url.endsWith(`?token=${fresh}`));
    prov.client.close();

    // a provider that keeps returning expired tokens: a token error, then backoff
    const stale = fakeClient({ tokenTransport: "query", token: async () => expired });
    stale.client.connect();
    await until(() => stale.seen.reconnecting.length === 1);
    assert.equal(FakeSocket.all.length, 0);
    assert.equal(stale.seen.errors[0].kind, "token");
    assert.ok(stale.seen.reconnecting[0].delayMs > 0);
    stale.client.close();
  });

  test("pending subscribes reject (kind closed) when the client stops for good, and are kept", async () => {
    const { client } = fakeClient({ token: "fixed" });
    const p = client.subscribe("task:a");
    client.connect();
    await until(() => FakeSocket.all.length === 1);
    const s = FakeSocket.last();
    s.open();
    s.serverClose(4001, "invalid token");
    await assert.rejects(p, (e) => e.kind === "closed" && e.closeCode === 4001 && e.channelId === "task:a");
    assert.deepEqual(client.channels(), ["task:a"]);

    const b = fakeClient();
    const q = b.client.subscribe("task:b");
    b.client.connect();
    await until(() => FakeSocket.all.length === 1);
    b.client.close();
    await assert.rejects(q, (e) => e.kind === "closed" && e.closeCode === 1000);
  });
});
