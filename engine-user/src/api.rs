//! The application side, shaped like `tokio::net`: [`Listener::accept`] yields [`Stream`]s
//! that implement `AsyncRead + AsyncWrite` (`shutdown()` is a half-close).
//!
//! A stream and its engine thread share a small state behind a mutex: bytes received (filled by
//! the engine from the TCP core, bounded), bytes to send (drained by the engine into the TCP
//! core's send buffer, bounded), close/shutdown requests and the final error. The app side wakes
//! the engine ([`EngineWaker`]) only when the engine cannot know there is work (data written
//! into an empty queue, room made in a full receive queue, shutdown, drop, the end of a turn); the
//! engine wakes the app side through the stored wakers.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(test)]
use std::time::Duration;

/// Bytes the engine moves ahead of the application in each direction, per connection.
pub const STREAM_RX_CAP: usize = 256 * 1024;
pub const STREAM_TX_CAP: usize = 256 * 1024;

pub use synx_tcp::Keepalive;

/// Wakes an engine thread: the connection handles with app-side work, and the engine's task
/// waker. The engine loop runs as a task on its thread's own tokio runtime, so waking it from an
/// app task on the same thread is a queue push, and from another thread tokio's own unpark.
#[derive(Default)]
pub struct EngineWaker {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    handles: Vec<u32>,
    /// Set while the engine sleeps: woken by the first handle queued.
    engine: Option<Waker>,
}

impl EngineWaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `handle` for the engine and wake it if it sleeps.
    pub fn notify(&self, handle: u32) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.handles.push(handle);
        let engine = pending.engine.take();
        drop(pending);
        if let Some(w) = engine {
            w.wake();
        }
    }

    /// Engine side: take the queued handles.
    pub fn drain(&self, out: &mut Vec<u32>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut pending.handles);
    }

    /// Engine side, before sleeping: ready if handles are queued, else wake `cx` on the next.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.handles.is_empty() {
            return Poll::Ready(());
        }
        pending.engine = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Why a stream ended badly, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The peer sent a RST.
    Reset,
    /// Keepalive or retransmission gave up on the peer.
    TimedOut,
    /// The engine shut down or aborted the connection.
    Aborted,
}

impl StreamError {
    fn to_io(self) -> io::Error {
        match self {
            StreamError::Reset => io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer"),
            StreamError::TimedOut => io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
            StreamError::Aborted => io::Error::new(io::ErrorKind::ConnectionAborted, "connection aborted"),
        }
    }
}

/// What a stream and its engine thread exchange, behind [`StreamShared`]'s lock.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Received bytes not yet read by the app.
    pub rx: VecDeque<u8>,
    /// The peer's FIN has been received and everything before it is in `rx`.
    pub rx_fin: bool,
    /// The engine has more received data than fit in `rx`: notify it after reading.
    pub rx_blocked: bool,
    /// Bytes the app wrote that the engine has not yet moved into the TCP core.
    pub tx: VecDeque<u8>,
    /// The app called shutdown(): FIN after `tx` drains.
    pub tx_shutdown: bool,
    /// The app dropped its stream.
    pub app_closed: bool,
    /// A turn handed the stream back ([`Stream::hand_back`]) to wait for more input: the engine
    /// keeps the connection open and calls the turn handler again when input arrives.
    pub turn_over: bool,
    /// A read returned end-of-stream to the app: no input will ever come again.
    pub eof_read: bool,
    /// Input the engine has put in `rx` so far (bytes, and 1 for the FIN).
    pub rx_added: u64,
    /// `rx_added` when the current turn began or the app last polled a read, whichever came
    /// later: input beyond it is news to the app.
    pub rx_seen: u64,
    /// A read gave the app data or the end of the stream since this turn began.
    pub turn_consumed: bool,
    /// The app asked for a reset.
    pub abort: bool,
    /// Per-stream keepalive override, applied by the engine.
    pub keepalive: Option<Keepalive>,
    pub error: Option<StreamError>,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    /// The engine hands its connections to another process: an app that holds its connection
    /// for life stops at a clean point and hands it over ([`Stream::hand_over`]), or carries on.
    pub handing_over: bool,
    pub handover_waker: Option<Waker>,
    /// The socket the app handed over with the connection (the proxy's backend).
    pub carried: Option<std::os::fd::OwnedFd>,
    /// A socket carried from another process with the connection, for the app to resume with.
    pub resumed: Option<std::os::fd::OwnedFd>,
}

/// What a [`Stream`] shares with the engine thread of its connection: the connection's
/// identity, the [`StreamState`] both sides change, and how to wake that thread.
pub struct StreamShared {
    pub handle: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    state: Mutex<StreamState>,
    engine: Arc<EngineWaker>,
}

