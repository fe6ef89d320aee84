// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.
/**
 * The Cortex Realtime client: one WebSocket, any number of channel subscriptions, automatic
 * reconnect with backoff, token refresh, and lossless resume (CONTRACT.md sections 2, 3, 6, 8).
 */
import { Backoff, closeAction } from "./policy.js";
import { isTokenExpired } from "./token.js";
export class CortexError extends Error {
    constructor(kind, message, extra = {}) {
        super(message);
        this.name = "CortexError";
        this.kind = kind;
        if (extra.code !== undefined)
            this.code = extra.code;
        if (extra.closeCode !== undefined)
            this.closeCode = extra.closeCode;
        if (extra.channelId !== undefined)
            this.channelId = extra.channelId;
        if (extra.cause !== undefined)
            this.cause = extra.cause;
    }
}
/** A WebSocket's OPEN readyState. */
const OPEN = 1;
/** Client-side pacing of commands, below the server's 100 commands per second. */
const SEND_BURST = 80;
const SEND_PER_SECOND = 80;
/** The longest delay a timer takes (setTimeout's limit is 2^31 - 1 ms). */
const MAX_TIMER_MS = 24 * 3600 * 1000;
/** After a socket `error`, wait this long for its `close` event before giving up on it. */
const ERROR_CLOSE_GRACE_MS = 50;
/** When the server answers `rate_limited`, try the command again after this. */
const RATE_LIMITED_RETRY_MS = 1000;
/** Error codes after which a command is sent again: it did nothing and may be retried. */
const RATE_LIMITED = "rate_limited";
const UNAVAILABLE = "unavailable";
function noop() { }
function isObject(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
function frameText(data) {
    if (typeof data === "string")
        return data;
    if (data instanceof ArrayBuffer)
        return new TextDecoder().decode(data);
    if (ArrayBuffer.isView(data)) {
        return new TextDecoder().decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    return undefined;
}
function withToken(url, token) {
    const u = new URL(url);
    u.searchParams.set("token", token);
    return u.toString();
}
/** `url` without any `token` query parameter, for messages. */
function redacted(url) {
    try {
        const u = new URL(url);
        if (u.searchParams.has("token"))
            u.searchParams.set("token", "REDACTED");
        return u.toString();
    }
    catch {
        return "the server";
    }
}
/**
 * The message of a connection attempt that failed before the socket opened. A browser reports a
 * refused handshake (HTTP 401, 403, 429, ...) exactly like an unreachable server (close 1006,
 * nothing more), so the message names the usual causes.
 */
function failedAttemptMessage(url, code, transport) {
    const causes = [
        "the server refused this page's Origin (it is not in the server's --allowed-origin list: HTTP 403)",
        ...(transport === "query" ? ["the server refused the ?token= (invalid or expired: HTTP 401)"] : []),
        "too many connections for this user (HTTP 429)",
        "the server is down or unreachable (wrong URL, port, TLS or proxy)",
    ];
    return (`the connection to ${redacted(url)} failed before it opened (close ${code}); ` +
        `the cause is not visible to the client, usually: ${causes.join("; ")}. Retrying with backoff.`);
}
// ---------------------------------------------------------------------------------------------
/**
 * A connection to Cortex Realtime that survives disconnects.
 *
 * ```ts
 * const client = new CortexRealtime({ url, token: async () => fetchToken() });
 * client.on("event", (ev) => { if (ev.type === "task.status_changed") console.log(ev.payload.newStatus); });
 * client.on("subscribed", (s) => { if (s.recovered === false) reloadFromRest(s.channelId); });
 * client.connect();
 * await client.subscribe("project:p_4");
 * ```
 */
export class CortexRealtime {
    constructor(options) {
        this.listeners = new Map();
        this.subs = new Map();
        this._state = "idle";
        /** The current socket is open (commands can be written, even before `connected`). */
        this.opened = false;
        /** Bumped whenever the current attempt is abandoned, so late callbacks of an old one are ignored. */
        this.generation = 0;
        this.connectedAt = 0;
        this.everConnected = false;
        this.tokenReason = "connect";
        this.expiredInARow = 0;
        this.retryAttempt = 0;
        this.nextRef = 1;
        this.pending = new Map();
        this.outbox = [];
        this.sendTokens = SEND_BURST;
        this.sendRefilledAt = 0;
        this.connTimers = new Set();
        if (!options || typeof options.url !== "string") {
            throw new TypeError("CortexRealtime: `url` is required");
        }
        if (typeof options.token !== "string" && typeof options.token !== "function") {
            throw new TypeError("CortexRealtime: `token` must be a string or a function");
        }
        const WS = options.WebSocket ??
            globalThis.WebSocket;
        if (typeof WS !== "function") {
            throw new TypeError("CortexRealtime: no global WebSocket (Node < 22): pass one, e.g. `WebSocket` from the `ws` package");
        }
        this.opts = options;
        this.WS = WS;
        this.backoff = new Backoff(options.backoff);
    }
    // --- public API -----------------------------------------------------------------------------
    /** Where the client is: `idle` (never connected), `connecting`, `connected`, `waiting` (for a retry), `closed`. */
    get state() {
        return this._state;
    }
    /** The current connection (`connectionId`, `userId`, `orgId`), while connected. */
    get connection() {
        return this._state === "connected" ? this._connection : undefined;
    }
    /** The current token's expiry as the server sees it (RFC 3339), once connected. */
    get expiresAt() {
        return this._expiresAt;
    }
    /** Starts connecting (and keeps reconnecting until `close()`). Calling it again is harmless. */
    connect() {
        if (this._state === "connecting" || this._state === "connected" || this._state === "waiting") {
            return;
        }
        this.backoff.reset();
        this.retryAttempt = 0;
        this.everConnected = false;
        this.tokenReason = "connect";
        this.expiredInARow = 0;
        void this.open();
    }
    /** Closes the connection with 1000 and stops reconnecting. Subscriptions and positions are kept for a later `connect()`. */
    close() {
        if (this._state === "closed" || this._state === "idle") {
            this.setState("closed");
            this.rejectWaiters(1000, "client closed");
            return;
        }
        this.stop(1000, "client closed");
    }
    /**
     * Subscribes to a channel, now or at the next connect; resolves with the first `subscribed`
     * reply, rejects with a `CortexError` (`forbidden`, `invalid_channel`, ...), or with kind
     * `closed` when the client stops for good first. A subscribe the server answered
     * `rate_limited` or `unavailable` is retried (after 1 s, or with backoff) and the promise waits
     * for it. The subscription is kept across reconnects and resumed from the last event seen.
     */
    subscribe(channelId, options = {}) {
        let sub = this.subs.get(channelId);
        if (!sub) {
            sub = { channelId, status: "pending", handlers: new Set(), waiters: [] };
            if (options.since)
                sub.position = { offset: options.since.offset, epoch: options.since.epoch };
            this.subs.set(channelId, sub);
            if (this.opened)
                this.sendSubscribe(sub);
        }
        if (options.onEvent)
            sub.handlers.add(options.onEvent);
        let promise;
        if (sub.status === "subscribed" && sub.info) {
            promise = Promise.resolve(sub.info);
        }
        else {
            const s = sub;
            promise = new Promise((resolve, reject) => s.waiters.push({ resolve, reject }));
        }
        promise.catch(noop); // failures are also reported on `error`; an ignored promise must not crash the app
        return promise;
    }
    /** Stops receiving a channel (forgetting its position). Resolves once the server confirmed, or at once when not connected. */
    unsubscribe(channelId) {
        const sub = this.subs.get(channelId);
        if (sub) {
            this.subs.delete(channelId);
            const err = new CortexError("server", "unsubscribed before the subscription completed", {
                channelId,
            });
            for (const w of sub.waiters.splice(0))
                w.reject(err);
        }
        if (!this.opened || !sub || sub.status === "pending") {
            return Promise.resolve();
        }
        const p = new Promise((resolve, reject) => {
            const ref = this.ref({ kind: "unsubscribe", channelId, waiter: { resolve, reject } });
            this.send({ type: "unsubscribe", channelId, ref });
        });
        p.catch(noop);
        return p;
    }
    /** The channels subscribed (or to be subscribed at the next connect). */
    channels() {
        return [...this.subs.keys()];
    }
    /** The last event seen on a channel: store it to resume across page loads with `subscribe(ch, { since })`. */
    position(channelId) {
        const p = this.subs.get(channelId)?.position;
        return p ? { offset: p.offset, epoch: p.epoch } : undefined;
    }
    /** Adds a listener; returns a function that removes it. */
    on(type, listener) {
        let set = this.listeners.get(type);
        if (!set) {
            set = new Set();
            this.listeners.set(type, set);
        }
        set.add(listener);
        return () => this.off(type, listener);
    }
    /** Removes a listener. */
    off(type, listener) {
        this.listeners.get(type)?.delete(listener);
    }
    // --- connection lifecycle -------------------------------------------------------------------
    async open() {
        const gen = ++this.generation;
        this.setState("connecting");
        const reason = this.tokenReason;
        const transport = this.opts.tokenTransport ?? "auth";
        let token = await this.tokenForAttempt(reason, gen);
        if (token === undefined)
            return;
        if (transport === "query" && isTokenExpired(token)) {
            // The server would refuse it with HTTP 401, which a browser sees only as close 1006: a
            // retry loop that never says why. Get a new one, or stop as a 4002 would.
            if (typeof this.opts.token === "string") {
                this.afterClose(4002, "token expired", "new-token");
                return;
            }
            if (reason !== "expired") {
                token = await this.tokenForAttempt("expired", gen);
                if (token === undefined)
                    return;
            }
            if (isTokenExpired(token)) {
                this.emit("error", new CortexError("token", "the token provider returned an expired token (its exp passed more than 30 s ago)"));
                if (gen !== this.generation)
                    return; // a listener closed the client
                this.afterClose(4002, "token expired", "reconnect", "expired");
                return;
            }
        }
        let ws;
        try {
            ws = new this.WS(transport === "query" ? withToken(this.opts.url, token) : this.opts.url);
        }
        catch (e) {
            this.emit("error", new CortexError("transport", "could not create the WebSocket", { cause: e }));
            this.stop(1006, "bad url", true);
            return;
        }
        this.ws = ws;
        ws.onopen = () => {
            if (this.ws !== ws)
                return;
            this.opened = true;
            this.sendTokens = SEND_BURST;
            this.sendRefilledAt = Date.now();
            if (transport === "auth")
                ws.send(JSON.stringify({ type: "auth", token }));
            // Pipelined behind the auth frame: the server reads frames in order and answers these
            // right after `connected`, which saves a round trip on every reconnect.
            for (const sub of this.subs.values())
                this.sendSubscribe(sub);
        };
        ws.onmessage = (ev) => {
            if (this.ws !== ws)
                return;
            this.onFrame(ev.data);
        };
        ws.onclose = (ev) => {
            if (this.ws !== ws)
                return;
            this.onSocketClosed(typeof ev?.code === "number" ? ev.code : 1006, ev?.reason ?? "");
        };
        ws.onerror = () => {
            // A close event normally follows (with the real code). Node 20's WebSocket (undici) may
            // fire only `error` for a failed handshake and stay CONNECTING forever: give the close
            // event a moment, then treat the socket as closed with 1006.
            setTimeout(() => {
                if (this.ws === ws)
                    this.abandon(1006, "connection failed");
            }, ERROR_CLOSE_GRACE_MS);
        };
        this.connectTimer = setTimeout(() => {
            if (this.ws === ws)
                this.abandon(4003, "connect timeout");
        }, this.opts.connectTimeoutMs ?? 10000);
    }
    /**
     * A token for the connection attempt `gen`; `undefined` when the attempt is over: abandoned
     * meanwhile, or the provider failed (reported, and a retry scheduled).
     */
    async tokenForAttempt(reason, gen) {
        try {
            const token = await this.getToken(reason);
            return gen === this.generation ? token : undefined;
        }
        catch (e) {
            if (gen !== this.generation)
                return undefined;
            this.emit("error", new CortexError("token", "the token provider failed", { cause: e }));
            if (gen === this.generation)
                this.afterClose(1006, "token provider failed", "reconnect");
            return undefined;
        }
    }
    async getToken(reason) {
        const source = this.opts.token;
        const token = typeof source === "string" ? source : await source({ reason });
        if (typeof token !== "string" || token === "") {
            throw new TypeError("the token provider returned no token");
        }
        return token;
    }
    /** Drops the current socket (it is dead or stuck) and handles it like a close with `code`. */
    abandon(code, reason) {
        const ws = this.ws;
        if (!ws)
            return;
        const opened = this.opened;
        this.detach(ws);
        try {
            ws.close(4000, reason);
        }
        catch {
            // already closed
        }
        this.socketEnded(code, reason, opened);
    }
    detach(ws) {
        ws.onopen = null;
        ws.onmessage = null;
        ws.onclose = null;
        ws.onerror = null;
        if (this.ws === ws) {
            this.ws = undefined;
            this.opened = false;
        }
    }
    onSocketClosed(code, reason) {
        const opened = this.opened;
        if (this.ws)
            this.detach(this.ws);
        this.socketEnded(code, reason, opened);
    }
    /** The current socket is gone; `opened` tells whether it ever opened. */
    socketEnded(code, reason, opened) {
        if (!opened) {
            // A refused handshake (403 Origin, 401 query token, 429) cannot be told from a network
            // error in a browser: say so at every attempt, so the app does not wait in silence.
            const transport = this.opts.tokenTransport ?? "auth";
            this.emit("error", new CortexError("transport", failedAttemptMessage(this.opts.url, code, transport), { closeCode: code }));
            if (this._state === "closed")
                return; // a listener closed the client
        }
        this.afterClose(code, reason, closeAction(code));
    }
    /**
     * After a connection (or an attempt) ended with `code`: stop, or schedule the next attempt,
     * which asks the token provider with `nextReason` (`"expired"` after a 4002).
     */
    afterClose(code, reason, action, nextReason = "connect") {
        const wasConnected = this._state === "connected";
        const upFor = wasConnected ? Date.now() - this.connectedAt : 0;
        this.clearConnection();
        this.backoff.connectionEnded(upFor);
        if (action === "new-token" && typeof this.opts.token === "string") {
            // a fixed token cannot be renewed: reconnecting would only be refused again
            this.emit("disconnected", { code, reason, willReconnect: false });
            this.emit("error", new CortexError("auth", "the token expired and no token provider was given", {
                closeCode: code,
            }));
            this.finish(code, reason);
            return;
        }
        if (action === "stop" || action === "stop-auth") {
            this.emit("disconnected", { code, reason, willReconnect: false });
            if (action === "stop-auth") {
                this.emit("error", new CortexError("auth", "the server refused the token (4001); call connect() with a valid token", {
                    closeCode: code,
                }));
            }
            this.finish(code, reason);
            return;
        }
        let delay;
        if (action === "new-token") {
            this.tokenReason = "expired";
            // the first 4002 in a row reconnects at once with a new token; repeats back off
            delay = this.expiredInARow === 0 ? 0 : this.backoff.next();
            this.expiredInARow += 1;
        }
        else {
            this.tokenReason = nextReason;
            delay = this.backoff.next();
        }
        this.emit("disconnected", { code, reason, willReconnect: true });
        this.retryAttempt += 1;
        this.setState("waiting");
        this.emit("reconnecting", { attempt: this.retryAttempt, delayMs: delay, code });
        const gen = ++this.generation;
        this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            if (gen === this.generation && this._state === "waiting")
                void this.open();
        }, delay);
    }
    /** Ends everything: used by `close()` and fatal closes. */
    stop(code, reason, silent = false) {
        this.generation += 1;
        const ws = this.ws;
        const wasConnected = this._state === "connected";
        if (ws) {
            this.detach(ws);
            try {
                ws.close(1000, reason);
            }
            catch {
                // already closed
            }
        }
        this.clearConnection();
        if (wasConnected && !silent)
            this.emit("disconnected", { code, reason, willReconnect: false });
        this.finish(code, reason);
    }
    finish(code, reason) {
        this.generation += 1;
        if (this.retryTimer !== undefined)
            clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        this.setState("closed");
        this.rejectWaiters(code, reason);
        this.emit("closed", { code, reason });
    }
    /**
     * The client stopped for good: every `subscribe()` still waiting rejects (kind `closed`). The
     * subscriptions themselves are kept for a later `connect()`.
     */
    rejectWaiters(code, reason) {
        for (const sub of this.subs.values()) {
            if (sub.waiters.length === 0)
                continue;
            const err = new CortexError("closed", `the client stopped (close ${code}${reason ? `: ${reason}` : ""}) before the subscription completed`, { closeCode: code, channelId: sub.channelId });
            for (const w of sub.waiters.splice(0))
                w.reject(err);
        }
    }
    /** Forgets everything tied to the socket that just ended; subscriptions go back to pending. */
    clearConnection() {
        for (const t of [this.connectTimer, this.refreshTimer, this.pongTimer, this.outboxTimer]) {
            if (t !== undefined)
                clearTimeout(t);
        }
        if (this.pingTimer !== undefined)
            clearInterval(this.pingTimer);
        for (const t of this.connTimers)
            clearTimeout(t);
        this.connTimers.clear();
        this.connectTimer = this.refreshTimer = this.pongTimer = this.outboxTimer = undefined;
        this.pingTimer = undefined;
        for (const p of this.pending.values()) {
            if (p.kind === "unsubscribe")
                p.waiter.resolve(); // the server forgets it with the connection
        }
        this.pending.clear();
        this.outbox = [];
        this._connection = undefined;
        for (const sub of this.subs.values())
            sub.status = "pending";
    }
    setState(state) {
        if (this._state === state)
            return;
        this._state = state;
        this.emit("state", state);
    }
    /** A timer that dies with the current connection. */
    later(ms, fn) {
        const t = setTimeout(() => {
            this.connTimers.delete(t);
            fn();
        }, ms);
        this.connTimers.add(t);
    }
    // --- frames ---------------------------------------------------------------------------------
    onFrame(data) {
        if (this.pongTimer !== undefined) {
            clearTimeout(this.pongTimer);
            this.pongTimer = undefined;
        }
        const text = frameText(data);
        let msg;
        try {
            msg = text === undefined ? undefined : JSON.parse(text);
        }
        catch {
            msg = undefined;
        }
        if (!isObject(msg) || typeof msg.type !== "string") {
            this.emit("error", new CortexError("transport", "the server sent a frame that is not a JSON object"));
            return;
        }
        switch (msg.type) {
            case "connected":
                this.onConnected(msg);
                return;
            case "subscribed":
                this.onSubscribed(msg);
                return;
            case "unsubscribed": {
                const channelId = String(msg.channelId);
                const p = this.takePending(msg.ref);
                if (p?.kind === "unsubscribe") {
                    p.waiter.resolve();
                }
                else {
                    // not asked for: the server ended it (a `refresh` whose token no longer allows the channel)
                    const sub = this.subs.get(channelId);
                    if (sub) {
                        this.subs.delete(channelId);
                        const err = new CortexError("server", "the server ended the subscription", { channelId });
                        for (const w of sub.waiters.splice(0))
                            w.reject(err);
                    }
                }
                this.emit("unsubscribed", { channelId });
                return;
            }
            case "refreshed":
                this.takePending(msg.ref);
                this.onRefreshed(String(msg.expiresAt));
                return;
            case "pong":
                this.takePending(msg.ref);
                return;
            case "error":
                this.onError(msg);
                return;
            default:
                if (typeof msg.channelId === "string" && typeof msg.offset === "number" && typeof msg.epoch === "string") {
                    this.onEvent(msg);
                }
        }
    }
    onConnected(msg) {
        if (this.connectTimer !== undefined)
            clearTimeout(this.connectTimer);
        this.connectTimer = undefined;
        this._connection = {
            type: "connected",
            connectionId: msg.connectionId,
            userId: msg.userId,
            orgId: msg.orgId,
            expiresAt: msg.expiresAt,
        };
        this._expiresAt = msg.expiresAt;
        this.connectedAt = Date.now();
        this.expiredInARow = 0;
        this.retryAttempt = 0;
        this.tokenReason = "connect";
        this.setState("connected");
        const reconnect = this.everConnected;
        this.everConnected = true;
        this.emit("connected", {
            connectionId: msg.connectionId,
            userId: msg.userId,
            orgId: msg.orgId,
            expiresAt: msg.expiresAt,
            reconnect,
        });
        if (this._state !== "connected")
            return; // a listener closed the client
        this.scheduleRefresh(msg.expiresAt, undefined);
        this.startPing();
        for (const sub of this.subs.values())
            if (sub.status === "pending")
                this.sendSubscribe(sub);
    }
    sendSubscribe(sub) {
        const since = sub.position;
        sub.status = "subscribing";
        const ref = this.ref({ kind: "subscribe", sub, resumed: since !== undefined });
        const cmd = { type: "subscribe", channelId: sub.channelId, ref };
        if (since)
            cmd.since = { offset: since.offset, epoch: since.epoch };
        this.send(cmd);
    }
    onSubscribed(msg) {
        if (msg.ref === undefined) {
            this.onContinuityNotice(msg);
            return;
        }
        const p = this.takePending(msg.ref);
        const sub = this.subs.get(msg.channelId);
        if (!sub || (p?.kind === "subscribe" && p.sub !== sub))
            return; // unsubscribed meanwhile
        const resumed = p?.kind === "subscribe" ? p.resumed : msg.recovered !== undefined;
        delete sub.retry;
        if (msg.recovered !== true) {
            // a fresh start, or a resume that could not be proven lossless: continue from the live edge
            sub.position = { offset: msg.offset, epoch: msg.epoch };
        }
        // recovered: the missed events follow, and the position moves as they arrive
        sub.status = "subscribed";
        const info = { channelId: msg.channelId, offset: msg.offset, epoch: msg.epoch, resumed };
        if (msg.recovered !== undefined)
            info.recovered = msg.recovered;
        sub.info = info;
        for (const w of sub.waiters.splice(0))
            w.resolve(info);
        this.emit("subscribed", info);
    }
    /**
     * An unsolicited `subscribed` (no `ref`, CONTRACT.md section 6): the server skipped events of
     * a channel this connection is subscribed to (its backplane lost them, or the channel's
     * history) and continues from a new position. Reported like a resume that did not recover;
     * the new position is where the next resume starts.
     */
    onContinuityNotice(msg) {
        const sub = this.subs.get(msg.channelId);
        if (!sub || typeof msg.offset !== "number" || typeof msg.epoch !== "string")
            return;
        sub.position = { offset: msg.offset, epoch: msg.epoch };
        const info = {
            channelId: msg.channelId,
            offset: msg.offset,
            epoch: msg.epoch,
            resumed: true,
            recovered: false,
        };
        if (sub.status === "subscribed")
            sub.info = info;
        this.emit("subscribed", info);
    }
    onEvent(ev) {
        const sub = this.subs.get(ev.channelId);
        if (!sub || sub.status !== "subscribed")
            return; // unsubscribed, or in flight from before
        const pos = sub.position;
        if (pos && pos.epoch === ev.epoch && ev.offset <= pos.offset)
            return; // seen already
        sub.position = { offset: ev.offset, epoch: ev.epoch };
        for (const h of [...sub.handlers])
            this.call(h, ev);
        this.emit("event", ev);
    }
    onError(msg) {
        const p = this.takePending(msg.ref);
        const err = new CortexError("server", msg.message || String(msg.code), {
            code: String(msg.code),
            ...(msg.channelId !== undefined ? { channelId: msg.channelId } : {}),
        });
        const retry = msg.code === RATE_LIMITED || msg.code === UNAVAILABLE;
        if (p?.kind === "subscribe") {
            const sub = p.sub;
            if (this.subs.get(sub.channelId) === sub) {
                if (retry) {
                    // the command did nothing: send it again (the promise waits), `unavailable` with
                    // backoff and jitter while the server's backplane is away
                    let delay = RATE_LIMITED_RETRY_MS;
                    if (msg.code === UNAVAILABLE) {
                        sub.retry ?? (sub.retry = new Backoff(this.opts.backoff));
                        delay = sub.retry.next();
                    }
                    this.later(delay, () => {
                        if (this.subs.get(sub.channelId) === sub && this._state === "connected")
                            this.sendSubscribe(sub);
                    });
                }
                else {
                    this.subs.delete(sub.channelId);
                    for (const w of sub.waiters.splice(0))
                        w.reject(err);
                }
            }
        }
        else if (p?.kind === "unsubscribe") {
            if (retry) {
                const { channelId, waiter } = p;
                this.later(RATE_LIMITED_RETRY_MS, () => {
                    if (this.subs.has(channelId))
                        return waiter.resolve(); // subscribed again meanwhile
                    const ref = this.ref({ kind: "unsubscribe", channelId, waiter });
                    this.send({ type: "unsubscribe", channelId, ref });
                });
            }
            else {
                p.waiter.reject(err);
            }
        }
        else if (p?.kind === "refresh") {
            // invalid_token / token_mismatch / rate_limited: the old token stays; try again later
            this.retryRefresh();
        }
        this.emit("error", err);
    }
    // --- token refresh --------------------------------------------------------------------------
    scheduleRefresh(expiresAt, previous) {
        if (this.refreshTimer !== undefined)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = undefined;
        const margin = this.opts.refreshMarginMs ?? 60000;
        if (margin === false || typeof this.opts.token !== "function")
            return;
        const exp = Date.parse(expiresAt);
        if (!Number.isFinite(exp))
            return;
        if (previous !== undefined && !(exp > Date.parse(previous)))
            return; // the provider gave no newer token
        const remaining = exp - Date.now();
        const dueAt = Date.now() + Math.max(0, remaining - Math.min(margin, remaining / 2));
        this.refreshAt(dueAt);
    }
    /** Refreshes at `dueAt`; timers are capped (setTimeout overflows past ~24.8 days). */
    refreshAt(dueAt) {
        const delay = Math.max(0, dueAt - Date.now());
        this.refreshTimer = setTimeout(() => {
            if (dueAt - Date.now() > 1000)
                this.refreshAt(dueAt);
            else
                void this.refresh();
        }, Math.min(delay, MAX_TIMER_MS));
    }
    retryRefresh() {
        if (this._state !== "connected" || this._expiresAt === undefined)
            return;
        const remaining = Date.parse(this._expiresAt) - Date.now();
        if (!(remaining > 2000))
            return; // 4002 will come; the client reconnects with a new token then
        if (this.refreshTimer !== undefined)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = setTimeout(() => void this.refresh(), Math.min(remaining / 2, 30000));
    }
    async refresh() {
        this.refreshTimer = undefined;
        const gen = this.generation;
        let token;
        try {
            token = await this.getToken("refresh");
        }
        catch (e) {
            if (gen !== this.generation)
                return;
            this.emit("error", new CortexError("token", "the token provider failed", { cause: e }));
            this.retryRefresh();
            return;
        }
        if (gen !== this.generation || this._state !== "connected")
            return;
        const ref = this.ref({ kind: "refresh" });
        this.send({ type: "refresh", token, ref });
    }
    onRefreshed(expiresAt) {
        const previous = this._expiresAt;
        this._expiresAt = expiresAt;
        if (this._connection)
            this._connection.expiresAt = expiresAt;
        this.emit("refreshed", { expiresAt });
        this.scheduleRefresh(expiresAt, previous);
    }
    // --- liveness -------------------------------------------------------------------------------
    startPing() {
        const every = this.opts.pingIntervalMs ?? 25000;
        if (!(every > 0))
            return;
        this.pingTimer = setInterval(() => {
            if (this._state !== "connected" || this.pongTimer !== undefined)
                return;
            const ref = this.ref({ kind: "ping" });
            this.send({ type: "ping", ref });
            this.pongTimer = setTimeout(() => {
                this.pongTimer = undefined;
                this.abandon(1006, "ping timeout");
            }, this.opts.pongTimeoutMs ?? 10000);
        }, every);
    }
    // --- sending --------------------------------------------------------------------------------
    ref(p) {
        const ref = this.nextRef++;
        this.pending.set(ref, p);
        return ref;
    }
    takePending(ref) {
        if (typeof ref !== "number")
            return undefined;
        const p = this.pending.get(ref);
        this.pending.delete(ref);
        return p;
    }
    /** Sends now, or queues behind the client-side pace (80 commands/s, bursts of 80). */
    send(msg) {
        this.outbox.push(msg);
        this.flush();
    }
    flush() {
        const now = Date.now();
        this.sendTokens = Math.min(SEND_BURST, this.sendTokens + ((now - this.sendRefilledAt) * SEND_PER_SECOND) / 1000);
        this.sendRefilledAt = now;
        const ws = this.ws;
        while (this.outbox.length > 0 && this.sendTokens >= 1) {
            if (!ws || ws.readyState !== OPEN)
                return;
            const msg = this.outbox.shift();
            this.sendTokens -= 1;
            try {
                ws.send(JSON.stringify(msg));
            }
            catch {
                return; // the socket is closing; its close event resets everything
            }
        }
        if (this.outbox.length > 0 && this.outboxTimer === undefined) {
            this.outboxTimer = setTimeout(() => {
                this.outboxTimer = undefined;
                this.flush();
            }, Math.ceil(1000 / SEND_PER_SECOND));
        }
    }
    // --- listeners ------------------------------------------------------------------------------
    emit(type, value) {
        const set = this.listeners.get(type);
        if (!set || set.size === 0)
            return;
        for (const l of [...set])
            this.call(l, value);
    }
    /** A throwing listener must not break the client: its error is rethrown on a fresh stack. */
    call(fn, v) {
        try {
            fn(v);
        }
        catch (e) {
            setTimeout(() => {
                throw e;
            }, 0);
        }
    }
}
