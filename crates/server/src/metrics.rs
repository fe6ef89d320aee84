//! Counters, gauges and histograms, exported in Prometheus text format at `GET /metrics` (the
//! list, with each metric's labels, is in docs/operations.md, "Metrics").
//!
//! Labels only ever come from closed sets written here (event type, channel kind, close code,
//! refusal reason, command type, error code, HTTP status, recovered or not): never a channel,
//! org, user or connection id, and never a token. Every labelled metric of the hot paths is an
//! array of handles registered once, indexed by its enum: a delivery or a publish never looks
//! a name up in the registry. Histograms have explicit buckets. Process-wide (one recorder):
//! several nodes in one process add into the same metrics.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram};
use cortex_protocol::{ChannelKind, ErrorCode, EventType};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Close codes counted, each its own label value; anything else is counted as `other`. Every
/// code of the contract, 1005 (the client's close frame carried no code) and 1006 (the client
/// went away without a close frame). The admin API's counts (`activity`) use the same list.
pub(crate) const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1005, 1006, 1008, 1009, 4001, 4002, 4003, 4008, 4009, 4029,
];

/// Why a connection or upgrade was refused before authentication completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `local`: a Host that is not a loopback name.
    Host,
    /// A browser Origin not allowed.
    Origin,
    /// The upgrade URL is over the limit.
    UrlTooLong,
    /// An expired token.
    TokenExpired,
    /// A missing or invalid token (URL, header or the `auth` frame).
    Unauthorized,
    /// The user's or node's connection limit.
    TooManyConnections,
    /// The `auth` frame did not come, or did not authenticate.
    AuthFrame,
    /// The listener could not accept (out of descriptors).
    AcceptError,
    /// Plain HTTP (or anything not TLS) on a TLS listener.
    PlainHttpOnTls,
    /// A TLS handshake that failed or did not finish in time.
    TlsHandshake,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Refusal::Host,
        Refusal::Origin,
        Refusal::UrlTooLong,
        Refusal::TokenExpired,
        Refusal::Unauthorized,
        Refusal::TooManyConnections,
        Refusal::AuthFrame,
        Refusal::AcceptError,
        Refusal::PlainHttpOnTls,
        Refusal::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::UrlTooLong => "url_too_long",
            Refusal::TokenExpired => "token_expired",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::AuthFrame => "auth_frame",
            Refusal::AcceptError => "accept_error",
            Refusal::PlainHttpOnTls => "plain_http_on_tls",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// A client command, by type (`invalid`: not a command at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// `auth` (on a live connection: an error).
    Auth,
    /// `ping`.
    Ping,
    /// `subscribe`.
    Subscribe,
    /// `unsubscribe`.
    Unsubscribe,
    /// `refresh`.
    Refresh,
    /// A frame that is not a command.
    Invalid,
}

const COMMANDS: [(Command, &str); 6] = [
    (Command::Auth, "auth"),
    (Command::Ping, "ping"),
    (Command::Subscribe, "subscribe"),
    (Command::Unsubscribe, "unsubscribe"),
    (Command::Refresh, "refresh"),
    (Command::Invalid, "invalid"),
];

const ERRORS: [(ErrorCode, &str); 8] = [
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::InvalidChannel, "invalid_channel"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::TooManySubscriptions, "too_many_subscriptions"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::InvalidToken, "invalid_token"),
    (ErrorCode::TokenMismatch, "token_mismatch"),
    (ErrorCode::Unavailable, "unavailable"),
];

/// Statuses of the publish API counted, each its own label value; anything else is `other`.
const STATUSES: [u16; 14] = [
    202, 400, 401, 404, 405, 408, 411, 413, 414, 415, 429, 431, 500, 503,
];

/// Buckets of the publish-to-fan-out latency, seconds: 100 µs to 10 s.
const FANOUT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];
/// Buckets of one Redis command's latency, seconds: 100 µs to the 2 s timeout and past it.
const REDIS_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0, 5.0,
];

