//! Whether the engine threads live: a thread that panics is caught at its top, said so (a log
//! line and `engine_queue_panics`), and its queue closed to new connections in XDP; the engine
//! then reports the death ([`Health::failed`]) so its owner can stop it.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Mutex,
};

use super::stats::{QueueStats, bump};
use crate::bpf::RxBacklog;

/// The engine threads' deaths, as the rest of the engine learns of them.
pub struct Health {
    /// What killed the first engine thread that died.
    failure: Mutex<Option<String>>,
    died: tokio::sync::Notify,
    /// Queues told to panic ([`Health::inject_panic`]).
    #[cfg(feature = "fault-injection")]
    inject: Vec<std::sync::atomic::AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            failure: Mutex::new(None),
            died: tokio::sync::Notify::new(),
            #[cfg(feature = "fault-injection")]
            inject: (0..engine_common::maps::MAX_QUEUES).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        }
    }

    /// Run the engine thread of `queue` (`run`), catching its panic: then XDP stops answering
    /// the queue's SYNs (`rx_backlog`), the death is counted in `stats`, logged, and recorded
    /// for [`Health::failed`]. The panic becomes the thread's error.
    pub fn watch<T>(
        &self,
        queue: u32,
        stats: &QueueStats,
        rx_backlog: &RxBacklog,
        run: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        // Unwind safety: nothing the thread owned is looked at again; its stats and the backlog
        // word are atomics.
        let payload = match catch_unwind(AssertUnwindSafe(run)) {
            Ok(result) => return result,
            Err(payload) => payload,
        };
        // First: until this store, XDP still answers SYNs for a queue nobody serves.
        rx_backlog.close_queue(queue);
        bump(&stats.queue_panics);
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let failure = format!("the engine thread of RX queue {queue} panicked: {what}");
        tracing::error!("{failure}; its connections are lost and XDP no longer answers SYNs on that queue");
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| failure.clone());
        self.died.notify_waiters();
        Err(anyhow::anyhow!(failure))
    }

    /// What killed the first engine thread that died, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resolves when an engine thread has died (at once if one already has).
    pub async fn failed(&self) -> String {
        loop {
            let died = self.died.notified();
            let mut died = std::pin::pin!(died);
            // Registered before looking, so a death between the look and the wait still wakes.
            died.as_mut().enable();
            if let Some(f) = self.failure() {
                return f;
            }
            died.await;
        }
    }

    /// Make the engine thread of `queue` panic at the top of its next loop turn.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, queue: u32) {
        if let Some(flag) = self.inject.get(queue as usize) {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Called by the engine thread of `queue` each loop turn: panic if told to.
    #[cfg(feature = "fault-injection")]
    pub fn panic_if_injected(&self, queue: u32) {
        if self.inject.get(queue as usize).is_some_and(|f| f.swap(false, std::sync::atomic::Ordering::SeqCst)) {
            panic!("injected panic on queue {queue}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panicking_thread_is_counted_reported_and_its_error_returned() {
        let health = Arc::new(Health::new());
        let stats = QueueStats::default();
        let backlog = RxBacklog::anonymous();
        assert_eq!(health.watch(0, &stats, &backlog, || anyhow::Ok(7)).unwrap(), 7);
        assert_eq!(health.failure(), None);
        assert_eq!(backlog.outstanding(1), 0);
        let h = health.clone();
        let waiter = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(h.failed())
        });
        let err = health.watch(1, &stats, &backlog, || -> anyhow::Result<()> { panic!("boom") }).unwrap_err();
        assert!(err.to_string().contains("RX queue 1 panicked: boom"), "{err}");
        assert_eq!(stats.queue_panics.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(waiter.join().unwrap().contains("queue 1"));
        // XDP sees a backlog on queue 1 that never drains (it answers no SYNs there), none on 0.
        assert!(backlog.outstanding(1) > engine_common::maps::RX_BACKLOG_LIMIT as i64);
        assert_eq!(backlog.outstanding(0), 0);
        // The first death is the one reported.
        let _ = health.watch(0, &stats, &backlog, || -> anyhow::Result<()> { panic!("later") });
        assert!(health.failure().unwrap().contains("queue 1"));
    }
}
