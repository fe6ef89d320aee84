// The live tail: one channel, through OUR JavaScript client (vendored in ./client/, the compiled
// clients/js) connected to the admin listener's /api/ws. The token is a console tail token minted
// by POST /admin/api/tail-token for that one channel; the client sends it in the first frame
// (`auth`), never in the URL, and asks for a fresh one before it expires.

import { CortexRealtime } from "./client/index.js";

/** Events kept on the page; older ones are dropped. */
const MAX_EVENTS = 200;
/** Characters of a payload shown. */
const MAX_PAYLOAD = 2000;

export class Tail {
  /**
   * @param {{ mint: (orgId: string, channelId: string) => Promise<{token: string, url?: string}>,
   *           list: HTMLOListElement, status: (text: string) => void, error: (text: string | null) => void }} deps
   */
  constructor({ mint, list, status, error }) {
    this.mint = mint;
    this.list = list;
    this.status = status;
    this.error = error;
    this.client = undefined;
    this.count = 0;
  }

  /** Starts tailing `channelId` of `orgId` (stopping any tail before). */
  async start(orgId, channelId) {
    this.stop();
    this.error(null);
    this.list.textContent = "";
    this.count = 0;
    this.status(`minting a token for ${orgId} / ${channelId}…`);
    const first = await this.mint(orgId, channelId);
    const url = new URL(first.url || "/api/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    let pending = first.token;
    const client = new CortexRealtime({
      url: url.toString(),
      tokenTransport: "auth",
      // the first connect uses the token just minted; every later one (refresh, reconnect) a new one
      token: async () => {
        if (pending) {
          const t = pending;
          pending = undefined;
          return t;
        }
        return (await this.mint(orgId, channelId)).token;
      },
      backoff: { baseMs: 500, capMs: 5000 },
    });
    this.client = client;
    const mine = () => this.client === client;
    client.on("state", (s) => {
      if (!mine()) return;
      if (s === "connecting") this.status(`connecting to ${url.pathname}…`);
      else if (s === "waiting") this.status("disconnected; reconnecting…");
      else if (s === "closed") this.status(`stopped (${this.count} events)`);
    });
    client.on("subscribed", (s) => {
      if (!mine()) return;
      this.status(`tailing ${orgId} / ${s.channelId} from offset ${s.offset} (epoch ${s.epoch})`);
      this.list.dataset.subscribed = "true";
      if (s.resumed && s.recovered === false) {
        this.notice("continuity lost: some events of this channel were skipped (history gone); live from here");
      }
    });
    client.on("event", (ev) => mine() && this.add(ev));
    client.on("error", (e) => {
      if (!mine()) return;
      const code = e.code ? ` (${e.code})` : e.closeCode ? ` (close ${e.closeCode})` : "";
      this.error(`Live tail: ${e.message}${code}`);
    });
    client.connect();
    try {
      await client.subscribe(channelId);
      if (mine()) this.error(null);
    } catch (e) {
      if (!mine()) return;
      this.error(`Live tail of ${channelId} refused: ${e && e.message ? e.message : String(e)}`);
      this.stop();
    }
  }

  /** Stops the tail (close 1000); the events shown stay. */
  stop() {
    const c = this.client;
    this.client = undefined;
    if (c) {
      c.close();
      this.status(`stopped (${this.count} events)`);
    }
    delete this.list.dataset.subscribed;
  }

  get running() {
    return this.client !== undefined;
  }

  add(ev) {
    this.count += 1;
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    li.dataset.type = ev.type;
    li.dataset.offset = String(ev.offset);
    const cell = (cls, text) => {
      const s = document.createElement("span");
      s.className = cls;
      s.textContent = text;
      li.append(s);
    };
    cell("time", new Date().toLocaleTimeString());
    cell("type", ev.type);
    cell("offset", `#${ev.offset}`);
    let payload = JSON.stringify(ev.payload);
    if (payload && payload.length > MAX_PAYLOAD) payload = `${payload.slice(0, MAX_PAYLOAD)}…`;
    cell("payload", payload ?? "");
    this.list.prepend(li);
    while (this.list.childElementCount > MAX_EVENTS) this.list.lastElementChild.remove();
  }

  notice(text) {
    const li = document.createElement("li");
    li.className = "notice";
    li.textContent = text;
    this.list.prepend(li);
  }
}