/// Every handle, registered once (see [`install`]).
struct Hot {
    connections: Gauge,
    connections_total: Counter,
    subscriptions: Gauge,
    refused: [Counter; Refusal::ALL.len()],
    closes: [Counter; CLOSE_CODES.len() + 1],
    commands: [Counter; COMMANDS.len()],
    command_errors: [Counter; ERRORS.len()],
    published: [Counter; EventType::ALL.len()],
    delivered: [Counter; ChannelKind::ALL.len()],
    outbox_bytes: Counter,
    replayed: Counter,
    recovered: Counter,
    not_recovered: Counter,
    continuity: Counter,
    slow_consumers: Counter,
    publish_answers: [Counter; STATUSES.len() + 1],
    fanout: Histogram,
    redis_command: Histogram,
    backplane_ready: Gauge,
    redis_reconnects: [Counter; 2],
    history_bytes: Gauge,
    admin_refused: Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The handles, from whichever recorder is installed when they are first used ([`install`]
/// runs before a server takes its first connection or event).
fn hot() -> &'static Hot {
    HOT.get_or_init(Hot::register)
}

impl Hot {
    /// Registers every metric with the current recorder.
    fn register() -> Hot {
        Hot {
            connections: ::metrics::gauge!("cortex_connections"),
            connections_total: ::metrics::counter!("cortex_connections_total"),
            subscriptions: ::metrics::gauge!("cortex_subscriptions"),
            refused: Refusal::ALL
                .map(|r| ::metrics::counter!("cortex_refused_total", "reason" => r.label())),
            closes: std::array::from_fn(|i| {
                let code = CLOSE_CODES
                    .get(i)
                    .map_or("other".to_owned(), |c| c.to_string());
                ::metrics::counter!("cortex_closes_total", "code" => code)
            }),
            commands: COMMANDS
                .map(|(_, t)| ::metrics::counter!("cortex_commands_total", "type" => t)),
            command_errors: ERRORS
                .map(|(_, c)| ::metrics::counter!("cortex_command_errors_total", "code" => c)),
            published: EventType::ALL.map(
                |t| ::metrics::counter!("cortex_events_published_total", "type" => t.as_str()),
            ),
            delivered: ChannelKind::ALL
                .map(|k| ::metrics::counter!("cortex_deliveries_total", "kind" => k.as_str())),
            outbox_bytes: ::metrics::counter!("cortex_outbox_bytes_total"),
            replayed: ::metrics::counter!("cortex_replayed_events_total"),
            recovered: ::metrics::counter!("cortex_recoveries_total", "recovered" => "true"),
            not_recovered: ::metrics::counter!("cortex_recoveries_total", "recovered" => "false"),
            continuity: ::metrics::counter!("cortex_continuity_notices_total"),
            slow_consumers: ::metrics::counter!("cortex_slow_consumer_closes_total"),
            publish_answers: std::array::from_fn(|i| {
                let status = STATUSES
                    .get(i)
                    .map_or("other".to_owned(), |s| s.to_string());
                ::metrics::counter!("cortex_publish_requests_total", "status" => status)
            }),
            fanout: ::metrics::histogram!("cortex_publish_fanout_seconds"),
            redis_command: ::metrics::histogram!("cortex_redis_command_seconds"),
            backplane_ready: ::metrics::gauge!("cortex_backplane_ready"),
            redis_reconnects: [RedisLink::Command, RedisLink::PubSub].map(
                |link| ::metrics::counter!("cortex_redis_reconnects_total", "link" => link.label()),
            ),
            history_bytes: ::metrics::gauge!("cortex_history_bytes"),
            admin_refused: ::metrics::counter!("cortex_admin_refusals_total"),
        }
    }
}

/// Installs the process-wide recorder (once; later calls are no-ops) and registers every
/// metric, so each is exported (at zero) from the start.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed already (an embedding host's): then the
        // host's recorder gets our metrics and `/metrics` says so.
        ::metrics::set_global_recorder(recorder)
            .ok()
            .map(|()| handle)
    });
    hot();
}

/// The Prometheus recorder, with the histograms' buckets.
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("cortex_publish_fanout_seconds".into()),
            &FANOUT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("cortex_redis_command_seconds".into()),
                &REDIS_BUCKETS,
            )
        })
        .expect("the bucket lists are not empty")
        .build_recorder()
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => "# metrics are recorded by the host application\n".to_owned(),
    }
}

impl Hot {
    /// A WebSocket connection was authenticated.
    fn connection_opened(&self) {
        self.connections.increment(1.0);
        self.connections_total.increment(1);
    }

    /// An authenticated connection ended, with this close code (1006: without a close frame).
    fn connection_closed(&self, code: u16) {
        let h = self;
        h.connections.decrement(1.0);
        let at = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        h.closes[at].increment(1);
        if code == 4009 {
            h.slow_consumers.increment(1);
        }
    }

    /// A connection or upgrade was refused before authentication completed.
    fn refused(&self, reason: Refusal) {
        let at = Refusal::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        self.refused[at].increment(1);
    }

    /// A client command arrived.
    fn command(&self, c: Command) {
        let at = COMMANDS.iter().position(|(x, _)| *x == c).unwrap_or(0);
        self.commands[at].increment(1);
    }

    /// A command was answered with an error.
    fn command_error(&self, code: ErrorCode) {
        let at = ERRORS.iter().position(|(x, _)| *x == code).unwrap_or(0);
        self.command_errors[at].increment(1);
    }

