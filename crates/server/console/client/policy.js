// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.
/**
 * Reconnect policy: the backoff of CONTRACT.md section 8 and what to do on each close code.
 * Pure and deterministic given a random function, so it is unit-tested without sockets or clocks.
 */
export const DEFAULT_BACKOFF = Object.freeze({
    baseMs: 1000,
    capMs: 30000,
    resetAfterMs: 30000,
});
/** The bound for the given attempt (0-based): `min(cap, base * 2^attempt)`. */
export function backoffBound(attempt, baseMs, capMs) {
    if (!(attempt >= 0))
        attempt = 0;
    // 2^attempt overflows to Infinity long after it passed any sane cap; min() handles that.
    return Math.min(capMs, baseMs * Math.pow(2, Math.floor(attempt)));
}
/**
 * Exponential backoff with full jitter: attempt n waits a uniformly random time in
 * `[0, min(cap, base * 2^n)]`.
 */
export class Backoff {
    constructor(options = {}) {
        this.attempt = 0;
        this.baseMs = options.baseMs ?? DEFAULT_BACKOFF.baseMs;
        this.capMs = options.capMs ?? DEFAULT_BACKOFF.capMs;
        this.resetAfterMs = options.resetAfterMs ?? DEFAULT_BACKOFF.resetAfterMs;
        this.random = options.random ?? Math.random;
        if (!(this.baseMs >= 0) || !(this.capMs >= this.baseMs)) {
            throw new RangeError("backoff: need 0 <= baseMs <= capMs");
        }
    }
    /** How many delays were handed out since the last reset. */
    get attempts() {
        return this.attempt;
    }
    /** The bound the next delay is drawn under. */
    get currentBound() {
        return backoffBound(this.attempt, this.baseMs, this.capMs);
    }
    /** The next delay (ms), then doubles the bound (up to the cap). */
    next() {
        const bound = this.currentBound;
        this.attempt += 1;
        let r = this.random();
        if (!(r >= 0))
            r = 0;
        if (r > 1)
            r = 1;
        return Math.round(r * bound);
    }
    /** Back to the first bound. */
    reset() {
        this.attempt = 0;
    }
    /** Call when a connection ended: resets when it had stayed up for `resetAfterMs`. */
    connectionEnded(upForMs) {
        if (upForMs >= this.resetAfterMs)
            this.reset();
    }
}
/** The close-code policy of CONTRACT.md section 8. Unknown codes (1006 and friends) reconnect. */
export function closeAction(code) {
    switch (code) {
        case 1000:
            return "stop";
        case 4001:
            return "stop-auth";
        case 4002:
            return "new-token";
        default:
            return "reconnect";
    }
}
