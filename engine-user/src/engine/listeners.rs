//! Listeners as the queue threads see them: by local address, each with where its accepted
//! connections go (a channel to any runtime, or a handler run on the connection's own queue
//! thread, for its life or in turns) and its keepalive.

use std::{
    collections::HashMap,
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, RwLock},
};

use crate::api::{Keepalive, Listener, Stream};

/// Serves one accepted connection on the queue thread that owns it. Called on that thread; the
/// future it returns runs there too, so it need not be `Send`.
pub type LocalHandler = Arc<dyn Fn(Stream) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// Serves one turn of a connection on its queue thread: called at accept and whenever input
/// waits and no turn runs; the future returns the stream to wait for more input, or `None` when
/// the connection is done (the stream dropped: closed as usual).
pub type TurnHandler = Arc<dyn Fn(Stream) -> Pin<Box<dyn Future<Output = Option<Stream>>>> + Send + Sync>;

/// Where a listener's accepted connections go.
pub enum Accept {
    /// To a [`Listener`], whose `accept()` any runtime on any thread may await.
    Channel(tokio::sync::mpsc::UnboundedSender<Stream>),
    /// To a handler run on the queue thread of the connection's RX queue.
    Local(LocalHandler),
    /// To a turn handler run on the queue thread of the connection's RX queue, once per burst
    /// of input: between turns the connection holds no task.
    Turns(TurnHandler),
}

/// One listener.
pub struct ListenerEntry {
    pub accept: Accept,
    pub keepalive: Keepalive,
}

/// Listeners by local address; an unspecified IP matches every address on that port.
#[derive(Default)]
pub struct Listeners {
    by_addr: RwLock<HashMap<SocketAddr, Arc<ListenerEntry>>>,
}

impl Listeners {
    pub fn add(&self, addr: SocketAddr, keepalive: Keepalive) -> Listener {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.insert(addr, ListenerEntry { accept: Accept::Channel(tx), keepalive });
        Listener::new(addr, rx)
    }

    pub fn add_local(&self, addr: SocketAddr, keepalive: Keepalive, handler: LocalHandler) {
        self.insert(addr, ListenerEntry { accept: Accept::Local(handler), keepalive });
    }

    pub fn add_turns(&self, addr: SocketAddr, keepalive: Keepalive, handler: TurnHandler) {
        self.insert(addr, ListenerEntry { accept: Accept::Turns(handler), keepalive });
    }

    fn insert(&self, addr: SocketAddr, entry: ListenerEntry) {
        self.by_addr.write().unwrap_or_else(|e| e.into_inner()).insert(addr, Arc::new(entry));
    }

    pub fn find(&self, local: SocketAddr) -> Option<Arc<ListenerEntry>> {
        let map = self.by_addr.read().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&local) {
            return Some(e.clone());
        }
        let wildcard = match local {
            SocketAddr::V4(a) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), a.port()),
            SocketAddr::V6(a) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), a.port()),
        };
        map.get(&wildcard).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_address_wins_over_the_wildcard_of_its_port() {
        let l = Listeners::default();
        let _any = l.add("0.0.0.0:80".parse().unwrap(), Keepalive::default());
        let _v6 = l.add("[::]:80".parse().unwrap(), Keepalive::default());
        let exact_keepalive = Keepalive { idle: std::time::Duration::from_secs(7), ..Keepalive::default() };
        let _one = l.add("198.18.0.1:80".parse().unwrap(), exact_keepalive);
        let keepalive = |a: &str| l.find(a.parse().unwrap()).map(|e| e.keepalive);
        assert_eq!(keepalive("198.18.0.1:80"), Some(exact_keepalive));
        assert_eq!(keepalive("198.18.0.2:80"), Some(Keepalive::default()));
        assert_eq!(keepalive("[fd00:5eed::1]:80"), Some(Keepalive::default()));
        assert_eq!(keepalive("198.18.0.1:81"), None);
    }
}
