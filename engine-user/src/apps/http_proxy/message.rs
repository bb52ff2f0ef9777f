//! What the http proxy changes in the messages it forwards: hop-by-hop headers out (RFC 9110
//! 7.6.1), `Forwarded` (RFC 7239) and `X-Forwarded-For` in, and the response head written back
//! to the client with the framing this hop uses.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use bytes::Bytes;
use hyper::{
    HeaderMap, StatusCode,
    header::{self, HeaderName, HeaderValue},
};

/// Fields that describe one connection, not the message (RFC 9110 7.6.1), plus the obsolete
/// Proxy-Connection and Keep-Alive that clients still send.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Remove the hop-by-hop fields, and the fields the Connection field names (RFC 9110 7.6.1).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// Whether a Connection field lists `token` (case-insensitive, RFC 9110 7.6.1).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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
    decimal(out, u32::from(addr.port()));
    out.push(b'"');
}

/// An IPv4 address in dotted decimal, as `Ipv4Addr`'s Display writes it, without fmt's
/// machinery (this runs for every proxied request).
fn ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        decimal(out, u32::from(octet));
    }
}

fn decimal(out: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// RFC 9110 5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Add this hop to `Forwarded` (RFC 7239 4: a proxy appends its element to the list, so the
/// backend sees every hop) and to `X-Forwarded-For` (the de facto form: addresses only). Each
/// value is built in one buffer that the header then keeps without a copy (Bytes adds a small
/// shared header for the buffer's spare capacity), with no fmt for IPv4 addresses.
pub fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, server: SocketAddr) {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let mut element = Vec::with_capacity(96 + host.map_or(0, str::len));
    element.extend_from_slice(b"for=");
    node(&mut element, client);
    element.extend_from_slice(b";by=");
    node(&mut element, server);
    if let Some(host) = host {
        // RFC 7239 5.3: the Host the client asked for, quoted unless it is a token (a port's
        // ":" is not); a value with a quote or backslash in it is not a host: left out.
        if is_token(host) {
            element.extend_from_slice(b";host=");
            element.extend_from_slice(host.as_bytes());
        } else if !host.contains(['"', '\\']) {
            element.extend_from_slice(b";host=\"");
            element.extend_from_slice(host.as_bytes());
            element.push(b'"');
        }
    }
    element.extend_from_slice(b";proto=http");
    append(headers, header::FORWARDED, element);
    let mut address = Vec::with_capacity(40);
    match client.ip() {
        IpAddr::V4(ip) => ipv4(&mut address, ip),
        IpAddr::V6(ip) => {
            let _ = write!(address, "{ip}");
        }
    }
    append(headers, HeaderName::from_static("x-forwarded-for"), address);
}

/// Append `value` to a list-valued field, joining what the client sent into one line.
fn append(headers: &mut HeaderMap, name: HeaderName, value: Vec<u8>) {
    let value = if headers.contains_key(&name) {
        let mut joined: Vec<&[u8]> = headers.get_all(&name).iter().map(HeaderValue::as_bytes).collect();
        joined.push(&value);
        joined.join(&b", "[..])
    } else {
        value
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(name, v);
    }
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

impl Framing {
    pub fn choose(status: StatusCode, head_request: bool, headers: &HeaderMap, client_http10: bool) -> Framing {
        if head_request || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Framing::None;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (length, client_http10) {
            (Some(n), _) => Framing::Length(n),
            (None, false) => Framing::Chunked,
            (None, true) => Framing::UntilClose,
        }
    }
}

/// The response head for the client: the backend's status and end-to-end fields, this hop's
/// framing, and `Connection: close` when the connection ends after it.
pub fn response_head(status: StatusCode, headers: &HeaderMap, framing: Framing, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if framing == Framing::Chunked && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("host", "example"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn forwarded_elements_follow_rfc_7239() {
        let mut h = map(&[("host", "example.com:8080")]);
        add_forwarded(&mut h, "198.18.0.2:41000".parse().unwrap(), "198.18.0.1:80".parse().unwrap());
        assert_eq!(h["forwarded"], "for=\"198.18.0.2:41000\";by=\"198.18.0.1:80\";host=\"example.com:8080\";proto=http");
        assert_eq!(h["x-forwarded-for"], "198.18.0.2");
        // A second hop appends to what the first wrote.
        let mut h = map(&[("forwarded", "for=192.0.2.43"), ("x-forwarded-for", "192.0.2.43"), ("host", "example")]);
        add_forwarded(&mut h, "[fd00:5eed::2]:5".parse().unwrap(), "[fd00:5eed::1]:80".parse().unwrap());
        assert_eq!(h["forwarded"], "for=192.0.2.43, for=\"[fd00:5eed::2]:5\";by=\"[fd00:5eed::1]:80\";host=example;proto=http");
        assert_eq!(h["x-forwarded-for"], "192.0.2.43, fd00:5eed::2");
        // A Host that could break out of the quoted string is left out.
        let mut h = map(&[("host", "a\"b")]);
        add_forwarded(&mut h, "198.18.0.2:1".parse().unwrap(), "198.18.0.1:80".parse().unwrap());
        assert!(!h["forwarded"].to_str().unwrap().contains("host="), "{:?}", h["forwarded"]);
    }

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

    #[test]
    fn framing_follows_the_status_the_method_and_the_client() {
        let len = map(&[("content-length", "5")]);
        let none = HeaderMap::new();
        assert_eq!(Framing::choose(StatusCode::OK, false, &len, false), Framing::Length(5));
        assert_eq!(Framing::choose(StatusCode::OK, true, &len, false), Framing::None);
        assert_eq!(Framing::choose(StatusCode::NO_CONTENT, false, &none, false), Framing::None);
        assert_eq!(Framing::choose(StatusCode::NOT_MODIFIED, false, &len, false), Framing::None);
        assert_eq!(Framing::choose(StatusCode::OK, false, &none, false), Framing::Chunked);
        assert_eq!(Framing::choose(StatusCode::OK, false, &none, true), Framing::UntilClose);
        let head = String::from_utf8(response_head(StatusCode::OK, &len, Framing::Chunked, true)).unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        let head = String::from_utf8(response_head(StatusCode::from_u16(599).unwrap(), &len, Framing::Length(5), false)).unwrap();
        assert_eq!(head, "HTTP/1.1 599 \r\ncontent-length: 5\r\n\r\n");
    }
}