impl StreamShared {
    pub fn new(handle: u32, local: SocketAddr, remote: SocketAddr, engine: Arc<EngineWaker>) -> Arc<Self> {
        Arc::new(Self { handle, local, remote, state: Mutex::new(StreamState::default()), engine })
    }

    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify_engine(&self) {
        self.engine.notify(self.handle);
    }
}

/// An accepted connection.
pub struct Stream {
    shared: Arc<StreamShared>,
}

impl Stream {
    pub fn new(shared: Arc<StreamShared>) -> Self {
        Self { shared }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.remote
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Change this connection's keepalive settings.
    pub fn set_keepalive(&self, keepalive: Keepalive) {
        self.shared.lock().keepalive = Some(keepalive);
        self.shared.notify_engine();
    }

    /// Reset the connection (RST) instead of closing it gracefully.
    pub fn abort(&mut self) {
        self.shared.lock().abort = true;
        self.shared.notify_engine();
    }
}

/// Resolves once the engine asks the app of a stream to hand its connection over (see
/// [`StreamState::handing_over`]); usable while the stream itself is split.
pub struct HandoverSignal(Arc<StreamShared>);

impl HandoverSignal {
    pub async fn requested(&self) {
        std::future::poll_fn(|cx| {
            let mut st = self.0.lock();
            if st.handing_over {
                return Poll::Ready(());
            }
            st.handover_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

impl Stream {
    /// What resolves once the engine asks this stream's app to hand the connection over.
    pub fn handover_signal(&self) -> HandoverSignal {
        HandoverSignal(self.shared.clone())
    }

    /// Give the connection up to another process (after [`HandoverSignal::requested`]), with
    /// `carried`, a socket the app holds for it (the proxy's backend), at a clean point: every
    /// byte the app read from either side written to the other. What it has not read yet goes
    /// along; the successor's app resumes with [`Stream::take_resumed`].
    pub fn hand_over(self, carried: std::os::fd::OwnedFd) {
        let mut st = self.shared.lock();
        st.carried = Some(carried);
        // Not a close: Drop only tells the engine.
        st.turn_over = true;
    }

    /// The socket a predecessor's app handed over with this connection, if any.
    pub fn take_resumed(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.shared.lock().resumed.take()
    }
}

impl crate::apps::Abort for Stream {
    fn abort(&mut self) {
        Stream::abort(self);
    }
}

impl Stream {
    /// End a turn without closing: the engine keeps the connection and calls the listener's
    /// turn handler again when input arrives (`Engine::serve_turns`). Unlike a drop, no FIN.
    pub(crate) fn hand_back(self) {
        self.shared.lock().turn_over = true;
        // Drop sees `turn_over` and only tells the engine.
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if !st.turn_over {
            st.app_closed = true;
        }
        drop(st);
        self.shared.notify_engine();
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        st.rx_seen = st.rx_added;
        if !st.rx.is_empty() {
            st.turn_consumed = true;
            let n = buf.remaining().min(st.rx.len());
            let (a, b) = st.rx.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            st.rx.drain(..n);
            let tell = std::mem::take(&mut st.rx_blocked);
            drop(st);
            if tell {
                shared.notify_engine();
            }
            return Poll::Ready(Ok(()));
        }
        if st.rx_fin {
            st.eof_read = true;
            st.turn_consumed = true;
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = st.error {
            return Poll::Ready(Err(e.to_io()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        if let Some(e) = st.error {
            return Poll::Ready(Err(e.to_io()));
        }
        if st.tx_shutdown {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")));
        }
        let room = STREAM_TX_CAP.saturating_sub(st.tx.len());
        if room == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        let was_empty = st.tx.is_empty();
        st.tx.extend(&data[..n]);
        drop(st);
        if was_empty {
            shared.notify_engine();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Like a TCP socket: written bytes are the engine's to send.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        if !st.tx_shutdown {
            st.tx_shutdown = true;
            drop(st);
            shared.notify_engine();
        }
        Poll::Ready(Ok(()))
    }
}

/// A listening address: yields accepted connections.
pub struct Listener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::UnboundedReceiver<Stream>,
}

impl Listener {
    pub fn new(local: SocketAddr, accepted: tokio::sync::mpsc::UnboundedReceiver<Stream>) -> Self {
        Self { local, accepted }
    }

    /// The next established connection, and the peer's address.
    pub async fn accept(&mut self) -> io::Result<(Stream, SocketAddr)> {
        match self.accepted.recv().await {
            Some(s) => {
                let peer = s.peer_addr();
                Ok((s, peer))
            }
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "synx engine stopped")),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn pair() -> (Stream, Arc<StreamShared>, Arc<EngineWaker>) {
        let waker = Arc::new(EngineWaker::new());
        let shared = StreamShared::new(
            7,
            "198.18.0.1:80".parse().unwrap(),
            "198.18.0.2:4000".parse().unwrap(),
            waker.clone(),
        );
        (Stream::new(shared.clone()), shared, waker)
    }

    #[tokio::test]
    async fn reads_what_the_engine_delivers_then_eof() {
        let (mut s, shared, waker) = pair();
        let reader = tokio::spawn(async move {
            let mut v = Vec::new();
            s.read_to_end(&mut v).await.map(|_| v)
        });
        tokio::task::yield_now().await;
        {
            let mut st = shared.lock();
            st.rx.extend(b"hello ");
            st.rx.extend(b"world");
            st.rx_fin = true;
            st.rx_blocked = true;
            if let Some(w) = st.read_waker.take() {
                w.wake();
            }
        }
        assert_eq!(reader.await.unwrap().unwrap(), b"hello world");
        // Reading from a blocked queue told the engine (then the drop did too).
        let mut handles = Vec::new();
        waker.drain(&mut handles);
        assert!(handles.contains(&7));
        assert!(shared.lock().app_closed);
    }

    #[tokio::test]
    async fn writes_queue_for_the_engine_and_block_when_full() {
        let (mut s, shared, waker) = pair();
        s.write_all(b"abc").await.unwrap();
        let mut handles = Vec::new();
        waker.drain(&mut handles);
        assert_eq!(handles, vec![7]);
        assert_eq!(shared.lock().tx.iter().copied().collect::<Vec<_>>(), b"abc");
        // Fill to the cap: the next write waits until the engine drains.
        let big = vec![1u8; STREAM_TX_CAP];
        let writer = tokio::spawn(async move {
            s.write_all(&big).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(shared.lock().tx.len(), STREAM_TX_CAP);
        {
            let mut st = shared.lock();
            st.tx.clear();
            st.write_waker.take().unwrap().wake();
        }
        let s = writer.await.unwrap();
        assert!(shared.lock().tx_shutdown);
        drop(s);
    }

    #[test]
    fn the_engine_sleeps_until_the_first_handle_is_queued() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let engine = EngineWaker::new();
        assert!(engine.poll_notified(&mut cx).is_pending());
        engine.notify(3);
        engine.notify(4);
        // One wakeup for the first handle; the second finds the engine already woken.
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(engine.poll_notified(&mut cx).is_ready());
        let mut handles = Vec::new();
        engine.drain(&mut handles);
        assert_eq!(handles, vec![3, 4]);
        // Not sleeping (no waker registered): queued, nobody woken.
        engine.notify(5);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(engine.poll_notified(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn handing_back_ends_the_turn_without_closing() {
        let (mut s, shared, waker) = pair();
        shared.lock().rx.extend(b"hi");
        let mut b = [0u8; 4];
        assert_eq!(s.read(&mut b).await.unwrap(), 2);
        s.hand_back();
        let st = shared.lock();
        assert!(st.turn_over);
        assert!(!st.app_closed, "a handed-back stream must not close the connection");
        assert!(!st.eof_read);
        drop(st);
        let mut handles = Vec::new();
        waker.drain(&mut handles);
        assert_eq!(handles, vec![7], "the engine hears of the turn's end");
        // Only the engine's reference is left.
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[tokio::test]
    async fn reads_record_what_the_app_has_seen_and_taken() {
        let (mut s, shared, _w) = pair();
        shared.lock().rx_added = 3;
        let mut b = [0u8; 4];
        // Nothing there yet: a pending read has seen all input so far and taken none.
        let pending = futures_poll_once(&mut s, &mut b);
        assert!(pending.is_pending());
        let seen = |shared: &Arc<StreamShared>| {
            let st = shared.lock();
            (st.rx_seen, st.turn_consumed)
        };
        assert_eq!(seen(&shared), (3, false));
        {
            let mut st = shared.lock();
            st.rx.extend(b"abc");
            st.rx_added += 3;
        }
        assert_eq!(s.read(&mut b).await.unwrap(), 3);
        assert_eq!(seen(&shared), (6, true));
    }

    /// Poll one read once with a no-op waker.
    fn futures_poll_once(s: &mut Stream, b: &mut [u8]) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut rb = ReadBuf::new(b);
        Pin::new(s).poll_read(&mut cx, &mut rb)
    }

    #[tokio::test]
    async fn reading_the_end_of_stream_is_remembered() {
        let (mut s, shared, _w) = pair();
        shared.lock().rx.extend(b"x");
        shared.lock().rx_fin = true;
        let mut b = [0u8; 4];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        assert!(!shared.lock().eof_read, "data before the FIN is not the end yet");
        assert_eq!(s.read(&mut b).await.unwrap(), 0);
        assert!(shared.lock().eof_read);
    }

    #[tokio::test]
    async fn errors_surface_as_io_errors() {
        let (mut s, shared, _w) = pair();
        shared.lock().error = Some(StreamError::TimedOut);
        let mut b = [0u8; 4];
        assert_eq!(s.read(&mut b).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(s.write(b"x").await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
