export {
  CortexRealtime,
  CortexError,
  type ClientOptions,
  type ClientState,
  type ClientEventMap,
  type ConnectedInfo,
  type DisconnectedInfo,
  type ErrorKind,
  type Listener,
  type ReconnectingInfo,
  type SubscribeOptions,
  type SubscribedInfo,
  type TokenReason,
  type TokenRequest,
  type TokenSource,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export {
  Backoff,
  backoffBound,
  closeAction,
  DEFAULT_BACKOFF,
  type BackoffOptions,
  type CloseAction,
} from "./policy.js";
export { isTokenExpired, tokenExpiresAt, TOKEN_EXP_LEEWAY_MS } from "./token.js";
export * from "./types.js";
