//! What the http proxy changes in the messages it forwards: hop-by-hop fields out (RFC 9110
//! 7.6.1), `Forwarded` (RFC 7239) and `X-Forwarded-For` in, and the response head written back
//! to the client with the framing this hop uses. Heads are read with httparse and written as
//! bytes, field by field, with no map of fields in between.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use http::StatusCode;

use super::super::http::list_items;

/// Fields that describe one connection, not the message (RFC 9110 7.6.1), plus the obsolete
/// Proxy-Connection and Keep-Alive that clients still send.
const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer"];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A byte of a request target that any URI parser reads the same way: RFC 3986's unreserved
/// and sub-delims characters, and ":", "@", "/", "?", "%". (A fragment, a quote, a space or a
/// non-ASCII byte is not one: such a target is parsed as a URI before it goes on.)
pub fn is_plain_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A node of a Forwarded element (RFC 7239 6): an IPv4 address bare, with a port or an IPv6
/// address as a quoted string (":" and "[" are not token characters).
fn node(out: &mut Vec<u8>, addr: SocketAddr) {
    out.push(b'"');
    match addr {
        SocketAddr::V4(a) => ipv4(out, *a.ip()),
        SocketAddr::V6(a) => {
            // Written through fmt: rare enough here not to matter.
            let _ = write!(out, "[{}]", a.ip());
        }
    }
    out.push(b':');
    decimal(out, u64::from(addr.port()));
    out.push(b'"');
}

/// An IPv4 address in dotted decimal, as `Ipv4Addr`'s Display writes it, without fmt's
/// machinery (this runs for every proxied request).
fn ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        decimal(out, u64::from(octet));
    }
}

/// RFC 9110 5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The values of a list-valued field the client sent, in order (RFC 9110 5.3: several fields
/// of one name are one list).
#[derive(Default)]
pub struct ListField<'a>(Vec<&'a [u8]>);

impl<'a> ListField<'a> {
    pub fn push(&mut self, value: &'a [u8]) {
        self.0.push(value);
    }

    /// `name: ` and the client's values, each followed by ", ", for one more to follow.
    fn open(&self, out: &mut Vec<u8>, name: &[u8]) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        for v in &self.0 {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }

