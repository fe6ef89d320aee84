//! Logging: the tracing subscriber on stderr, with frames (which carry tokens) never logged.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The WebSocket library logs every frame at debug and trace, and frames carry tokens (the
    // `auth` and `refresh` commands): never let those through, whatever RUST_LOG says.
    let filter = ["tungstenite=info", "tokio_tungstenite=info"]
        .iter()
        .fold(filter, |f, d| {
            f.add_directive(d.parse().expect("valid directive"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
