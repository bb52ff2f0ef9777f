//! Measurements over a [`super::PathBed`] with the kernel's TCP as the client: round-trip
//! times, transfers to discard, from http and through echo. Shared by the calibration test,
//! the wan suite and `cargo xtask bench --only wan`; each returns what it saw or why it
//! failed, and never asserts.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use crate::{Netns, digest, pattern};

/// Round trips of one byte through an echo server on one connection (TCP_NODELAY both ways:
/// the kernel server sets it, as does this client), after a warm-up of `n / 10`.
pub fn rtts(client: &Netns, addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    client.run(move || -> anyhow::Result<Vec<Duration>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::with_capacity(n);
        let mut b = [0u8; 1];
        for i in 0..n + n / 10 {
            let t = Instant::now();
            s.write_all(b"p")?;
            s.read_exact(&mut b)?;
            if i >= n / 10 {
                out.push(t.elapsed());
            }
        }
        Ok(out)
    })?
}

/// Connect times (SYN to SYN-ACK, one round trip) of `n` fresh connections.
pub fn connect_times(client: &Netns, addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    client.run(move || -> anyhow::Result<Vec<Duration>> {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                let d = t.elapsed();
                drop(s);
                Ok(d)
            })
            .collect()
    })?
}

/// A deadline for transfers that should never take this long: what the caller gives, or the
/// default of 10 minutes.
fn io_timeout(t: Option<Duration>) -> Duration {
    t.unwrap_or(Duration::from_secs(600))
}

/// Send `bytes` to a discard server and wait for its FIN (it closes after reading our FIN:
/// every byte arrived). Returns the time from connect to that FIN.
pub fn upload(client: &Netns, addr: SocketAddr, bytes: usize, timeout: Option<Duration>) -> anyhow::Result<Duration> {
    client.run(move || -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(io_timeout(timeout)))?;
        s.set_write_timeout(Some(io_timeout(timeout)))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            s.write_all(&chunk[..n]).context("writing")?;
            sent += n;
        }
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).context("waiting for the server's FIN")?;
        Ok(start.elapsed())
    })?
}

/// `GET /bytes/N` from an http server, `Connection: close`, read to the end: the time from the
/// connect call (handshake included) to the last byte, after checking the body's length.
pub fn download(client: &Netns, addr: SocketAddr, bytes: usize, timeout: Option<Duration>) -> anyhow::Result<Duration> {
    client.run(move || -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(io_timeout(timeout)))?;
        s.write_all(format!("GET /bytes/{bytes} HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut got = Vec::with_capacity(bytes + 256);
        s.read_to_end(&mut got).context("reading the response")?;
        let elapsed = start.elapsed();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
        ensure!(got.starts_with(b"HTTP/1.1 200"), "response: {:?}", String::from_utf8_lossy(&got[..head_end]));
        ensure!(got.len() - head_end == bytes, "body of {} bytes, asked for {bytes}", got.len() - head_end);
        Ok(elapsed)
    })?
}

/// `bytes` through an echo server (written from one thread, read back on another), checked
/// byte for byte by hash. Returns the time from connect to the last byte back.
pub fn echo(client: &Netns, addr: SocketAddr, bytes: usize, seed: u64, timeout: Option<Duration>) -> anyhow::Result<Duration> {
    client.run(move || -> anyhow::Result<Duration> {
        let data = pattern(bytes, seed);
        let want = digest(&data);
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(io_timeout(timeout)))?;
        s.set_write_timeout(Some(io_timeout(timeout)))?;
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&data)?;
            w.shutdown(Shutdown::Write)
        });
        let mut got = Vec::with_capacity(bytes);
        let read = s.read_to_end(&mut got);
        let elapsed = start.elapsed();
        if read.is_err() {
            // The socket's own view while it still exists (this thread is in the client's
            // namespace, and so is what it runs): what it last received, its timers, windows.
            let local = s.local_addr()?;
            let ss = std::process::Command::new("ss")
                .args(["-tinoem", "src", &local.to_string()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = writer.join();
            // Left open (the namespace's teardown closes it): a caller may still look at both
            // ends of the stalled connection.
            std::mem::forget(s);
            return read.map(|_| elapsed).with_context(|| format!("reading the echo after {} of {bytes} bytes; the socket: {ss}", got.len()));
        }
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))?.context("writing")?;
        read.context("reading the echo")?;
        ensure!(got.len() == bytes, "echo returned {} of {bytes} bytes", got.len());
        ensure!(digest(&got) == want, "the echo's bytes differ from those sent");
        Ok(elapsed)
    })?
}

/// What a [`timed_sink`] saw: after each read that drained the socket, the time since accept
/// and the bytes so far.
pub type Marks = Vec<(Duration, u64)>;

/// A receiver on `addr` in `ns` that accepts one connection (within 30 s), reads it to its end
/// and closes: the receiving side of a transfer timed at the receiver.
pub fn timed_sink(ns: &Netns, addr: SocketAddr) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Marks>>> {
    let listener = ns.run(move || TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || -> anyhow::Result<Marks> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("no connection to the timed sink"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let start = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let (mut total, mut marks) = (0u64, Vec::new());
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                if marks.last().is_none_or(|&(_, b)| b != total) {
                    marks.push((start.elapsed(), total));
                }
                return Ok(marks);
            }
            total += n as u64;
            // Marked only when the read took all there was: after a stall of this thread
            // (a loaded machine) the socket holds a backlog that arrived before, and a mark
            // at its first chunk would count the rest as arriving after (seen: 1.7% over the
            // bottleneck's rate in a window of 3.6 s).
            if n < buf.len() {
                marks.push((start.elapsed(), total));
            }
        }
    }))
}

/// Goodput in Mbit/s at the receiver from `from` after accept to the last byte (past slow
/// start, for a rate measurement); None when the transfer ended before `from`.
pub fn goodput_after(marks: &Marks, from: Duration) -> Option<f64> {
    let &(t0, b0) = marks.iter().find(|(t, _)| *t >= from)?;
    let &(t1, b1) = marks.last()?;
    (t1 > t0).then(|| (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e6)
}

/// The `q` quantile (0..=1) of `v` (nearest rank).
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}
