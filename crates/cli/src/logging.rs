//! Logging: the tracing subscriber on stderr, as text for people or as one JSON object a line
//! for machines ([`LogFormat`]), with the WebSocket library's frame logs (which carry tokens)
//! never let through. It never decides what is logged: the library does.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written (`serve --log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp` (RFC 3339, UTC), `level` (lower case), `target`,
    /// `message`, and `fields` (an object of the event's other fields, with the names of the
    /// spans it happened in under `spans` when there are any).
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the subscriber: level from `RUST_LOG` (default `info`), lines on stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The WebSocket library logs every frame at debug and trace, and frames carry tokens (the
    // `auth` and `refresh` commands): never let those through, whatever RUST_LOG says.
    let filter = ["tungstenite=info", "tokio_tungstenite=info"]
        .iter()
        .fold(filter, |f, d| {
            f.add_directive(d.parse().expect("valid directive"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a person at a terminal, not in files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
}

/// The JSON line of one event (see [`LogFormat::Json`]).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| Value::from(span.name()))
                .collect();
            fields.rest.insert("spans".into(), Value::Array(spans));
        }
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": meta.level().as_str().to_ascii_lowercase(),
            "target": meta.target(),
            "message": fields.message.unwrap_or_default(),
            "fields": Value::Object(fields.rest),
        });
        writeln!(writer, "{line}")
    }
}

/// An event's `message` and its other fields, as JSON values.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_has_timestamp_level_target_message_and_fields() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn");
            let _in = span.enter();
            tracing::warn!(
                addr = "127.0.0.1:1",
                n = 3,
                ok = true,
                "accept \"failed\"\nagain"
            );
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "one line: {out}");
        let v: Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["message"], "accept \"failed\"\nagain");
        assert!(v["target"].as_str().unwrap().contains("logging"), "{v}");
        assert_eq!(v["fields"]["addr"], "127.0.0.1:1");
        assert_eq!(v["fields"]["n"], 3);
        assert_eq!(v["fields"]["ok"], true);
        assert_eq!(v["fields"]["spans"], serde_json::json!(["conn"]));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }
}
