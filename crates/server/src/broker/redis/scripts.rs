//! The Lua scripts, run with EVALSHA (the `redis` crate loads a script again on NOSCRIPT). One
//! script per publish request and org: it claims the idempotency keys, assigns each event its
//! offset on each of its channels, appends it to the channels' history and publishes it once,
//! atomically, so per-channel order is the order in which the scripts run. Text only: this
//! module never talks to Redis.

/// Publishes events of one org.
///
/// KEYS, per event: its idempotency key (when it has one), then per channel: epoch, offset,
/// history. ARGV: pub/sub channel, now (ms), events kept per channel, history TTL (s),
/// idempotency TTL (s), position TTL (s), event count, the publish command (`PUBLISH`, or
/// `SPUBLISH` in a Cluster: sharded pub/sub), then per event: has a key (0/1), channel
/// count, body, first answer, and per channel: its name and an epoch to use if it has none.
///
/// Returns per event `{0, first answer}` (a repeated key: nothing published) or
/// `{1, {offset, epoch, offset, epoch, ...}}` in the event's channel order. The message
/// published is a JSON line `[[channel, offset, epoch], ...]`, a newline, and the body.
pub(crate) const PUBLISH: &str = r#"
local events_channel, now = ARGV[1], ARGV[2]
local keep, history_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local idem_ttl, position_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local n, publish = tonumber(ARGV[7]), ARGV[8]
local k, a = 1, 9
local out = {}
for i = 1, n do
  local has_key, channels = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local body, first = ARGV[a + 2], ARGV[a + 3]
  a = a + 4
  local seen = false
  if has_key == 1 then
    seen = redis.call('GET', KEYS[k])
    if not seen then
      redis.call('SET', KEYS[k], first, 'EX', idem_ttl)
    end
    k = k + 1
  end
  if seen then
    out[#out + 1] = {0, seen}
    k = k + 3 * channels
    a = a + 2 * channels
  else
    local header, positions = {}, {}
    for c = 1, channels do
      local name, candidate = ARGV[a], ARGV[a + 1]
      a = a + 2
      local epoch_key, offset_key, history_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
      k = k + 3
      local epoch = redis.call('GET', epoch_key)
      if not epoch then
        epoch = candidate
        redis.call('SET', epoch_key, epoch)
        redis.call('DEL', offset_key, history_key)
      end
      local offset = redis.call('INCR', offset_key)
      redis.call('XADD', history_key, 'MAXLEN', keep, offset .. '-0', 'e', body, 't', now)
      redis.call('EXPIRE', history_key, history_ttl)
      redis.call('EXPIRE', epoch_key, position_ttl)
      redis.call('EXPIRE', offset_key, position_ttl)
      header[#header + 1] = '["' .. name .. '",' .. offset .. ',"' .. epoch .. '"]'
      positions[#positions + 1] = offset
      positions[#positions + 1] = epoch
    end
    redis.call(publish, events_channel, '[' .. table.concat(header, ',') .. ']\n' .. body)
    out[#out + 1] = {1, positions}
  end
end
return out
"#;

/// A channel's position and, with a `since`, its history after it.
///
/// KEYS: epoch, offset, history. ARGV: the `since` offset (empty: none), an epoch to use if the
/// channel has none, position TTL (s). Returns `{epoch, offset}` or, with `since`,
/// `{epoch, offset, entries}` (XRANGE's answer: `{id, {field, value, ...}}` each).
pub(crate) const RECOVER: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch, 'EX', tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == '' then
  return {epoch, offset}
end
local since = tonumber(ARGV[1])
if since >= offset then
  return {epoch, offset, {}}
end
return {epoch, offset, redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+')}
"#;
