//! The TCP proxy: each connection spliced to a kernel-TCP backend, half-close and resets
//! propagated, and optionally the client's address announced first with the PROXY protocol
//! (HAProxy's "The PROXY protocol", versions 1 and 2), which nginx, HAProxy, Envoy and others
//! read with one setting (nginx: `listen ... proxy_protocol`).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{Abort, AppStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    pub backend: SocketAddr,
    /// Send a PROXY protocol header of this version before the client's bytes.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// The PROXY protocol's two forms: v1 a text line, v2 binary (shorter, and the form to prefer
/// when the backend reads both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// The v2 signature (spec 2.2): 12 bytes no v1 header and no HTTP request can start with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header announcing a TCP connection from `client` to `server`.
pub fn proxy_header(version: ProxyProtocol, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    // Both ends of one TCP connection share a family; should a caller mix them, both are
    // written as IPv6 (an IPv4 address as ::ffff:a.b.c.d), which the spec allows.
    let (src, dst) = match (client.ip(), server.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    };
    match version {
        // Spec 2.1: "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF.
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {src} {dst} {} {}\r\n", client.port(), server.port()).into_bytes()
        }
        // Spec 2.2: signature, version 2 | command PROXY (0x21), family | protocol (0x11 TCP over
        // IPv4, 0x21 TCP over IPv6), the length of what follows, then the addresses and ports
        // in network byte order.
        ProxyProtocol::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&to_v6(s).octets());
                    h.extend_from_slice(&to_v6(d).octets());
                }
            }
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&server.port().to_be_bytes());
            h
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Connect to the backend, announce the client if asked to, then splice until both sides close
/// (or, with a connection moved from another process, resume with the backend socket it
/// carried). Asked to hand the connection over while neither side has closed, stop at a clean
/// point and hand it over with the backend socket.
pub(super) async fn serve<S: AppStream>(options: ProxyOptions, mut stream: S) -> std::io::Result<()> {
    let backend = match stream.take_resumed() {
        Some(fd) => {
            let backend = std::net::TcpStream::from(fd);
            backend.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(backend)?
        }
        None => {
            let mut backend = tokio::net::TcpStream::connect(options.backend).await?;
            backend.set_nodelay(true)?;
            if let Some(version) = options.proxy_protocol {
                let (client, server) = stream
                    .addresses()
                    .ok_or_else(|| std::io::Error::other("the PROXY protocol needs the client's address"))?;
                // Before any of the client's bytes, in one write: the backend reads it as one header.
                backend.write_all(&proxy_header(version, client, server)).await?;
            }
            backend
        }
    };
    let Some(signal) = stream.handover_signal() else { return proxy(stream, backend).await };
    movable_proxy(stream, backend, signal).await
}

/// How one direction of a movable splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The source closed; the destination's write side is shut down.
    Eof,
    /// Stopped for a handover, everything read written.
    Stopped,
}

/// Copy `from` to `to` until the end of `from` (then shut `to` down), or, while `stoppable`,
/// until `signal` (between two chunks: what was read is written first).
async fn one_way<R, W>(from: &mut R, to: &mut W, signal: &crate::api::HandoverSignal, stoppable: bool) -> std::io::Result<Ended>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    // tokio::io::copy's size, which the proxy used before.
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            () = signal.requested(), if stoppable => return Ok(Ended::Stopped),
            // Cancel-safe on both kinds of stream: a read that does not complete takes nothing.
            r = from.read(&mut buf) => r?,
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(Ended::Eof);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// [`proxy`] for a connection that may move to another process: asked to, and with neither
/// side closed yet, both directions stop at a clean point and the connection is handed over
/// with the backend socket (its unread bytes stay in it). A connection already half closed
/// finishes here.
async fn movable_proxy<S: AppStream>(stream: S, backend: tokio::net::TcpStream, signal: crate::api::HandoverSignal) -> std::io::Result<()> {
    let (mut ar, mut aw) = tokio::io::split(stream);
    let (mut br, mut bw) = backend.into_split();
    let (mut a_done, mut b_done) = (None, None);
    let mut stoppable = true;
    let result = loop {
        let a_to_b = async {
            match a_done {
                Some(Ended::Eof) => Ok(Ended::Eof),
                _ => one_way(&mut ar, &mut bw, &signal, stoppable).await,
            }
        };
        let b_to_a = async {
            match b_done {
                Some(Ended::Eof) => Ok(Ended::Eof),
                _ => one_way(&mut br, &mut aw, &signal, stoppable).await,
            }
        };
        let (r1, r2) = tokio::join!(a_to_b, b_to_a);
        match (r1, r2) {
            (Ok(x), Ok(y)) => {
                (a_done, b_done) = (Some(x), Some(y));
                match (x, y) {
                    (Ended::Eof, Ended::Eof) => break Ok(()),
                    (Ended::Stopped, Ended::Stopped) => {
                        let stream = ar.unsplit(aw);
                        let backend = br.reunite(bw).map_err(std::io::Error::other)?.into_std()?;
                        stream.hand_over(backend.into());
                        return Ok(());
                    }
                    // Half closed: it cannot move (only established connections do); finish.
                    _ => stoppable = false,
                }
            }
            (r1, r2) => break r1.and(r2).map(drop),
        }
    };
    if result.is_err() {
        let mut a = ar.unsplit(aw);
        a.abort();
        if let Ok(mut b) = br.reunite(bw) {
            b.abort();
        }
    }
    result
}

