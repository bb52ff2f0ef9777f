//! HTTP at a constant offered rate (what wrk2 does; wrk2 is not packaged here). Each of N
//! keep-alive connections has its own schedule, one request every N/rate seconds, phases
//! staggered over the connections. A request is sent at its scheduled time if the connection is
//! free, else as soon as the response before it arrives; its latency runs from the *scheduled*
//! time, so a server that stalls is charged for every request it delayed, not only the one it
//! sat on (coordinated omission). The wake-ups come from a timerfd with 1 ns slack, so the
//! generator itself sends within microseconds of the schedule; the delay from schedule to
//! send (waiting for the connection included) is reported too.

use std::{
    collections::VecDeque,
    io::{ErrorKind, Read as _, Write as _},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};
use mio::{Events, Interest, Poll, Token, net::TcpStream, unix::SourceFd};

use crate::latency::{Failures, Latencies, io_reason};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

pub struct RateOptions {
    pub addr: SocketAddr,
    pub conns: usize,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the timerfd runs on).
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Timer(OwnedFd);

impl Timer {
    fn new() -> anyhow::Result<Self> {
        // SAFETY: plain timerfd_create; the fd is owned below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            bail!("timerfd_create: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fire at `at_ns` on CLOCK_MONOTONIC (at once if that has passed).
    fn arm(&self, at_ns: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: (at_ns / 1_000_000_000) as i64, tv_nsec: (at_ns % 1_000_000_000).max(1) as i64 },
        };
        // SAFETY: valid fd and itimerspec.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    }

    fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reading 8 bytes into a buffer of 8.
        unsafe { libc::read(self.0.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
    }
}

/// One connection's schedule in nanoseconds of CLOCK_MONOTONIC: pure bookkeeping, so its
/// accounting is tested in virtual time.
#[derive(Debug, Clone)]
struct Schedule {
    /// Scheduled times of requests issued but not answered; the front one is on the wire when
    /// `on_wire` is set.
    queue: VecDeque<u64>,
    on_wire: bool,
    sent_at: u64,
    next_due: u64,
    interval: u64,
}

impl Schedule {
    fn new(first_due: u64, interval: u64) -> Self {
        Self { queue: VecDeque::new(), on_wire: false, sent_at: 0, next_due: first_due, interval }
    }

    /// Issue every request due by `now` (none at or after `end`); returns the scheduled times.
    fn issue_due(&mut self, now: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        std::iter::from_fn(move || {
            (self.next_due <= now && self.next_due < end).then(|| {
                let due = self.next_due;
                self.queue.push_back(due);
                self.next_due += self.interval;
                due
            })
        })
    }

    /// The request to put on the wire now, if the connection is free and one waits: its
    /// scheduled time.
    fn send(&mut self, now: u64) -> Option<u64> {
        if self.on_wire {
            return None;
        }
        let due = *self.queue.front()?;
        self.on_wire = true;
        self.sent_at = now;
        Some(due)
    }

