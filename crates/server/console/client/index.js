// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.
export { CortexRealtime, CortexError, } from "./client.js";
export { Backoff, backoffBound, closeAction, DEFAULT_BACKOFF, } from "./policy.js";
export { isTokenExpired, tokenExpiresAt, TOKEN_EXP_LEEWAY_MS } from "./token.js";
export * from "./types.js";
