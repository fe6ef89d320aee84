/**
 * Wire types of Cortex Realtime (CONTRACT.md sections 3 and 5).
 *
 * Every payload interface lists the fields the server guarantees (it refuses a publish without
 * them); extra fields a publisher added pass through untouched, hence the index signature.
 */

/** Fields every payload may carry beyond the required ones. */
export interface ExtraFields {
  [field: string]: unknown;
}

/** `timestamp` is RFC 3339: filled in by the server (UTC) when the publisher left it out. */
interface Timestamped extends ExtraFields {
  timestamp: string;
}

export interface AgentSpawnedPayload extends Timestamped {
  agentId: string;
  agentName: string;
  taskId: string;
}

export interface AgentCompletedPayload extends Timestamped {
  agentId: string;
  agentName: string;
  taskId: string;
  /** Any JSON value but `null`. */
  result: unknown;
  /** Milliseconds. */
  duration: number;
}

export interface AgentFailedPayload extends Timestamped {
  agentId: string;
  agentName: string;
  taskId: string;
  error: string;
}

export interface AgentStatusPayload extends Timestamped {
  agentId: string;
  agentName: string;
  status: "error" | "blocked";
  message: string;
}

export interface TaskCreatedPayload extends Timestamped {
  taskId: string;
  title: string;
  projectId: string;
}

export interface TaskStatusChangedPayload extends Timestamped {
  taskId: string;
  oldStatus: string;
  newStatus: string;
}

export interface TaskUpdatedPayload extends Timestamped {
  taskId: string;
  changes: Record<string, unknown>;
}

export interface TaskDeletedPayload extends Timestamped {
  taskId: string;
}

export interface ChiefPlanCreatedPayload extends Timestamped {
  planId: string;
  tasks: unknown[];
}

export interface ChiefTaskAssignedPayload extends Timestamped {
  taskId: string;
  agentName: string;
}

export interface ChiefTaskProgressPayload extends Timestamped {
  taskId: string;
  /** 0..100 */
  progress: number;
  message: string;
}

export interface SwarmPhaseStartedPayload extends Timestamped {
  swarmId: string;
  phase: string;
}

export interface SwarmPhaseCompletedPayload extends Timestamped {
  swarmId: string;
  phase: string;
  /** Any JSON value but `null`. */
  results: unknown;
}

export interface GatePassedPayload extends Timestamped {
  taskId: string;
  gate: string;
}

export interface GateFailedPayload extends Timestamped {
  taskId: string;
  gate: string;
  reason: string;
}

export interface ChatMessagePayload extends Timestamped {
  messageId: string;
  agentId: string;
  content: string;
}

/** The sixteen event types and their payloads. */
export interface EventPayloads {
  "agent.spawned": AgentSpawnedPayload;
  "agent.completed": AgentCompletedPayload;
  "agent.failed": AgentFailedPayload;
  "agent.status": AgentStatusPayload;
  "task.created": TaskCreatedPayload;
  "task.status_changed": TaskStatusChangedPayload;
  "task.updated": TaskUpdatedPayload;
  "task.deleted": TaskDeletedPayload;
  "chief.plan.created": ChiefPlanCreatedPayload;
  "chief.task.assigned": ChiefTaskAssignedPayload;
  "chief.task.progress": ChiefTaskProgressPayload;
  "swarm.phase.started": SwarmPhaseStartedPayload;
  "swarm.phase.completed": SwarmPhaseCompletedPayload;
  "gate.passed": GatePassedPayload;
  "gate.failed": GateFailedPayload;
  "chat.message": ChatMessagePayload;
}

export type EventType = keyof EventPayloads;

/** The sixteen types, in the contract's order. */
export const EVENT_TYPES: readonly EventType[] = Object.freeze([
  "agent.spawned",
  "agent.completed",
  "agent.failed",
  "agent.status",
  "task.created",
  "task.status_changed",
  "task.updated",
  "task.deleted",
  "chief.plan.created",
  "chief.task.assigned",
  "chief.task.progress",
  "swarm.phase.started",
  "swarm.phase.completed",
  "gate.passed",
  "gate.failed",
  "chat.message",
] as const);

/** Whether `type` is one of the sixteen event types this version of the client knows. */
export function isEventType(type: string): type is EventType {
  return (EVENT_TYPES as readonly string[]).includes(type);
}

/**
 * The generic delivery shape: what every event frame carries, whatever its type.
 * `offset` counts up by one per event on `channelId`; `epoch` names the channel's history.
 */
export interface Delivery<T extends string = string, P = Record<string, unknown>> {
  type: T;
  channelId: string;
  /** Unique per published event; the same event on two channels keeps its id. */
  id: string;
  offset: number;
  epoch: string;
  payload: P;
}

/** A typed event: a discriminated union on `type`, so `switch (ev.type)` narrows `ev.payload`. */
export type CortexEvent = {
  [T in EventType]: Delivery<T, EventPayloads[T]>;
}[EventType];

/** The event of one given type. */
export type EventOf<T extends EventType> = Extract<CortexEvent, { type: T }>;

/** Where a client left a channel: the last offset it saw, in which epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Error codes of `error` replies (CONTRACT.md section 3). */
export type ErrorCode =
  | "bad_request"
  | "invalid_channel"
  | "forbidden"
  | "too_many_subscriptions"
  | "rate_limited"
  | "invalid_token"
  | "token_mismatch"
  | "unavailable";

export type Ref = string | number;

/** Client-to-server commands. */
export type ClientMessage =
  | { type: "auth"; token: string; ref?: Ref }
  | { type: "subscribe"; channelId: string; since?: Position; ref?: Ref }
  | { type: "unsubscribe"; channelId: string; ref?: Ref }
  | { type: "refresh"; token: string; ref?: Ref }
  | { type: "ping"; ref?: Ref };

export interface ConnectedMessage {
  type: "connected";
  connectionId: string;
  userId: string;
  orgId: string;
  expiresAt: string;
}

export interface SubscribedMessage {
  type: "subscribed";
  channelId: string;
  offset: number;
  epoch: string;
  recovered?: boolean;
  ref?: Ref;
}

export interface UnsubscribedMessage {
  type: "unsubscribed";
  channelId: string;
  ref?: Ref;
}

export interface RefreshedMessage {
  type: "refreshed";
  expiresAt: string;
  ref?: Ref;
}

export interface PongMessage {
  type: "pong";
  ref?: Ref;
}

export interface ErrorMessage {
  type: "error";
  code: ErrorCode | string;
  message: string;
  channelId?: string;
  ref?: Ref;
}

/** Server-to-client control messages (everything that is not an event). */
export type ControlMessage =
  | ConnectedMessage
  | SubscribedMessage
  | UnsubscribedMessage
  | RefreshedMessage
  | PongMessage
  | ErrorMessage;

/** WebSocket close codes of CONTRACT.md section 8. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TOKEN_INVALID: 4001,
  TOKEN_EXPIRED: 4002,
  AUTH_TIMEOUT: 4003,
  RATE_LIMITED: 4008,
  SLOW_CONSUMER: 4009,
  TOO_MANY_CONNECTIONS: 4029,
} as const);