    /// An event of this type was accepted (the publish API or in-process).
    fn published(&self, t: EventType) {
        let at = EventType::ALL.iter().position(|&x| x == t).unwrap_or(0);
        self.published[at].increment(1);
    }

    /// `n` deliveries of one frame of `bytes` bytes on a channel of `kind`, into outboxes (or
    /// straight to sockets) of this node.
    fn delivered(&self, kind: ChannelKind, n: usize, bytes: usize) {
        if n == 0 {
            return;
        }
        let h = self;
        let at = ChannelKind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(0);
        h.delivered[at].increment(n as u64);
        h.outbox_bytes.increment((n * bytes) as u64);
    }

    /// A subscribe asked to resume: whether it recovered, and how many events it replayed.
    fn recovery(&self, recovered: bool, replayed: usize) {
        let h = self;
        if recovered {
            h.recovered.increment(1);
        } else {
            h.not_recovered.increment(1);
        }
        h.replayed.increment(replayed as u64);
    }

    /// A channel's subscribers got the continuity notice.
    fn continuity_notice(&self) {
        self.continuity.increment(1);
    }

    /// The publish API answered with `status`.
    fn publish_answer(&self, status: u16) {
        let at = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.publish_answers[at].increment(1);
    }

    /// A publish took this long from the broker call to its fan-out on this node.
    fn publish_fanout(&self, d: Duration) {
        self.fanout.record(d.as_secs_f64());
    }

    /// One Redis command took this long (answered, refused or timed out).
    fn redis_command(&self, d: Duration) {
        self.redis_command.record(d.as_secs_f64());
    }

    /// A Redis connection came back after it was lost.
    fn redis_reconnected(&self, link: RedisLink) {
        self.redis_reconnects[link as usize].increment(1);
    }

    /// Whether the backplane can publish and deliver now, and the history this node holds
    /// (bytes; the in-memory broker's, 0 with Redis, whose history is Redis's).
    fn backplane(&self, ready: bool, history_bytes: usize) {
        let h = self;
        h.backplane_ready.set(if ready { 1.0 } else { 0.0 });
        h.history_bytes.set(history_bytes as f64);
    }

    /// A request to the admin API was refused for its key.
    fn admin_refused(&self) {
        self.admin_refused.increment(1);
    }

    /// A subscription was added or removed.
    fn subscriptions(&self, delta: f64) {
        self.subscriptions.increment(delta);
    }
}

/// A WebSocket connection was authenticated.
pub fn connection_opened() {
    hot().connection_opened();
}

/// An authenticated connection ended, with this close code (1006: without a close frame).
pub fn connection_closed(code: u16) {
    hot().connection_closed(code);
}

/// A connection or upgrade was refused before authentication completed.
pub(crate) fn refused(reason: Refusal) {
    hot().refused(reason);
}

/// A client command arrived.
pub(crate) fn command(c: Command) {
    hot().command(c);
}

/// A command was answered with an error.
pub(crate) fn command_error(code: ErrorCode) {
    hot().command_error(code);
}

/// An event of this type was accepted (the publish API or in-process).
pub(crate) fn published(t: EventType) {
    hot().published(t);
}

/// `n` deliveries of one frame of `bytes` bytes on a channel of `kind`, into outboxes (or
/// straight to sockets) of this node.
pub(crate) fn delivered(kind: ChannelKind, n: usize, bytes: usize) {
    hot().delivered(kind, n, bytes);
}

/// A subscribe asked to resume: whether it recovered, and how many events it replayed.
pub(crate) fn recovery(recovered: bool, replayed: usize) {
    hot().recovery(recovered, replayed);
}

/// A channel's subscribers got the continuity notice.
pub(crate) fn continuity_notice() {
    hot().continuity_notice();
}

/// The publish API answered with `status`.
pub(crate) fn publish_answer(status: u16) {
    hot().publish_answer(status);
}

/// A publish took this long from the broker call to its fan-out on this node.
pub(crate) fn publish_fanout(d: Duration) {
    hot().publish_fanout(d);
}

/// One Redis command took this long (answered, refused or timed out).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_command(d: Duration) {
    hot().redis_command(d);
}

/// Which of a node's Redis connections: the command connection, or a pub/sub listener (one per
/// Redis server, one per master in a Cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum RedisLink {
    /// The command connection (publishes, history, leases).
    Command = 0,
    /// A pub/sub listener.
    PubSub = 1,
}

impl RedisLink {
    fn label(self) -> &'static str {
        match self {
            RedisLink::Command => "command",
            RedisLink::PubSub => "pubsub",
        }
    }
}

/// A Redis connection came back after it was lost.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_reconnected(link: RedisLink) {
    hot().redis_reconnected(link);
}