/// Copy both directions until both are closed. A FIN in one direction becomes a shutdown of the
/// other side's write half; an error (a reset) on either side aborts the other.
pub async fn proxy<A, B>(a: A, b: B) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let a_to_b = async {
        let r = tokio::io::copy(&mut ar, &mut bw).await;
        if r.is_ok() {
            bw.shutdown().await?;
        }
        r
    };
    let b_to_a = async {
        let r = tokio::io::copy(&mut br, &mut aw).await;
        if r.is_ok() {
            aw.shutdown().await?;
        }
        r
    };
    let (r1, r2) = tokio::join!(a_to_b, b_to_a);
    if r1.is_err() || r2.is_err() {
        let mut a = ar.unsplit(aw);
        let mut b = br.unsplit(bw);
        a.abort();
        b.abort();
        return r1.and(r2).map(|_| ());
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn proxy_carries_both_directions_and_half_close() {
        let (mut client, front) = tokio::io::duplex(1024);
        let (back, mut backend) = tokio::io::duplex(1024);
        let task = tokio::spawn(proxy(front, back));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // client half-closes
        let mut at_backend = Vec::new();
        backend.read_to_end(&mut at_backend).await.unwrap(); // sees EOF: half-close propagated
        assert_eq!(at_backend, b"request");
        backend.write_all(b"response after half-close").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut at_client = Vec::new();
        client.read_to_end(&mut at_client).await.unwrap();
        assert_eq!(at_client, b"response after half-close");
        task.await.unwrap().unwrap();
    }

    #[test]
    fn v1_headers_are_the_specs_text_lines() {
        let h = proxy_header(ProxyProtocol::V1, "198.18.0.2:41000".parse().unwrap(), "198.18.0.1:80".parse().unwrap());
        assert_eq!(h, b"PROXY TCP4 198.18.0.2 198.18.0.1 41000 80\r\n");
        let h = proxy_header(ProxyProtocol::V1, "[fd00:5eed::2]:5".parse().unwrap(), "[fd00:5eed::1]:443".parse().unwrap());
        assert_eq!(h, b"PROXY TCP6 fd00:5eed::2 fd00:5eed::1 5 443\r\n");
        // The longest line the spec allows (107 bytes) holds the longest addresses.
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap();
        assert_eq!(proxy_header(ProxyProtocol::V1, long, long).len(), 104);
    }

    #[test]
    fn v2_headers_carry_addresses_and_ports_in_network_order() {
        let h = proxy_header(ProxyProtocol::V2, "198.18.0.2:41000".parse().unwrap(), "198.18.0.1:80".parse().unwrap());
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 18, 0, 2, 198, 18, 0, 1, 0xa0, 0x28, 0, 80]);
        assert_eq!(h, want);
        let h = proxy_header(ProxyProtocol::V2, "[fd00:5eed::2]:5".parse().unwrap(), "[fd00:5eed::1]:443".parse().unwrap());
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[16..18], &[0xfd, 0x00]);
        assert_eq!(h[31], 2);
        assert_eq!(h[47], 1);
        assert_eq!(&h[48..], &[0, 5, 1, 187]);
        // Mixed families: both as IPv6.
        let h = proxy_header(ProxyProtocol::V2, "198.18.0.2:1".parse().unwrap(), "[fd00::1]:2".parse().unwrap());
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[16..32], &"::ffff:198.18.0.2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    #[tokio::test]
    async fn the_header_goes_first_then_the_clients_bytes() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ProxyOptions { backend: backend.local_addr().unwrap(), proxy_protocol: Some(ProxyProtocol::V1) };
        let front_addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = front.accept().await.unwrap();
            serve(options, s).await
        });
        let mut client = tokio::net::TcpStream::connect(front_addr).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let (mut b, _) = backend.accept().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello", client_addr.port(), front_addr.port());
        assert_eq!(String::from_utf8(got).unwrap(), want);
        drop(b);
        task.await.unwrap().unwrap();
    }
}
