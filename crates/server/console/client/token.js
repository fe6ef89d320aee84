// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.
/**
 * What the client reads from a JWT without verifying it: the `exp` claim, so that a token that
 * has expired is not sent in `?token=` (where the server's refusal, an HTTP 401, reaches a
 * browser only as close 1006). The server verifies every token; this is only a pre-check.
 */
/**
 * The clock leeway on `exp`: a token counts as expired only once `exp` is more than this far in
 * the past (the server's default leeway is the same 30 s), so a client clock a little ahead of
 * the server's does not throw away a token the server would still accept.
 */
export const TOKEN_EXP_LEEWAY_MS = 30000;
function base64UrlDecode(part) {
    if (!/^[A-Za-z0-9_-]*$/.test(part) || part.length % 4 === 1)
        return undefined;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    try {
        const binary = atob(b64 + "===".slice((b64.length + 3) % 4));
        const bytes = new Uint8Array(binary.length);
        for (let i = 0; i < binary.length; i++)
            bytes[i] = binary.charCodeAt(i);
        return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    }
    catch {
        return undefined;
    }
}
/**
 * The token's `exp` (milliseconds since the epoch), read from its base64url JSON payload with no
 * signature check; `undefined` when the token is not a JWT or has no numeric `exp`.
 */
export function tokenExpiresAt(token) {
    const parts = token.split(".");
    if (parts.length !== 3)
        return undefined;
    const json = base64UrlDecode(parts[1] ?? "");
    if (json === undefined)
        return undefined;
    let claims;
    try {
        claims = JSON.parse(json);
    }
    catch {
        return undefined;
    }
    if (typeof claims !== "object" || claims === null || Array.isArray(claims))
        return undefined;
    const exp = claims.exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined;
}
/**
 * Whether the token's `exp` passed more than `leewayMs` ago (default 30 s). A token whose `exp`
 * cannot be read is not known to be expired: the server decides.
 */
export function isTokenExpired(token, now = Date.now(), leewayMs = TOKEN_EXP_LEEWAY_MS) {
    const exp = tokenExpiresAt(token);
    return exp !== undefined && exp + leewayMs <= now;
}
