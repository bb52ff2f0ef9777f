//! The http proxy's reading of a backend's response head, and the head it writes for the
//! client, on any bytes a backend may send (a backend is trusted less than it looks: it may be
//! broken, or answer for something else):
//! - no panic; a complete head is no longer than the bytes, a prefix of it is `Partial`;
//! - the client's head parses whole, as a response with the backend's status, and frames the
//!   body one way only, the way `to` says (two framings in one response are how responses get
//!   smuggled to the client), with no connection field of the backend's;
//! - the backend connection is reused only after a body that has an end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synx::apps::http_proxy::{BodyIn, Client, Framing, Response, parse_response};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let client = Client { head_request: flags & 1 != 0, http10: flags & 2 != 0, close: flags & 4 != 0, upgrade: flags & 8 != 0 };
    let len = match parse_response(rest, client) {
        Response::Partial | Response::Invalid => return,
        Response::Interim(len) => {
            assert!(len <= rest.len());
            return;
        }
        Response::Complete(answer) => {
            assert!(answer.len <= rest.len());
            let mut fields = [httparse::EMPTY_HEADER; 128];
            let mut res = httparse::Response::new(&mut fields);
            let head = &answer.head;
            assert_eq!(res.parse(head), Ok(httparse::Status::Complete(head.len())), "{:?}", String::from_utf8_lossy(head));
            assert_eq!(res.code, Some(answer.status.as_u16()));
            let named = |name: &str| res.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
            let (lengths, codings) = (named("content-length"), named("transfer-encoding"));
            match answer.to {
                Framing::Length(_) => assert!(lengths == 1 && codings == 0),
                Framing::Chunked => assert!(lengths == 0 && codings == 1),
                Framing::UntilClose => assert!(lengths == 0 && codings == 0 && answer.close),
                Framing::None => assert_eq!(codings, 0),
            }
            for hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
                assert_eq!(named(hop), 0, "{hop} in {:?}", String::from_utf8_lossy(head));
            }
            assert!(named("connection") <= 1);
            assert!(!answer.reusable || answer.from != BodyIn::UntilClose);
            answer.len
        }
    };
    let k = flags as usize % len;
    assert!(matches!(parse_response(&rest[..k], client), Response::Partial), "{k} bytes of a {len}-byte head");
});