    /// The request on the wire was answered at `now`: (its scheduled time, when it was sent).
    fn answered(&mut self) -> Option<(u64, u64)> {
        if !self.on_wire {
            return None;
        }
        self.on_wire = false;
        Some((self.queue.pop_front()?, self.sent_at))
    }
}

struct Conn {
    stream: TcpStream,
    schedule: Schedule,
    response: Vec<u8>,
}

/// One complete response at the start of `buf`: (its length, whether its status is 2xx), or
/// None while it is incomplete; Err for bytes that are no HTTP response.
fn parse_response(buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .ok_or("response without Content-Length")?;
            let ok = resp.code.is_some_and(|c| (200..300).contains(&c));
            Ok((buf.len() >= head + len).then_some((head + len, ok)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("response: {e}")),
    }
}

pub fn http_rate(o: &RateOptions) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(o.conns > 0 && o.rate > 0.0, "conns and rate must be positive");
    // SAFETY: prctl with an integer argument. 1 ns of timer slack: wake-ups on time.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let mut poll = Poll::new()?;
    let timer = Timer::new()?;
    let timer_token = Token(usize::MAX);
    poll.registry().register(&mut SourceFd(&timer.0.as_raw_fd()), timer_token, Interest::READABLE)?;
    let interval = (o.conns as f64 / o.rate * 1e9) as u64;
    anyhow::ensure!(interval > 0, "rate too high for {} connections", o.conns);
    let mut conns = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let s = std::net::TcpStream::connect_timeout(&o.addr, Duration::from_secs(3)).with_context(|| format!("connection {i}"))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(Conn { stream, schedule: Schedule::new(0, interval), response: Vec::with_capacity(512) });
    }
    let start = now_ns() + 1_000_000;
    for (i, c) in conns.iter_mut().enumerate() {
        c.schedule.next_due = start + interval * i as u64 / o.conns as u64;
    }
    let record_from = start + o.warmup.as_nanos() as u64;
    let end = record_from + o.duration.as_nanos() as u64;
    // After the last scheduled request, answers may take this long; those still missing then
    // enter the latency with the delay they have reached.
    let drain_until = end + 2_000_000_000;
    let (mut latency, mut service, mut lateness) = (Latencies::default(), Latencies::default(), Latencies::default());
    let mut failures = Failures::default();
    let (mut scheduled, mut completed, mut non_2xx) = (0u64, 0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    // Put the next waiting request on the wire, if the connection is free; false if it broke.
    let send = |c: &mut Conn, now: u64, lateness: &mut Latencies, failures: &mut Failures| -> bool {
        let Some(due) = c.schedule.send(now) else { return true };
        if due >= record_from {
            lateness.push(now.saturating_sub(due));
        }
        match c.stream.write(REQUEST) {
            Ok(n) if n == REQUEST.len() => true,
            Ok(_) => {
                failures.add("write: short");
                false
            }
            Err(e) => {
                failures.add(io_reason("write", &e));
                false
            }
        }
    };
    let mut dead = vec![false; o.conns];
    loop {
        let now = now_ns();
        if now >= drain_until || (now >= end && conns.iter().zip(&dead).all(|(c, d)| *d || c.schedule.queue.is_empty())) {
            break;
        }
        let mut earliest = u64::MAX;
        for (i, c) in conns.iter_mut().enumerate() {
            if dead[i] {
                continue;
            }
            scheduled += c.schedule.issue_due(now, end).filter(|&d| d >= record_from).count() as u64;
            if !send(c, now, &mut lateness, &mut failures) {
                dead[i] = true;
            }
            if c.schedule.next_due < end {
                earliest = earliest.min(c.schedule.next_due);
            }
        }
        timer.arm(if earliest == u64::MAX { drain_until.min(now + 50_000_000) } else { earliest });
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100)))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e.into());
        }
        for ev in events.iter() {
            if ev.token() == timer_token {
                timer.clear();
                continue;
            }
            let i = ev.token().0;
            if dead[i] {
                continue;
            }
            let c = &mut conns[i];
            let mut closed = None;
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = Some("read: the server closed the connection".to_string());
                        break;
                    }
                    Ok(n) => c.response.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        closed = Some(io_reason("read", &e));
                        break;
                    }
                }
            }
            let now = now_ns();
            loop {
                match parse_response(&c.response) {
                    Ok(Some((len, ok))) => {
                        c.response.drain(..len);
                        let Some((due, sent_at)) = c.schedule.answered() else {
                            closed = Some("response: more responses than requests".into());
                            break;
                        };
                        if due >= record_from {
                            completed += 1;
                            latency.push(now - due);
                            service.push(now - sent_at);
                            if !ok {
                                non_2xx += 1;
                            }
                        }
                        if !send(c, now, &mut lateness, &mut failures) {
                            closed = Some("connection lost".into());
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        closed = Some(e);
                        break;
                    }
                }
            }
            if let Some(reason) = closed {
                failures.add(reason);
                dead[i] = true;
            }
        }
    }
    // Requests still waiting when the run is over: on a live connection the server is late
    // with them, and they enter the latency at least as late as they are now (a lower bound);
    // on a lost connection they fail.
    let mut unanswered = 0u64;
    let end_now = now_ns();
    for (c, dead) in conns.iter().zip(&dead) {
        for &due in c.schedule.queue.iter().filter(|&&d| d >= record_from) {
            if *dead {
                failures.add("request: its connection was lost");
            } else {
                unanswered += 1;
                latency.push(end_now.saturating_sub(due));
            }
        }
    }
    let secs = o.duration.as_secs_f64();
    Ok(serde_json::json!({
        "offered_rate": o.rate,
        "conns": o.conns,
        "secs": secs,
        "scheduled": scheduled,
        "completed": completed,
        "achieved_rate": completed as f64 / secs,
        "non_2xx": non_2xx,
        "unanswered_at_end": unanswered,
        "failed": failures.total(),
        "failures": failures.to_json(),
        "latency_ms": latency.summary(),
        "service_time_ms": service.summary(),
        "send_delay_ms": lateness.summary(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_at_their_content_length() {
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let mut two = one.to_vec();
        two.extend_from_slice(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(parse_response(&two), Ok(Some((one.len(), true))));
        assert_eq!(parse_response(&two[one.len()..]), Ok(Some((two.len() - one.len(), false))));
        assert_eq!(parse_response(&one[..one.len() - 1]), Ok(None));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_stalled_server_is_charged_from_the_schedule() {
        // Virtual time in ms (as ns units): one request every 5, the first answered only at
        // 300, every later one the moment it is sent.
        let mut s = Schedule::new(0, 5);
        let (mut latency, mut service) = (Vec::new(), Vec::new());
        for now in 0..1000u64 {
            s.issue_due(now, 1000).for_each(drop);
            s.send(now);
            if s.on_wire && (now >= 300 || s.queue.front() != Some(&0)) {
                let (due, sent) = s.answered().unwrap();
                latency.push(now - due);
                service.push(now - sent);
                // The next waiting one goes out at once and is answered at once.
                while s.send(now).is_some() {
                    let (due, sent) = s.answered().unwrap();
                    latency.push(now - due);
                    service.push(now - sent);
                }
            }
        }
        assert_eq!(latency.len(), 200);
        // The 60 requests scheduled during the stall waited for it: 300, 295, ..., 5 ms.
        let mut stalled: Vec<u64> = latency.iter().copied().filter(|&l| l > 0).collect();
        stalled.sort_unstable();
        assert_eq!(stalled, (1..=60).map(|k| k * 5).collect::<Vec<_>>());
        // Timed from the send instead, only the first request would look slow.
        assert_eq!(service.iter().filter(|&&t| t > 0).count(), 1);
    }
}
