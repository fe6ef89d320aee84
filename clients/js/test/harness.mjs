// Test harness: the real cortex-realtime binary on 127.0.0.1:0, a TCP proxy that can cut every
// live connection, tokens, publishing over HTTP, and a throwaway redis-server for the backplane.
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

const here = path.dirname(fileURLToPath(import.meta.url));
export const pkgDir = path.resolve(here, "..");
const repoRoot = path.resolve(pkgDir, "../..");

export const SECRET = "js-test-secret";
export const PUBLISH_KEY = "js-test-publish-key";
/** The admin key of servers started with `admin: true`. */
export const ADMIN_KEY = "js-test-admin-key-0123456789";

let binCache;

/** The server binary: $CORTEX_BIN, else ../../target/debug/cortex-realtime (built when missing). */
export function cortexBin() {
  if (binCache) return binCache;
  const bin = process.env.CORTEX_BIN
    ? path.resolve(pkgDir, process.env.CORTEX_BIN)
    : path.resolve(pkgDir, "../../target/debug/cortex-realtime");
  if (!existsSync(bin)) {
    if (process.env.CORTEX_BIN) throw new Error(`CORTEX_BIN=${bin} does not exist`);
    execFileSync("cargo", ["build", "-p", "cortex-realtime"], { cwd: repoRoot, stdio: "inherit" });
  }
  binCache = bin;
  return bin;
}

