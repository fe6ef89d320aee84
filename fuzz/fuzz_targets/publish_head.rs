//! The publishers' lean HTTP/1.1 path (`publisher.rs`) on arbitrary bytes: never panics, and
//! answers itself only a request that is a publish to exactly `/api/events` over HTTP/1.1 with a
//! whole head, one `Content-Length`, no `Transfer-Encoding`, and the key: everything else is
//! hyper's, so no framing of its own can disagree with hyper's (request smuggling).

#![no_main]

use cortex_realtime::internals::read_head;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"Bearer k";

fuzz_target!(|data: &[u8]| {
    let Some((head, body, _close)) = read_head(data, KEY) else {
        return;
    };
    assert!(head <= data.len(), "head {head} of {}", data.len());
    // Empty lines before the request line are skipped (RFC 9112 2.2), by httparse for hyper too.
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    assert!(data[..start].iter().all(|&b| b == b'\n' || b == b'\r'));
    assert!(data[start..].starts_with(b"POST /api/events HTTP/1.1"));
    let bytes = &data[start..head];
    // httparse ends a line at "\r\n" or "\n", and the head at an empty line of either kind.
    assert!(bytes.ends_with(b"\n\n") || bytes.ends_with(b"\n\r\n"));
    let lines: Vec<Vec<u8>> = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_ascii_lowercase())
        .collect();
    let named = |name: &[u8]| {
        lines
            .iter()
            .skip(1)
            .filter(|l| l.starts_with(name) && l[name.len()..].trim_ascii_start().starts_with(b":"))
            .count()
    };
    assert_eq!(
        named(b"content-length"),
        1,
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    assert_eq!(named(b"transfer-encoding"), 0);
    assert_eq!(named(b"expect"), 0);
    assert!(body <= 999_999_999_999_999_999);
});