/// Whether the backplane can publish and deliver now, and the history this node holds
/// (bytes; the in-memory broker's, 0 with Redis, whose history is Redis's).
pub(crate) fn backplane(ready: bool, history_bytes: usize) {
    hot().backplane(ready, history_bytes);
}

/// A request to the admin API was refused for its key.
pub(crate) fn admin_refused() {
    hot().admin_refused();
}

/// A subscription was added or removed.
pub fn subscriptions(delta: f64) {
    hot().subscriptions(delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample of `name` with exactly `labels` (`name{labels}`, or `name` when empty).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn every_family_renders_with_closed_labels_and_moves() {
        let recorder = recorder();
        let handle = recorder.handle();
        let h = ::metrics::with_local_recorder(&recorder, Hot::register);
        let before = handle.render();
        assert!(
            before.contains("# TYPE cortex_closes_total counter"),
            "{before}"
        );
        h.connection_opened();
        h.connection_opened();
        h.connection_closed(4009);
        h.connection_closed(1234);
        h.refused(Refusal::Origin);
        h.command(Command::Subscribe);
        h.command_error(ErrorCode::Forbidden);
        h.published(EventType::TaskCreated);
        h.delivered(ChannelKind::Task, 3, 10);
        h.recovery(true, 2);
        h.recovery(false, 0);
        h.continuity_notice();
        h.publish_answer(202);
        h.publish_answer(418);
        h.publish_fanout(Duration::from_micros(300));
        h.redis_command(Duration::from_millis(3));
        h.redis_reconnected(RedisLink::PubSub);
        h.backplane(true, 1234);
        h.admin_refused();
        h.subscriptions(1.0);
        let after = handle.render();
        for (series, want) in [
            ("cortex_connections", 0.0),
            ("cortex_connections_total", 2.0),
            ("cortex_subscriptions", 1.0),
            (r#"cortex_closes_total{code="4009"}"#, 1.0),
            (r#"cortex_closes_total{code="1000"}"#, 0.0),
            (r#"cortex_closes_total{code="other"}"#, 1.0),
            ("cortex_slow_consumer_closes_total", 1.0),
            (r#"cortex_refused_total{reason="origin"}"#, 1.0),
            (r#"cortex_commands_total{type="subscribe"}"#, 1.0),
            (r#"cortex_command_errors_total{code="forbidden"}"#, 1.0),
            (r#"cortex_events_published_total{type="task.created"}"#, 1.0),
            (r#"cortex_deliveries_total{kind="task"}"#, 3.0),
            ("cortex_outbox_bytes_total", 30.0),
            ("cortex_replayed_events_total", 2.0),
            (r#"cortex_recoveries_total{recovered="true"}"#, 1.0),
            (r#"cortex_recoveries_total{recovered="false"}"#, 1.0),
            ("cortex_continuity_notices_total", 1.0),
            (r#"cortex_publish_requests_total{status="202"}"#, 1.0),
            (r#"cortex_publish_requests_total{status="other"}"#, 1.0),
            ("cortex_publish_fanout_seconds_count", 1.0),
            (r#"cortex_publish_fanout_seconds_bucket{le="0.00025"}"#, 0.0),
            (r#"cortex_publish_fanout_seconds_bucket{le="0.0005"}"#, 1.0),
            (r#"cortex_publish_fanout_seconds_bucket{le="+Inf"}"#, 1.0),
            ("cortex_redis_command_seconds_count", 1.0),
            (r#"cortex_redis_command_seconds_bucket{le="0.005"}"#, 1.0),
            (r#"cortex_redis_reconnects_total{link="pubsub"}"#, 1.0),
            (r#"cortex_redis_reconnects_total{link="command"}"#, 0.0),
            ("cortex_admin_refusals_total", 1.0),
            ("cortex_history_bytes", 1234.0),
            ("cortex_backplane_ready", 1.0),
        ] {
            assert_eq!(value(&after, series), want, "{series} in\n{after}");
        }
        assert!(
            after.contains("# TYPE cortex_publish_fanout_seconds histogram"),
            "{after}"
        );
        assert!(after.contains("# TYPE cortex_connections gauge"), "{after}");
        // Every label value is from a closed set: nothing id-like anywhere.
        for line in after.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else {
                continue;
            };
            for pair in labels.split('}').next().unwrap().split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                let keys = [
                    "reason",
                    "code",
                    "type",
                    "kind",
                    "recovered",
                    "status",
                    "link",
                    "le",
                ];
                assert!(keys.contains(&k), "label {k} in {line}");
                let v = v.trim_matches('"');
                let id_like = ["o_", "u_", "c_", "n_", "evt_"]
                    .iter()
                    .any(|p| v.starts_with(p));
                assert!(!id_like && !v.contains(':'), "{line}");
            }
        }
    }
}
