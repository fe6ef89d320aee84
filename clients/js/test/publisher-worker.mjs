// The loss test's publisher, on its own thread so that its HTTP work does not delay the client
// under test: `batches` batches of `batch` chat.message events, one every `everyMs` ms from `t0`,
// sent one after another (catching up when late). The main thread posts `{phase}` while it
// restarts the server; each batch records the phase at its start and end.
import { parentPort, workerData } from "node:worker_threads";
import { setTimeout as sleep } from "node:timers/promises";

const { port, batches: count, batch, everyMs, channel, publishKey, t0 } = workerData;
let phase = "gen1";
parentPort.on("message", (m) => {
  if (m.phase) phase = m.phase;
});

const batches = [];
let seq = 0;
for (let i = 0; i < count; i++) {
  const wait = t0 + i * everyMs - Date.now();
  if (wait > 0) await sleep(wait);
  const events = [];
  for (let k = 0; k < batch; k++) {
    seq += 1;
    events.push({
      orgId: "o_1",
      type: "chat.message",
      payload: { messageId: `m_${seq}`, agentId: "a_1", content: "x", seq },
      channels: [channel],
    });
  }
  const b = { i, startPhase: phase, endPhase: undefined, status: 0, ids: [] };
  batches.push(b);
  try {
    const res = await fetch(`http://127.0.0.1:${port}/api/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${publishKey}`, "content-type": "application/json" },
      body: JSON.stringify({ events }),
    });
    b.status = res.status;
    const body = await res.json().catch(() => ({}));
    if (res.status === 202) b.ids = body.results.map((x) => x.id);
  } catch {
    b.status = -1; // refused or reset: the node is restarting
  }
  b.endPhase = phase;
}
parentPort.postMessage({ batches, doneAt: Date.now() });
