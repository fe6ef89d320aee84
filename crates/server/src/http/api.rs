//! The publish endpoint (CONTRACT.md section 7): `POST /api/events`, and [`ApiError`], the one
//! place HTTP errors are made.
//!
//! Reading the body, checking the publish key and wording the errors are HTTP's; what happens
//! to the events is the publish service's ([`Node::publish`]). Both HTTP layers (axum here, the
//! publishers' lean path in [`super::publisher`]) answer through [`publish_body`] and
//! [`ApiError::status_and_body`], so a status, an error code or the `Retry-After` of a 503 is
//! decided in one place. It never decides what becomes of an event.

use std::sync::Arc;
use std::task::Poll;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cortex_protocol::PublishEvent;
use cortex_protocol::event::MAX_BATCH;
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::node::Node;
use crate::publish::{Accepted, PublishError};

/// The `Retry-After` (seconds) of every 503: the node is draining or its backplane is away.
pub(crate) const RETRY_AFTER: &str = "1";

/// Why a publish request was refused: the request itself (HTTP's), or the publish service's
/// [`PublishError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Missing or wrong publish key (401).
    #[error("missing or wrong publish key")]
    Unauthorized,
    /// Body or event over the size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body is not JSON (400).
    #[error("the body is not valid JSON")]
    BadJson,
    /// The body is JSON but not a publish body (400).
    #[error("{0}")]
    BadBody(String),
    /// The publish service refused the batch.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::BadJson => (StatusCode::BAD_REQUEST, "bad_json"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Publish(PublishError::BatchTooLarge) => {
                (StatusCode::BAD_REQUEST, "batch_too_large")
            }
            ApiError::Publish(PublishError::Invalid { source, .. }) => {
                (StatusCode::BAD_REQUEST, source.code())
            }
            ApiError::Publish(PublishError::Unavailable) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        }
    }

    /// The `Retry-After` the answer carries: every 503, and nothing else.
    pub(crate) fn retry_after(status: StatusCode) -> Option<&'static str> {
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER)
    }
}

impl ApiError {
    /// The error's status and JSON body (both HTTP layers add [`ApiError::retry_after`]).
    pub(crate) fn status_and_body(&self) -> (StatusCode, Vec<u8>) {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, body.to_string().into_bytes())
    }

    /// The body did not arrive within `body_timeout`.
    pub(crate) fn body_timeout() -> ApiError {
        ApiError::BadBody("the body did not arrive in time".into())
    }

    /// The body is over the limit of a whole batch.
    pub(crate) fn body_too_large(per_event: usize) -> ApiError {
        ApiError::TooLarge(format!(
            "a body holds at most {MAX_BATCH} events of {per_event} bytes"
        ))
    }

    /// The body ended before its announced length, or was malformed.
    pub(crate) fn body_cut() -> ApiError {
        ApiError::BadBody("the body could not be read (cut short or malformed)".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = ApiError::retry_after(status) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

/// Whether the request carries one of the configured publish keys (constant-time compare).
fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    publish_key_ok(
        node,
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
    )
}

/// Whether an `Authorization` header value (as sent) is `Bearer <one of the publish keys>`.
/// Only visible ASCII counts, as for `HeaderValue::to_str`.
pub(crate) fn publish_key_ok(node: &Node, authorization: Option<&[u8]>) -> bool {
    let Some(given) = authorization
        .filter(|v| v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(super::bearer)
    else {
        return false;
    };
    let mut ok = 0u8;
    for key in &node.config.publish_keys {
        ok |= given.as_bytes().ct_eq(key.as_bytes()).unwrap_u8();
    }
    ok == 1
}

/// `POST /api/events`.
pub(crate) async fn post_events(State(node): State<Arc<Node>>, req: Request) -> Response {
    let resp = match post_events_inner(node, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    crate::metrics::publish_answer(resp.status().as_u16());
    resp
}

async fn post_events_inner(node: Arc<Node>, req: Request) -> Result<Response, ApiError> {
    // The request whole rather than a `HeaderMap` extractor, which would copy every header.
    let (parts, body) = req.into_parts();
    if !authorized(&node, &parts.headers) {
        return Err(ApiError::Unauthorized);
    }
    let per_event = node.config.limits.max_event_bytes;
    let limit = body_limit(&node);
    // A publisher's body has usually arrived with its head: read it without arming a timer,
    // and bound the wait only when it has not.
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limit));
    let read = match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(node.config.limits.body_timeout, read).await,
    };
    let bytes = match read {
        Err(_) => return Err(ApiError::body_timeout()),
        Ok(Err(e)) if over_limit(&e) => return Err(ApiError::body_too_large(per_event)),
        Ok(Err(_)) => return Err(ApiError::body_cut()),
        Ok(Ok(b)) => b,
    };
    let answer = publish_body(&node, &bytes).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response())
}

