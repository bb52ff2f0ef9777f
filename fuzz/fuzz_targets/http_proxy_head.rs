//! The http proxy's request heads as a client reaches them: no panic on any bytes, and what
//! it forwards is sound:
//! - no hop-by-hop field reaches the backend (RFC 9110 7.6.1), exactly one Host (RFC 9112
//!   3.2), no Expect once the proxy answers it, a target in origin form (or `*`);
//! - the framing it reads is the one the http app reads from the same bytes (two readings of
//!   one request are how requests get smuggled);
//! - a prefix of a complete head is Partial, never refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synx::apps::{Parsed, http_proxy::{HeadSummary, summarize_head}, parse_request};

const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer"];

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let HeadSummary::Complete { len, uri, headers, body, close, http10, expect_continue, upgrade, .. } = summarize_head(rest) else {
        return;
    };
    assert!(len <= rest.len());
    for (name, value) in &headers {
        assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name} forwarded");
        assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0), "{name}: {value:?}");
    }
    assert_eq!(headers.iter().filter(|(n, _)| n == "host").count(), 1, "{headers:?}");
    if expect_continue {
        assert!(!headers.iter().any(|(n, _)| n == "expect"));
    }
    assert!(uri.starts_with('/') || uri == "*", "forwarded target {uri:?}");
    assert!(!(upgrade && http10), "an HTTP/1.0 upgrade");
    if let Parsed::Complete { head_len, body: app_body, close: app_close } = parse_request(rest) {
        assert_eq!((head_len, app_body, app_close), (len, body, close), "the app and the proxy frame it differently");
    }
    let k = split as usize % len.max(1);
    assert!(matches!(summarize_head(&rest[..k]), HeadSummary::Partial), "{k} bytes of a {len}-byte head");
});
