// The client against a server with a Redis backplane (`serve --redis`), on a throwaway
// redis-server this file starts on a free port: the server's unsolicited `subscribed` when the
// backplane lost a channel's data (CONTRACT.md section 6), and `unavailable` subscribes while
// Redis does not answer (section 3). Skipped, saying why, when redis-server is not installed.
import { test, describe, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { CortexRealtime } from "../dist/index.js";
import {
  startServer,
  startProxy,
  startRedis,
  redisMissing,
  makeToken,
  publish,
  waitFor,
  record,
  chat,
  sleep,
} from "./harness.mjs";

/** Each test is skipped with this reason when redis-server (or redis-cli) is not installed. */
const skip = redisMissing();

let redis;
let server;
let proxy;
const clients = [];

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

/** Publishes until the server takes it (it answers 503 for a moment after Redis came back). */
async function publishOk(body) {
  let last;
  await waitFor(
    async () => {
      last = await publish(server, body);
      return last.status === 202;
    },
    { timeoutMs: 10000, intervalMs: 100, what: `a 202 for the publish (last: ${JSON.stringify(last)})` },
  );
  return last.body;
}

/** Collects the subscribe notifications and events of one client in the order they came. */
function timeline(c) {
  const t = [];
  c.on("subscribed", (s) => t.push({ kind: "subscribed", ...s }));
  c.on("event", (e) => t.push({ kind: "event", offset: e.offset, epoch: e.epoch, seq: e.payload.seq }));
  return t;
}

describe("against cortex-realtime with a Redis backplane", () => {
  before(async () => {
    if (skip) return;
    redis = await startRedis();
    server = await startServer({ extraArgs: ["--redis", redis.url] });
    proxy = await startProxy(server.port);
  });

  after(async () => {
    for (const c of clients.splice(0)) c.close();
    await proxy?.close();
    await server?.stop();
    await redis?.stop();
  });

  afterEach(() => {
    if (skip) return;
    for (const c of clients.splice(0)) c.close();
    if (redis && redis.running) redis.resume(); // a failed test may leave it paused
  });

  test("Redis lost its data: an unsolicited subscribed (recovered:false, new epoch) comes before the next event, and the next resume starts there", { skip, timeout: 60000 }, async () => {
    const c = client({ backoff: { baseMs: 300, capMs: 300, random: () => 1 } });
    const r = record(c);
    const t = timeline(c);
    c.connect();
    const first = await c.subscribe("task:flushed");
    await publishOk(chat("task:flushed", 1));
    await waitFor(() => r.events.length === 1, { what: "event 1" });
    assert.deepEqual(c.position("task:flushed"), { offset: first.offset + 1, epoch: first.epoch });

    assert.equal(redis.cli("FLUSHALL"), "OK");
    await publishOk(chat("task:flushed", 2));
    await waitFor(() => r.events.length === 2, { what: "event 2" });

    // the notice, then the event of the new epoch
    assert.deepEqual(
      t.map((x) => x.kind),
      ["subscribed", "event", "subscribed", "event"],
    );
    const notice = t[2];
    assert.equal(notice.channelId, "task:flushed");
    assert.equal(notice.resumed, true);
    assert.equal(notice.recovered, false);
    assert.notEqual(notice.epoch, first.epoch, "a new epoch: the history was lost");
    assert.equal(r.subscribed.length, 2);
    assert.equal(r.connected.length, 1, "the connection stayed open");
    const ev2 = r.events[1];
    assert.equal(ev2.epoch, notice.epoch);
    assert.equal(ev2.offset, notice.offset + 1);
    assert.deepEqual(c.position("task:flushed"), { offset: ev2.offset, epoch: notice.epoch });

    // the stored position is the new one: a reconnect resumes from it, losslessly
    proxy.cut();
    await waitFor(() => c.state === "waiting", { what: "disconnect noticed" });
    await publishOk(chat("task:flushed", 3));
    await waitFor(() => r.events.length === 3, { what: "event 3, replayed", timeoutMs: 5000 });
    const resumed = r.subscribed[2];
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.recovered, true, "since {offset, new epoch} recovered");
    assert.equal(resumed.epoch, notice.epoch);
    assert.deepEqual(r.events.map((e) => e.payload.seq), [1, 2, 3]);
    assert.deepEqual(r.errors, []);
  });

  test("a subscribe answered `unavailable` (Redis paused) is retried with backoff; the promise resolves once Redis is back and events flow", { skip, timeout: 60000 }, async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await waitFor(() => c.state === "connected", { what: "connected" });

    redis.pause();
    let settled = false;
    const p = c.subscribe("task:unavailable");
    p.then(
      () => (settled = true),
      () => (settled = true),
    );
    // the server answers once its Redis command timed out; the client sends it again
    await waitFor(() => r.errors.filter((e) => e.code === "unavailable").length >= 2, {
      what: "two unavailable answers",
      timeoutMs: 20000,
      intervalMs: 50,
    });
    for (const e of r.errors) {
      assert.equal(e.kind, "server");
      assert.equal(e.code, "unavailable");
      assert.equal(e.channelId, "task:unavailable");
    }
    assert.equal(settled, false, "subscribe() waits while the server's Redis is away");
    assert.equal(c.state, "connected", "the connection stays");
    assert.equal(r.subscribed.length, 0);

    redis.resume();
    const info = await p;
    assert.equal(info.channelId, "task:unavailable");
    assert.equal(info.resumed, false);
    assert.equal(r.connected.length, 1, "no reconnect was needed");

    await publishOk(chat("task:unavailable", 1));
    await waitFor(() => r.events.length === 1, { what: "an event after Redis came back" });
    assert.equal(r.events[0].epoch, info.epoch);
    assert.equal(r.events[0].offset, info.offset + 1);
  });

  test("close() rejects a subscribe still being retried after `unavailable`", { skip, timeout: 60000 }, async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await waitFor(() => c.state === "connected", { what: "connected" });
    redis.pause();
    const p = c.subscribe("task:given-up");
    await waitFor(() => r.errors.some((e) => e.code === "unavailable"), {
      what: "an unavailable answer",
      timeoutMs: 20000,
      intervalMs: 50,
    });
    c.close();
    await assert.rejects(p, (e) => e.kind === "closed" && e.closeCode === 1000 && e.channelId === "task:given-up");
    redis.resume();
    await sleep(100);
  });
});
