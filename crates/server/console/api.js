// Calls to the admin API (docs/admin-api.openapi.json) with the admin key as a bearer token. The
// key is passed in by the caller on every call and never written anywhere: no storage, no cookie,
// no URL. Every failure becomes an `ApiError` whose message an operator can act on.

/** A refused or failed admin API call. `status` is 0 when the listener did not answer at all. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    /** Seconds from the `Retry-After` header, when the answer had one. */
    this.retryAfter = retryAfter;
  }
}

/** What to show for an error, in a sentence. */
export function describe(e) {
  if (!(e instanceof ApiError)) return `Unexpected error: ${e && e.message ? e.message : String(e)}`;
  switch (e.status) {
    case 0:
      return `The admin listener did not answer (${e.message}). Retrying.`;
    case 401:
      return "Wrong admin key: the server answered 401 (unauthorized). Enter the key given to serve --admin-key.";
    case 429: {
      const wait = e.retryAfter !== undefined ? ` Try again in ${e.retryAfter} s.` : "";
      return `Too many failed attempts from this address: the server answered 429 (rate limited).${wait}`;
    }
    default:
      return `The server answered ${e.status} (${e.code}): ${e.message}`;
  }
}

/**
 * One call: `GET path` or `POST path` with a JSON body. Resolves with the answer's JSON; rejects
 * with an `ApiError`.
 */
export async function call(key, method, path, body) {
  const headers = { authorization: `Bearer ${key}`, accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "network", e && e.message ? e.message : String(e));
  }
  let json;
  try {
    json = await res.json();
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const ra = Number.parseInt(res.headers.get("retry-after") ?? "", 10);
    throw new ApiError(
      res.status,
      (json && typeof json.error === "string" && json.error) || `http_${res.status}`,
      (json && typeof json.message === "string" && json.message) || res.statusText || "no message",
      Number.isFinite(ra) ? ra : undefined,
    );
  }
  if (json === undefined) throw new ApiError(res.status, "bad_answer", `${method} ${path}: the answer is not JSON`);
  return json;
}