/// The largest publish body read: a full batch of the largest events, and some room.
pub(crate) fn body_limit(node: &Node) -> usize {
    node.config.limits.max_event_bytes * MAX_BATCH + 1024
}

/// Parses and publishes an authorized publish body; returns the JSON of the 202 answer. The
/// one road of `POST /api/events`, whichever HTTP layer read the request.
pub(crate) async fn publish_body(node: &Node, bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let (bodies, batch) = parse_bodies(bytes, node.config.limits.max_event_bytes)?;
    let accepted = node.publish(bodies).await?;
    // Serialized straight from the answers (no intermediate `Value`).
    Ok(if batch {
        #[derive(Serialize)]
        struct Results<'a> {
            results: &'a [Accepted],
        }
        serde_json::to_vec(&Results { results: &accepted })
    } else {
        serde_json::to_vec(&accepted[0])
    }
    .expect("answers serialize"))
}

/// The events of a publish body, and whether it was a batch (`{"events": [...]}`).
fn parse_bodies(bytes: &[u8], per_event: usize) -> Result<(Vec<PublishEvent>, bool), ApiError> {
    // The usual body, one event, parses straight into its type. Anything else (a batch, a
    // mistake) takes the general road below, which also words the errors.
    if bytes.len() <= per_event
        && let Ok(body) = serde_json::from_slice::<PublishEvent>(bytes)
    {
        return Ok((vec![body], false));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|_| ApiError::BadJson)?;
    let Value::Object(mut top) = value else {
        return Err(ApiError::BadBody("the body must be a JSON object".into()));
    };
    if top.contains_key("events") {
        if top.len() != 1 {
            return Err(ApiError::BadBody("a batch body holds only `events`".into()));
        }
        let Some(Value::Array(items)) = top.remove("events") else {
            return Err(ApiError::BadBody("`events` must be an array".into()));
        };
        if items.len() > MAX_BATCH {
            return Err(PublishError::BatchTooLarge.into());
        }
        if items.is_empty() {
            return Err(ApiError::BadBody("`events` is empty".into()));
        }
        let mut bodies = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if serde_json::to_vec(&item).map_or(0, |v| v.len()) > per_event {
                return Err(ApiError::TooLarge(format!(
                    "event {i} is over {per_event} bytes"
                )));
            }
            bodies.push(parse_body(item, Some(i))?);
        }
        Ok((bodies, true))
    } else {
        if bytes.len() > per_event {
            return Err(ApiError::TooLarge(format!(
                "an event is at most {per_event} bytes"
            )));
        }
        Ok((vec![parse_body(Value::Object(top), None)?], false))
    }
}

/// Whether a body read failed because the body passed the size limit.
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn parse_body(v: Value, index: Option<usize>) -> Result<PublishEvent, ApiError> {
    serde_json::from_value(v).map_err(|e| {
        let at = index.map(|i| format!("event {i}: ")).unwrap_or_default();
        // serde's message names fields, never values of ours worth hiding; cut its position.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        ApiError::BadBody(format!("{at}{msg}"))
    })
}
