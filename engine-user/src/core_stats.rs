//! What the TCP core's connections counted, added up per queue for `synx stats`: loss recovery
//! (RFC 8985 RACK-TLP, RFC 6937 PRR, undo), pacing and ECN (RFC 3168). The queue thread
//! publishes its endpoint's totals each turn.

use std::sync::atomic::{AtomicU64, Ordering};

use synx_tcp::connection::Stats;

/// One name per counter, as `synx stats` prints them.
macro_rules! core_counters {
    ($($field:ident => $name:literal),* $(,)?) => {
        /// The endpoint's totals of the core's per-connection counters.
        #[derive(Debug, Default)]
        pub struct CoreCounters {
            $(pub $field: AtomicU64,)*
        }

        impl CoreCounters {
            pub fn publish(&self, totals: &Stats) {
                $(self.$field.store(u64::from(totals.$field), Ordering::Relaxed);)*
            }

            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$(($name, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

core_counters! {
    retransmits => "tcp_retransmits",
    timeouts => "tcp_rto_timeouts",
    loss_probes => "tcp_loss_probes",
    tlp_recoveries => "tcp_tlp_recoveries",
    fast_recoveries => "tcp_fast_recoveries",
    rack_losses => "tcp_rack_losses",
    dsacks_received => "tcp_dsacks_received",
    undos => "tcp_undos",
    spurious_rtos => "tcp_spurious_rtos",
    paced => "tcp_paced",
    ce_received => "tcp_ce_received",
    ecn_reductions => "tcp_ecn_reductions",
}