/** Every server (and redis-server) this process started, killed at exit whatever happens. */
const live = new Set();
process.on("exit", () => {
  for (const child of live) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

/**
 * Starts `cortex-realtime serve` and resolves once it printed `listening on ADDR`.
 * `port` 0 picks a free one; `extraArgs` are appended. `admin: true` also opens the admin
 * listener on 127.0.0.1:0 with ADMIN_KEY (or `adminKey`) and waits for `admin listening on ADDR`
 * (then `server.adminPort` is its port).
 */
export async function startServer({ port = 0, extraArgs = [], admin = false, adminKey = ADMIN_KEY } = {}) {
  if (admin) extraArgs = [...extraArgs, "--admin-listen", "127.0.0.1:0", "--admin-key", adminKey];
  const args = [
    "serve",
    "--listen",
    `127.0.0.1:${port}`,
    "--jwt-secret",
    SECRET,
    "--publish-key",
    PUBLISH_KEY,
    "--drain-timeout",
    "1s",
    ...extraArgs,
  ];
  // A restart on the same port can race the old listener's teardown: retry a few times.
  for (let attempt = 0; ; attempt++) {
    try {
      return await spawnServer(args, extraArgs);
    } catch (e) {
      if (attempt >= 20 || port === 0) throw e;
      await sleep(50);
    }
  }
}

function spawnServer(args, extraArgs) {
  return new Promise((resolve, reject) => {
    const child = spawn(cortexBin(), args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    live.add(child);
    let out = "";
    let err = "";
    let done = false;
    const timer = setTimeout(() => fail(new Error("server did not start within 10 s")), 10000);
    function fail(e) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
      live.delete(child);
      reject(new Error(`${e.message}\nstdout: ${out}\nstderr: ${err.slice(-2000)}`));
    }
    child.stderr.on("data", (d) => {
      err += d;
      if (err.length > 100000) err = err.slice(-50000);
    });
    const admin = extraArgs.includes("--admin-listen");
    child.stdout.on("data", (d) => {
      out += d;
      const m = /(?:^|\n)listening on ([0-9.]+):(\d+)/.exec(out);
      const a = /(?:^|\n)admin listening on ([0-9.]+):(\d+)/.exec(out);
      if (m && (a || !admin) && !done) {
        done = true;
        clearTimeout(timer);
        const port = Number(m[2]);
        resolve(new ServerProcess(child, port, extraArgs, a ? Number(a[2]) : undefined));
      }
    });
    child.on("exit", (code, signal) => fail(new Error(`server exited (${code ?? signal})`)));
    child.on("error", (e) => fail(e));
  });
}

export class ServerProcess {
  constructor(child, port, extraArgs, adminPort) {
    this.child = child;
    this.port = port;
    this.extraArgs = extraArgs;
    /** The admin listener's port, when started with `admin: true`. */
    this.adminPort = adminPort;
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/api/ws`;
  }

  /** The admin listener (console, admin API), when started with `admin: true`. */
  get adminUrl() {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  /** SIGTERM (the server drains: close 1001 to every connection) then wait; SIGKILL after 3 s. */
  async stop(signal = "SIGTERM") {
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      live.delete(this.child);
      return;
    }
    try {
      process.kill(this.child.pid, signal);
    } catch {
      // gone
    }
    const t = setTimeout(() => {
      try {
        process.kill(this.child.pid, "SIGKILL");
      } catch {
        // gone
      }
    }, 3000);
    await this.exited;
    clearTimeout(t);
    live.delete(this.child);
  }

  /** Stops this process and starts a new one on the same port (a new in-memory node: new epochs). */
  async restart() {
    await this.stop();
    return startServer({ port: this.port, extraArgs: this.extraArgs });
  }
}

/** A token from `cortex-realtime token`. */
export function makeToken({ sub = "u_1", org = "o_1", ttl = "1h", channels = [] } = {}) {
  const args = ["token", "--jwt-secret", SECRET, "--sub", sub, "--org", org, "--ttl", ttl];
  for (const c of channels) args.push("--channel", c);
  return execFileSync(cortexBin(), args, { encoding: "utf8" }).trim();
}

/**
 * An HS256 token signed here with SECRET, for claims `cortex-realtime token` cannot make (an
 * `exp` in the past). `exp` is in seconds since the epoch.
 */
export function signToken({ sub = "u_1", org = "o_1", exp = Math.floor(Date.now() / 1000) + 3600, ...rest } = {}) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, org, exp, ...rest })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** POSTs one event or a batch (`{events}`) to /api/events; resolves with `{status, body}`. */
export async function publish(server, body, { port } = {}) {
  const res = await fetch(`http://127.0.0.1:${port ?? server.port}/api/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${PUBLISH_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

/** A TCP proxy on 127.0.0.1:0 to `targetPort`; `cut()` destroys every live connection. */
export async function startProxy(targetPort) {
  const sockets = new Set();
  let cuts = 0;
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted += 1;
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/api/ws`,
    /** Connections currently open through the proxy (pairs). */
    get open() {
      return sockets.size / 2;
    },
    get cuts() {
      return cuts;
    },
    /** Connections accepted so far. */
    get accepted() {
      return accepted;
    },
    cut() {
      cuts += 1;
      const n = sockets.size / 2;
      for (const s of [...sockets]) s.destroy();
      sockets.clear();
      return n;
    },
    close() {
      for (const s of sockets) s.destroy();
      sockets.clear();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Polls `fn` until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 10, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export { sleep };

/** Collects everything a client reports. */
export function record(client) {
  const r = {
    events: [],
    subscribed: [],
    connected: [],
    disconnected: [],
    reconnecting: [],
    errors: [],
    closed: [],
    refreshed: [],
  };
  client.on("event", (e) => r.events.push(e));
  client.on("subscribed", (s) => r.subscribed.push(s));
  client.on("connected", (c) => r.connected.push(c));
  client.on("disconnected", (d) => r.disconnected.push(d));
  client.on("reconnecting", (d) => r.reconnecting.push(d));
  client.on("error", (e) => r.errors.push(e));
  client.on("closed", (c) => r.closed.push(c));
  client.on("refreshed", (c) => r.refreshed.push(c));
  return r;
}

/** A `chat.message` event for `channel`, with a sequence number in an extra payload field. */
export function chat(channel, seq, org = "o_1") {
  return {
    orgId: org,
    type: "chat.message",
    payload: { messageId: `m_${seq}`, agentId: "a_1", content: `message ${seq}`, seq },
    channels: [channel],
  };
}

/**
 * Extra `serve` arguments for the loss test. The server keeps 100 events of history per channel
 * by default, which at 1,000 events/s covers only 100 ms of disconnection. When `serve` offers a
 * flag for the per-channel history size (`--history-events`), the loss test raises it;
 * `CORTEX_LOSS_SERVER_ARGS` (space-separated) overrides the choice.
 */
export function lossServerArgs() {
  if (process.env.CORTEX_LOSS_SERVER_ARGS !== undefined) {
    return process.env.CORTEX_LOSS_SERVER_ARGS.split(/\s+/).filter(Boolean);
  }
  const help = execFileSync(cortexBin(), ["serve", "--help"], { encoding: "utf8" });
  return /--history-events\b/.test(help) ? ["--history-events", "20000"] : [];
}

// --- redis-server -------------------------------------------------------------------------------

/** Why the Redis tests cannot run here, or undefined when `redis-server` and `redis-cli` are installed. */
export function redisMissing() {
  for (const cmd of ["redis-server", "redis-cli"]) {
    const r = spawnSync(cmd, ["--version"], { stdio: "ignore" });
    if (r.error || r.status !== 0) {
      return `${cmd} is not installed (apt-get install redis-server): the Redis backplane tests need it`;
    }
  }
  return undefined;
}

/** A free TCP port on 127.0.0.1 (never Redis's usual 6379). */
async function freePort() {
  for (;;) {
    const srv = net.createServer();
    await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
    const { port } = srv.address();
    await new Promise((resolve) => srv.close(resolve));
    if (port !== 6379) return port;
  }
}

/**
 * Starts a throwaway `redis-server` on a free port of 127.0.0.1, nothing persisted, and resolves
 * once it accepts connections. `port` restarts one on a known port (its data is gone).
 */
export async function startRedis({ port } = {}) {
  for (let attempt = 0; ; attempt++) {
    const p = port ?? (await freePort());
    try {
      return await spawnRedis(p);
    } catch (e) {
      // the port was taken meanwhile (or a restart raced the old process): try again
      if (attempt >= 10) throw e;
      await sleep(50);
    }
  }
}

function spawnRedis(port) {
  return new Promise((resolve, reject) => {
    const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", os.tmpdir()];
    const child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    let out = "";
    let done = false;
    const timer = setTimeout(() => fail(new Error("redis-server did not start within 10 s")), 10000);
    function fail(e) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // gone
      }
      live.delete(child);
      reject(new Error(`${e.message}\noutput: ${out.slice(-2000)}`));
    }
    const onData = (d) => {
      out += d;
      if (!done && /Ready to accept connections/.test(out)) {
        done = true;
        clearTimeout(timer);
        resolve(new RedisProcess(child, port));
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code, signal) => fail(new Error(`redis-server exited (${code ?? signal})`)));
    child.on("error", (e) => fail(e));
  });
}

export class RedisProcess {
  constructor(child, port) {
    this.child = child;
    this.port = port;
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** `redis-cli -p PORT ARGS...`, its output. */
  cli(...args) {
    return execFileSync("redis-cli", ["-p", String(this.port), ...args], { encoding: "utf8" }).trim();
  }

  /** Freezes the process (SIGSTOP): connections stay open and nothing answers. */
  pause() {
    process.kill(this.child.pid, "SIGSTOP");
  }

  /** Lets a paused process go on (SIGCONT). */
  resume() {
    process.kill(this.child.pid, "SIGCONT");
  }

  /** Ends the process by its PID (SIGCONT first, in case it is paused; SIGKILL after 3 s). */
  async stop(signal = "SIGTERM") {
    if (this.running) {
      try {
        process.kill(this.child.pid, "SIGCONT");
        process.kill(this.child.pid, signal);
      } catch {
        // gone
      }
      const t = setTimeout(() => {
        try {
          process.kill(this.child.pid, "SIGKILL");
        } catch {
          // gone
        }
      }, 3000);
      await this.exited;
      clearTimeout(t);
    }
    live.delete(this.child);
  }
}
