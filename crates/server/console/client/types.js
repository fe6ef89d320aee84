// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.
/**
 * Wire types of Cortex Realtime (CONTRACT.md sections 3 and 5).
 *
 * Every payload interface lists the fields the server guarantees (it refuses a publish without
 * them); extra fields a publisher added pass through untouched, hence the index signature.
 */
/** The sixteen types, in the contract's order. */
export const EVENT_TYPES = Object.freeze([
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
]);
/** Whether `type` is one of the sixteen event types this version of the client knows. */
export function isEventType(type) {
    return EVENT_TYPES.includes(type);
}
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
});
