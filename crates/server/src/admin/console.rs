//! The console's files, compiled into the binary: `GET /` is `index.html`, `GET /console/<file>`
//! every other file of [`FILES`]. They hold no data (the page asks the admin API for it, with
//! the key the operator types), so they are served without the key, each with a strict
//! Content-Security-Policy and `nosniff`.
//!
//! To add or replace a file: put it in `crates/server/console/` and add its row to [`FILES`].

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The policy of every console answer: nothing but the listener's own files and API.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'";

/// (name, content type, bytes) of every console file. `index.html` is served at `/`; every
/// file at `/console/<name>`.
pub(crate) const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/console.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/chart.js"),
    ),
    (
        "tail.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/tail.js"),
    ),
    (
        "client/index.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/client/index.js"),
    ),
    (
        "client/client.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/client/client.js"),
    ),
    (
        "client/policy.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/client/policy.js"),
    ),
    (
        "client/token.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/client/token.js"),
    ),
    (
        "client/types.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/client/types.js"),
    ),
];

fn serve(name: &str) -> Response {
    let Some((_, ctype, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return crate::http::json_error(StatusCode::NOT_FOUND, "not_found", "no such console file");
    };
    let mut resp = (*bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `GET /console/<file>`.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_file_is_served_with_its_type_and_the_policy() {
        for (name, ctype, bytes) in FILES {
            let resp = file(Path((*name).to_owned())).await;
            assert_eq!(resp.status(), 200, "{name}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], *ctype);
            assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(!bytes.is_empty());
        }
        assert_eq!(file(Path("../Cargo.toml".into())).await.status(), 404);
        assert_eq!(
            index().await.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