    /// The client's list as one field, nothing added (nothing at all for an empty list).
    pub fn write(&self, out: &mut Vec<u8>, name: &[u8]) {
        if !self.0.is_empty() {
            self.open(out, name);
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Add this hop to `Forwarded` (RFC 7239 4: a proxy appends its element to the list, so the
/// backend sees every hop) and to `X-Forwarded-For` (the de facto form: addresses only), each
/// written as one field after what the client sent in it, with no fmt for IPv4 addresses (this
/// runs for every proxied request). `host` is the Host the backend gets.
pub fn write_forwarded(
    out: &mut Vec<u8>,
    forwarded: &ListField<'_>,
    forwarded_for: &ListField<'_>,
    client: SocketAddr,
    server: SocketAddr,
    host: &[u8],
) {
    forwarded.open(out, b"forwarded");
    out.extend_from_slice(b"for=");
    node(out, client);
    out.extend_from_slice(b";by=");
    node(out, server);
    // RFC 7239 5.3: the Host the client asked for, quoted unless it is a token (a port's ":" is
    // not); a value with a quote or backslash in it, or not text, is not a host: left out.
    if let Ok(host) = std::str::from_utf8(host) {
        if is_token(host) {
            out.extend_from_slice(b";host=");
            out.extend_from_slice(host.as_bytes());
        } else if !host.contains(['"', '\\']) {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(host.as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b";proto=http\r\n");
    forwarded_for.open(out, b"x-forwarded-for");
    match client.ip() {
        IpAddr::V4(ip) => ipv4(out, ip),
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What the response must fit on the client's side: its request's method, its version, whether
/// it asked to close, whether it asked to switch protocols.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub head_request: bool,
    pub http10: bool,
    pub close: bool,
    pub upgrade: bool,
}

/// How the backend delimits its response body (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyIn {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes: the connection carries nothing after it.
    UntilClose,
}

/// How the response body reaches the client on this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a HEAD request, 1xx, 204, 304: RFC 9112 6.3 item 1).
    None,
    /// Content-Length bytes, as the backend declared them.
    Length(u64),
    /// Transfer-Encoding: chunked (an HTTP/1.1 client, a body of unknown length).
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a body of unknown length).
    UntilClose,
}

/// A backend's response head, read and rewritten for the client.
#[derive(Debug)]
pub struct Answer {
    /// The head's length in the backend's bytes.
    pub len: usize,
    pub status: StatusCode,
    pub from: BodyIn,
    pub to: Framing,
    /// The head to write to the client: the status, the end-to-end fields, this hop's framing
    /// and connection fields.
    pub head: Vec<u8>,
    /// The client's connection ends after this response.
    pub close: bool,
    /// The backend keeps its connection open after this response (HTTP/1.1 without `close`,
    /// HTTP/1.0 with `keep-alive`, and a body that does not run to the close).
    pub reusable: bool,
}

/// What [`parse_response`] makes of the bytes a backend sent so far.
#[derive(Debug)]
pub enum Response {
    Partial,
    /// An interim response (1xx but 101) of this length: skipped, the final one follows.
    Interim(usize),
    Complete(Answer),
    /// Not a response this proxy can forward (malformed, an unparseable or conflicting length,
    /// a switch of protocols the client did not ask for): RFC 9112 6.3 item 5, a 502.
    Invalid,
}

/// Read a backend's response head from `buf` and write the client's (RFC 9112 6.3 for the
/// body's framing on both sides).
pub fn parse_response(buf: &[u8], client: Client) -> Response {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(_) => return Response::Invalid,
    };
    let (Some(code), Some(version)) = (res.code, res.version) else { return Response::Invalid };
    let Ok(status) = StatusCode::from_u16(code) else { return Response::Invalid };
    let switch = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switch {
        // RFC 9110 15.2: 100 Continue (the proxy answered the client's Expect itself) and 103
        // Early Hints are for this hop; the final response follows.
        return Response::Interim(len);
    }
    if switch && !client.upgrade {
        return Response::Invalid;
    }
    // RFC 9112 9.3: HTTP/1.1 stays open unless `close`; HTTP/1.0 only with `keep-alive`, and
    // `close` wins wherever it stands.
    let (mut close_token, mut keep_alive_token) = (false, false);
    // Fields the Connection field names are this hop's too (RFC 9110 7.6.1).
    let mut named: Vec<&[u8]> = Vec::new();
    let (mut te, mut chunked, mut length, mut lengths_differ) = (false, false, None::<u64>, false);
    let mut protocol: Option<&[u8]> = None;
    for f in res.headers.iter() {
        if f.name.eq_ignore_ascii_case("connection") {
            for token in list_items(f.value) {
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                named.push(token);
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.3 item 4: chunked only as the final coding frames the body.
            te = true;
            chunked = list_items(f.value).last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if f.name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 6.3 item 5: a list of one repeated value is that value; any other
            // disagreement or non-digit is an unrecoverable error.
            for v in list_items(f.value) {
                let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                match (n, length) {
                    (None, _) => lengths_differ = true,
                    (Some(n), Some(l)) if n != l => lengths_differ = true,
                    (Some(n), _) => length = Some(n),
                }
            }
        } else if f.name.eq_ignore_ascii_case("upgrade") {
            protocol = Some(f.value);
        }
    }
    let from = if client.head_request || status.is_informational() || code == 204 || code == 304 {
        BodyIn::None
    } else if te {
        // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        if version == 0 {
            return Response::Invalid;
        }
        // RFC 9112 6.3 item 3: Transfer-Encoding overrides Content-Length, which is dropped.
        if chunked { BodyIn::Chunked } else { BodyIn::UntilClose }
    } else if lengths_differ {
        return Response::Invalid;
    } else if let Some(n) = length {
        BodyIn::Length(n)
    } else {
        BodyIn::UntilClose
    };
    let to = match from {
        BodyIn::None => Framing::None,
        BodyIn::Length(n) => Framing::Length(n),
        BodyIn::Chunked | BodyIn::UntilClose if client.http10 => Framing::UntilClose,
        BodyIn::Chunked | BodyIn::UntilClose => Framing::Chunked,
    };
    let close = !switch && (client.close || to == Framing::UntilClose);
    let mut head = Vec::with_capacity(len + 64);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for f in res.headers.iter() {
        let name = f.name;
        // The framing is this hop's to write (below), but a HEAD or 304 answer's Content-Length
        // describes the body it does not carry: kept.
        let length = name.eq_ignore_ascii_case("content-length");
        if (length && from != BodyIn::None) || is_hop_by_hop(name) || is_named(&named, name) {
            continue;
        }
        field(&mut head, name, f.value);
    }
    match to {
        Framing::Length(n) => length_field(&mut head, n),
        Framing::Chunked => head.extend_from_slice(CHUNKED_FIELD),
        Framing::None | Framing::UntilClose => {}
    }
    if switch {
        // The switch itself: the two fields this hop keeps (RFC 9110 7.8).
        if let Some(p) = protocol {
            switch_fields(&mut head, p);
        }
    } else if close {
        head.extend_from_slice(b"connection: close\r\n");
    } else if client.http10 {
        // RFC 9112 9.3: an HTTP/1.0 client keeps the connection only if the answer says so.
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let backend_close = close_token || (version == 0 && !keep_alive_token);
    let reusable = !switch && !backend_close && from != BodyIn::UntilClose;
    Response::Complete(Answer { len, status, from, to, head, close, reusable })
}

/// Whether a field is one the Connection field names (RFC 9110 7.6.1): this hop's.
pub fn is_named(named: &[&[u8]], name: &str) -> bool {
    named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// `Transfer-Encoding: chunked`, this hop's framing for a body of unknown length.
pub const CHUNKED_FIELD: &[u8] = b"transfer-encoding: chunked\r\n";

/// The end of a chunked body (RFC 9112 7.1): the last chunk, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `Content-Length: n`, this hop's framing for a body of known length.
pub fn length_field(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// The two fields of a switch of protocols (RFC 9110 7.8), asked for or agreed to.
pub fn switch_fields(out: &mut Vec<u8>, protocol: &[u8]) {
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
    out.extend_from_slice(protocol);
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked body (RFC 9112 7.1): its size in hex, the data, CRLF. Nothing for
/// empty data, which would end the body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    digits(out, data.len() as u64, 16);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn decimal(out: &mut Vec<u8>, n: u64) {
    digits(out, n, 10);
}

/// `n` in base `radix` (at most 16), lower case, without fmt's machinery.
fn digits(out: &mut Vec<u8>, n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// One field line, its name in lower case (as HTTP/2 and hyper write names).
pub fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy makes itself (an error), closing the connection after it.
pub fn own_response(status: StatusCode) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!("{} {reason}\n", status.as_u16());
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_written_as_display_writes_them() {
        for addr in ["0.0.0.0:0", "255.255.255.255:65535", "10.0.100.9:80", "198.18.0.2:41000", "[::]:0", "[fd00:5eed::2]:5"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            node(&mut out, addr);
            let expected = match addr {
                SocketAddr::V4(a) => format!("\"{}:{}\"", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("\"[{}]:{}\"", a.ip(), a.port()),
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    const GET11: Client = Client { head_request: false, http10: false, close: false, upgrade: false };

    fn answer(response: &str, client: Client) -> Answer {
        match parse_response(response.as_bytes(), client) {
            Response::Complete(a) => {
                assert_eq!(a.len, response.find("\r\n\r\n").unwrap() + 4);
                a
            }
            other => panic!("{response:?}: {other:?}"),
        }
    }

    fn head(a: &Answer) -> &str {
        std::str::from_utf8(&a.head).unwrap()
    }

    #[test]
    fn the_response_framing_follows_rfc_9112_on_both_sides() {
        // A declared length goes on as it is, once, whatever the backend repeated.
        let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-Up: 1\r\n\r\nhello", GET11);
        assert_eq!((a.from, a.to, a.close, a.reusable), (BodyIn::Length(5), Framing::Length(5), false, true));
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 5\r\n\r\n");
        // Transfer-Encoding overrides Content-Length (item 3), which goes; HTTP/1.1 clients get
        // chunks, HTTP/1.0 clients the body to the close.
        let r = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let a = answer(r, GET11);
        assert_eq!((a.from, a.to, a.close), (BodyIn::Chunked, Framing::Chunked, false));
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let a = answer(r, Client { http10: true, ..GET11 });
        assert_eq!((a.to, a.close), (Framing::UntilClose, true));
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        // A final coding other than chunked, or no length at all: the body runs to the close,
        // and the connection carries nothing after it (item 4, item 7).
        for r in ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"] {
            let a = answer(r, GET11);
            assert_eq!((a.from, a.to, a.reusable), (BodyIn::UntilClose, Framing::Chunked, false), "{r}");
        }
        // No body: HEAD, 204, 304 (item 1); a HEAD answer keeps the length it describes.
        let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Client { head_request: true, ..GET11 });
        assert_eq!((a.from, a.to), (BodyIn::None, Framing::None));
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n");
        for code in [204, 304] {
            let a = answer(&format!("HTTP/1.1 {code} X\r\n\r\n"), GET11);
            assert_eq!((a.from, a.to, a.reusable), (BodyIn::None, Framing::None, true));
        }
        // Lengths that disagree or are no number, and chunked in HTTP/1.0: a 502 (item 5, 6.1).
        for r in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(matches!(parse_response(r.as_bytes(), GET11), Response::Invalid), "{r}");
        }
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", GET11), Response::Partial));
    }

    #[test]
    fn connection_fields_interim_responses_and_switches_are_this_hops() {
        // The backend's connection fields, and those it names, stay here (RFC 9110 7.6.1); its
        // close means the connection cannot be reused, HTTP/1.0 stays only with keep-alive.
        let a = answer("HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 0\r\n\r\n", GET11);
        assert!(!a.reusable && !a.close);
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!answer("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", GET11).reusable);
        assert!(answer("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", GET11).reusable);
        // An HTTP/1.0 client that may keep its connection is told so; one that asked to close,
        // that it closes.
        let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Client { http10: true, ..GET11 });
        assert_eq!(head(&a), "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n");
        let a = answer("HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n", Client { close: true, ..GET11 });
        assert_eq!(head(&a), "HTTP/1.1 599 \r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        // 100 and 103 are skipped by their length; the final answer follows.
        let r = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(parse_response(r, GET11), Response::Interim(n) if n == r.len() - 17));
        // A switch the client asked for keeps its two fields; one it did not ask for is a 502.
        let r = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\nX-A: 1\r\n\r\n";
        let a = answer(r, Client { upgrade: true, ..GET11 });
        assert_eq!(head(&a), "HTTP/1.1 101 Switching Protocols\r\nx-a: 1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n");
        assert!(matches!(parse_response(r.as_bytes(), GET11), Response::Invalid));
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for n in [0u64, 1, 15, 16, 255, 4096, 0x7fff_ffff, u64::MAX] {
            let (mut hex, mut dec) = (Vec::new(), Vec::new());
            digits(&mut hex, n, 16);
            digits(&mut dec, n, 10);
            assert_eq!((String::from_utf8(hex).unwrap(), String::from_utf8(dec).unwrap()), (format!("{n:x}"), n.to_string()));
        }
        for n in [1usize, 15, 16, 255, 4096, 0x1_0000] {
            let mut out = Vec::new();
            chunk(&mut out, &vec![b'x'; n]);
            assert_eq!(out, [format!("{n:x}\r\n").as_bytes(), &vec![b'x'; n], b"\r\n"].concat());
        }
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
    }

    /// Fields a generated response may carry: the framing and connection fields in the forms
    /// backends send (and some they should not), and end-to-end ones.
    const FIELDS: [(&str, &str); 14] = [
        ("Content-Length", "5"),
        ("content-length", "5, 5"),
        ("Content-Length", "7"),
        ("Content-Length", "x"),
        ("Transfer-Encoding", "chunked"),
        ("transfer-encoding", "gzip"),
        ("Transfer-Encoding", "gzip, chunked"),
        ("Connection", "close"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "echo"),
        ("Trailer", "X-T"),
        ("X-End", "kept"),
    ];

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_response(&data, GET11);
        }

        /// Whatever the backend's framing fields, the client's head frames the body one way
        /// only, as `to` says (two framings in one message are how responses get smuggled),
        /// carries no connection field of the backend's, and parses as the response it is.
        #[test]
        fn the_client_head_frames_the_body_one_way(
            version in 0u8..2,
            code in proptest::sample::select(vec![101u16, 200, 204, 304, 404, 500]),
            fields in proptest::collection::vec(0..FIELDS.len(), 0..6),
            head_request: bool,
            http10: bool,
            close: bool,
            upgrade: bool,
        ) {
            let mut r = format!("HTTP/1.{version} {code} X\r\n");
            for &f in &fields {
                r += &format!("{}: {}\r\n", FIELDS[f].0, FIELDS[f].1);
            }
            r += "\r\n";
            let client = Client { head_request, http10, close, upgrade };
            let Response::Complete(a) = parse_response(r.as_bytes(), client) else { return Ok(()) };
            let mut parsed = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut parsed);
            proptest::prop_assert_eq!(res.parse(&a.head), Ok(httparse::Status::Complete(a.head.len())));
            proptest::prop_assert_eq!(res.code, Some(code));
            let values = |name: &str| res.headers.iter().filter(|h| h.name == name).map(|h| h.value.to_vec()).collect::<Vec<_>>();
            let (lengths, codings, connection) = (values("content-length"), values("transfer-encoding"), values("connection"));
            match a.to {
                Framing::Length(n) => {
                    proptest::prop_assert_eq!(lengths, vec![n.to_string().into_bytes()]);
                    proptest::prop_assert!(codings.is_empty());
                }
                Framing::Chunked => {
                    proptest::prop_assert!(lengths.is_empty());
                    proptest::prop_assert_eq!(codings, vec![b"chunked".to_vec()]);
                }
                Framing::UntilClose => {
                    proptest::prop_assert!(lengths.is_empty() && codings.is_empty());
                    proptest::prop_assert_eq!(&connection, &vec![b"close".to_vec()]);
                }
                Framing::None => proptest::prop_assert!(codings.is_empty()),
            }
            for hop in ["keep-alive", "x-hop", "trailer", "proxy-connection", "te"] {
                proptest::prop_assert!(values(hop).is_empty() || (hop == "x-hop" && !r.contains("X-Hop\r\n")), "{} in {:?}", hop, String::from_utf8_lossy(&a.head));
            }
            proptest::prop_assert!(connection.len() <= 1);
            // Reused only where the backend keeps the connection and the body has an end.
            proptest::prop_assert!(!a.reusable || (a.from != BodyIn::UntilClose && !r.contains("Connection: close")));
        }
    }
}
