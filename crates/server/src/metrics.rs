//! Counters and gauges, exported in Prometheus text format at `GET /metrics`.
//!
//! Labels never carry tokens, user ids or channel names: only fixed words.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

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
    ::metrics::gauge!("cortex_connections").increment(1.0);
    ::metrics::counter!("cortex_connections_total").increment(1);
}

/// An authenticated connection ended, with this close code.
pub fn connection_closed(code: u16) {
    ::metrics::gauge!("cortex_connections").decrement(1.0);
    ::metrics::counter!("cortex_closes_total", "code" => code.to_string()).increment(1);
}

/// A connection or upgrade was refused before authentication completed.
pub fn refused(reason: &'static str) {
    ::metrics::counter!("cortex_refused_total", "reason" => reason).increment(1);
}

/// Events accepted by the publish API.
pub fn published(n: usize) {
    ::metrics::counter!("cortex_events_published_total").increment(n as u64);
}

/// Deliveries into outboxes on this node.
pub fn delivered(n: usize) {
    ::metrics::counter!("cortex_deliveries_total").increment(n as u64);
}

/// A subscription was added or removed.
pub fn subscriptions(delta: f64) {
    ::metrics::gauge!("cortex_subscriptions").increment(delta);
}
