//! Latency samples and their percentiles, and failures counted by reason.

use std::collections::BTreeMap;

/// Every latency sample of a run, in nanoseconds (a 15-second run at 100k/s is 12 MB: kept
/// whole, so the percentiles are exact rather than bucketed).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    ns: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn push(&mut self, ns: u64) {
        self.ns.push(ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// The `q`-quantile (0..=1) by the nearest-rank method, in milliseconds; None when empty.
    pub fn quantile_ms(&mut self, q: f64) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        Some(self.ns[rank - 1] as f64 / 1e6)
    }

    /// p50, p90, p99, p99.9 and max, in milliseconds (null when there is no sample).
    pub fn summary(&mut self) -> serde_json::Value {
        serde_json::json!({
            "samples": self.len(),
            "p50": self.quantile_ms(0.50),
            "p90": self.quantile_ms(0.90),
            "p99": self.quantile_ms(0.99),
            "p999": self.quantile_ms(0.999),
            "max": self.quantile_ms(1.0),
        })
    }
}

/// Failures by reason ("connect: Connection refused (os error 111)" -> 3).
#[derive(Debug, Default, Clone)]
pub struct Failures(pub BTreeMap<String, u64>);

impl Failures {
    pub fn add(&mut self, reason: impl Into<String>) {
        *self.0.entry(reason.into()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self.0)
    }
}

/// A reason for an I/O error, without the parts that differ per occurrence.
pub fn io_reason(what: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100u64 {
            l.push(ms * 1_000_000);
        }
        assert_eq!(l.quantile_ms(0.5), Some(50.0));
        assert_eq!(l.quantile_ms(0.99), Some(99.0));
        assert_eq!(l.quantile_ms(0.999), Some(100.0));
        assert_eq!(l.quantile_ms(0.0), Some(1.0));
        assert_eq!(Latencies::default().quantile_ms(0.5), None);
    }

    #[test]
    fn failures_add_up_by_reason() {
        let mut f = Failures::default();
        f.add("a");
        f.add("a");
        f.add("b");
        assert_eq!(f.total(), 3);
        assert_eq!(f.to_json(), serde_json::json!({"a": 2, "b": 1}));
    }
}
