// Compile-time checks of the published declarations (dist/*.d.ts); `npm test` runs
// `tsc -p test/tsconfig.json` (no output) before the tests. A type error here fails the tests.
import {
  CortexRealtime,
  CortexError,
  isTokenExpired,
  tokenExpiresAt,
  type ErrorKind,
  type CortexEvent,
  type EventOf,
  type EventType,
  type SubscribedInfo,
  type WebSocketConstructor,
} from "../dist/index.js";

// The browser's WebSocket constructor fits the option.
const fromDom: WebSocketConstructor = WebSocket;

const client = new CortexRealtime({
  url: "wss://rt.example.com/api/ws",
  token: async ({ reason }) => (reason === "refresh" ? "new" : "first"),
  tokenTransport: "auth",
  WebSocket: fromDom,
  backoff: { baseMs: 1000, capMs: 30000, random: Math.random },
});

client.on("event", (ev: CortexEvent) => {
  switch (ev.type) {
    case "task.status_changed": {
      const s: string = ev.payload.newStatus;
      void s;
      break;
    }
    case "agent.completed": {
      const d: number = ev.payload.duration;
      void d;
      // @ts-expect-error agent.completed has no `reason`... but extra fields are `unknown`, not string
      const r: string = ev.payload.reason;
      void r;
      break;
    }
    case "agent.status": {
      const st: "error" | "blocked" = ev.payload.status;
      void st;
      break;
    }
    case "chief.task.progress": {
      const p: number = ev.payload.progress;
      void p;
      break;
    }
    case "task.updated": {
      const c: Record<string, unknown> = ev.payload.changes;
      void c;
      break;
    }
    default: {
      const t: EventType = ev.type;
      const o: number = ev.offset;
      const e: string = ev.epoch;
      const id: string = ev.id;
      void t, o, e, id;
    }
  }
});

const spawned: EventOf<"agent.spawned">["payload"] = {
  agentId: "a",
  agentName: "coder",
  taskId: "t",
  timestamp: "2026-01-01T00:00:00Z",
};
void spawned;

// @ts-expect-error a required field is missing
const bad: EventOf<"gate.failed">["payload"] = { taskId: "t", gate: "g", timestamp: "x" };
void bad;

client.on("subscribed", (s: SubscribedInfo) => {
  if (s.recovered === false) console.log("reload", s.channelId);
});
const p: Promise<SubscribedInfo> = client.subscribe("project:p_4", { since: { offset: 41, epoch: "e_b71c" } });
void p;
// a subscribe still waiting when the client stops for good rejects with kind "closed"
p.catch((e: unknown) => {
  if (e instanceof CortexError && e.kind === "closed") {
    const code: number | undefined = e.closeCode;
    void code;
  }
});
const kinds: ErrorKind[] = ["server", "auth", "token", "transport", "closed"];
void kinds;
const expired: boolean = isTokenExpired("a.b.c", Date.now());
const exp: number | undefined = tokenExpiresAt("a.b.c");
void expired, exp;
// @ts-expect-error unknown notification
client.on("nope", () => {});
