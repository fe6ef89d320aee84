//! Counters and gauges, exported in Prometheus text format at `GET /metrics`.
//!
//! Labels never carry tokens, user ids or channel names: only fixed words.

use std::sync::OnceLock;

use ::metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Handles of the unlabelled metrics, looked up once: a lookup hashes the name and takes the
/// registry's lock, and the publish path would do it for every event.
struct Hot {
    connections: Gauge,
    connections_total: Counter,
    published: Counter,
    delivered: Counter,
    subscriptions: Gauge,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The handles, from whichever recorder is installed when they are first used ([`install`]
/// runs before a server takes its first connection or event).
fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        connections: ::metrics::gauge!("cortex_connections"),
        connections_total: ::metrics::counter!("cortex_connections_total"),
        published: ::metrics::counter!("cortex_events_published_total"),
        delivered: ::metrics::counter!("cortex_deliveries_total"),
        subscriptions: ::metrics::gauge!("cortex_subscriptions"),
    })
}

/// Installs the process-wide recorder (once; later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed already (an embedding host's): then the
        // host's recorder gets our metrics and `/metrics` says so.
        ::metrics::set_global_recorder(recorder)
            .ok()
            .map(|()| handle)
    });
    hot();
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => "# metrics are recorded by the host application\n".to_owned(),
    }
}

/// A WebSocket connection was authenticated.
pub fn connection_opened() {
    hot().connections.increment(1.0);
    hot().connections_total.increment(1);
}

/// An authenticated connection ended, with this close code.
pub fn connection_closed(code: u16) {
    hot().connections.decrement(1.0);
    ::metrics::counter!("cortex_closes_total", "code" => code.to_string()).increment(1);
}

/// A connection or upgrade was refused before authentication completed.
pub fn refused(reason: &'static str) {
    ::metrics::counter!("cortex_refused_total", "reason" => reason).increment(1);
}

/// Events accepted by the publish API.
pub fn published(n: usize) {
    hot().published.increment(n as u64);
}

/// Deliveries into outboxes on this node.
pub fn delivered(n: usize) {
    hot().delivered.increment(n as u64);
}

/// A subscription was added or removed.
pub fn subscriptions(delta: f64) {
    hot().subscriptions.increment(delta);
}
