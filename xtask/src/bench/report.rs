//! What a bench run found, as it is written to JSON and read back: rows of peers' rounds, every
//! round kept raw with its value, its failure and its details. Nothing is dropped: a side's
//! figure is the median of its succeeded rounds, and a side with any failed round is shown as
//! failed (with the reasons) and fails every target that reads it. A pooled row (a percentile
//! of many samples, e.g. flows' completion times) takes its figure from all its succeeded
//! rounds' samples together instead: each round's own value is then that percentile of its
//! samples alone, kept to show the spread from round to round.

use serde::{Deserialize, Serialize};

/// One round of one peer in one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Round {
    /// Position in the row's run order (warm-up rounds first), so ABBA can be checked.
    pub order: usize,
    /// A warm-up round: recorded, never counted.
    pub warmup: bool,
    /// What the round measured, if it measured anything (a failed round may still have one:
    /// e.g. wrk's req/s beside its socket errors).
    pub value: Option<f64>,
    /// Why the round failed; None when it succeeded.
    pub failure: Option<String>,
    /// A pooled row's samples from this round (see [`Side::pooled`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Round {
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.value.is_some_and(f64::is_finite)
    }
}

/// One peer's rounds in one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Side {
    pub peer: String,
    pub rounds: Vec<Round>,
    /// A pooled row's quantile (0.5 a median, 0.99 a p99): the figure is that quantile of the
    /// samples of all succeeded counted rounds together (nearest rank), not a median of rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<f64>,
    /// A pooled row whose samples pair with another peer's, sample for sample (see
    /// [`RowSpec::pooled_paired`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub paired: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Side {
    fn counted(&self) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter(|r| !r.warmup)
    }
    pub fn attempted(&self) -> usize {
        self.counted().count()
    }
    pub fn succeeded(&self) -> usize {
        self.counted().filter(|r| r.ok()).count()
    }
    pub fn failed(&self) -> usize {
        self.attempted() - self.succeeded()
    }
    /// The succeeded rounds' figure: their median (the lower middle for an even count: no
    /// invented value), or for a pooled row the quantile of all their samples together.
    pub fn value(&self) -> Option<f64> {
        let mut v: Vec<f64> = match self.pooled {
            Some(_) => self.pooled_samples(),
            None => self.round_values(),
        };
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(v[self.pooled.map_or((n - 1) / 2, |q| ((q * n as f64).ceil() as usize).clamp(1, n) - 1)])
    }
    /// The lowest and highest of the succeeded counted rounds' own values (for a pooled row
    /// each round's own quantile), when at least two succeeded: how far the rounds behind the
    /// figure spread.
    pub fn range(&self) -> Option<(f64, f64)> {
        let v = self.round_values();
        if v.len() < 2 {
            return None;
        }
        Some(v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x))))
    }
    /// Each succeeded counted round's own value, in the order they ran.
    fn round_values(&self) -> Vec<f64> {
        self.counted().filter(|r| r.ok()).filter_map(|r| r.value).collect()
    }
    /// A pooled row's samples of all succeeded counted rounds, in the order they were taken.
    fn pooled_samples(&self) -> Vec<f64> {
        self.counted().filter(|r| r.ok()).flat_map(|r| r.samples.iter().copied()).collect()
    }
    /// The side's figure, or why it has none that a target may use: every counted round must
    /// have succeeded.
    pub fn figure(&self) -> Result<f64, String> {
        match (self.value(), self.failed()) {
            (_, 0) if self.attempted() == 0 => Err(format!("{}: no round ran", self.peer)),
            (Some(m), 0) => Ok(m),
            (_, n) => Err(format!("{}: {n} of {} rounds failed ({})", self.peer, self.attempted(), self.failure_summary())),
        }
    }
    /// Distinct failure reasons, with how often each occurred.
    pub fn failure_summary(&self) -> String {
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for r in self.counted() {
            let why = match (&r.failure, r.value) {
                (Some(f), _) => f.clone(),
                (None, _) if !r.ok() => "no value".to_string(),
                _ => continue,
            };
            match reasons.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += 1,
                None => reasons.push((why, 1)),
            }
        }
        reasons.iter().map(|(w, n)| if *n > 1 { format!("{n}x {w}") } else { w.clone() }).collect::<Vec<_>>().join("; ")
    }
}

/// One measured quantity, every peer's rounds of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub name: String,
    /// The row group that measured it (`--only` names groups).
    pub group: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// What exactly is measured, in a line.
    pub note: String,
    pub sides: Vec<Side>,
}

impl Row {
    pub fn side(&self, peer: &str) -> Option<&Side> {
        self.sides.iter().find(|s| s.peer == peer)
    }
    /// `a`'s figure over `b`'s, or why there is none; for paired sides the median of the
    /// pairs' ratios ([`RowSpec::pooled_paired`]).
    pub fn ratio(&self, a: &str, b: &str) -> Result<f64, String> {
        let sa = self.side(a).ok_or_else(|| format!("{a}: not measured"))?;
        let sb = self.side(b).ok_or_else(|| format!("{b}: not measured"))?;
        let (fa, fb) = (sa.figure()?, sb.figure()?);
        if sa.paired && sb.paired {
            return paired_ratio(sa, sb).ok_or_else(|| format!("{a} and {b}: samples not paired one for one"));
        }
        if fb == 0.0 {
            return Err(format!("{b}: 0 {}", self.unit));
        }
        Ok(fa / fb)
    }

    /// As [`Row::ratio`], from the sides' values even where a round failed (for the tables).
    pub fn value_ratio(&self, a: &str, b: &str) -> Option<f64> {
        let (sa, sb) = (self.side(a)?, self.side(b)?);
        if sa.paired && sb.paired {
            return paired_ratio(sa, sb);
        }
        let (fa, fb) = (sa.value()?, sb.value()?);
        (fb != 0.0).then(|| fa / fb)
    }
}

/// The median (lower middle) of `a`'s samples over `b`'s, pair by pair; `None` unless they
/// pair one for one.
fn paired_ratio(a: &Side, b: &Side) -> Option<f64> {
    let (x, y) = (a.pooled_samples(), b.pooled_samples());
    if x.is_empty() || x.len() != y.len() || y.iter().any(|&v| v <= 0.0) {
        return None;
    }
    let mut r: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p / q).collect();
    r.sort_by(f64::total_cmp);
    Some(r[(r.len() - 1) / 2])
}

/// The rows of one row group being filled in, round by round. A round measures every row of
/// the group at once (a flood round gives its rate, its CPU and its legitimate clients' fate).
pub struct Collector {
    rows: Vec<Row>,
    /// Each row's pooled quantile, given to its sides as they appear.
    pooled: Vec<Option<f64>>,
    /// Each row's pairing ([`RowSpec::pooled_paired`]).
    paired: Vec<bool>,
    order: usize,
}

/// What one round of one peer gave: a value per row, in the collector's row order, or a
/// failure for the whole round; `failure` beside values marks a round that measured something
/// but must not count (errors seen during it).
pub struct Outcome {
    pub values: Vec<Option<f64>>,
    pub failure: Option<String>,
    /// Raw details kept in the JSON (generator output, counters, CPU times).
    pub detail: serde_json::Value,
}

impl Outcome {
    pub fn failed(why: impl Into<String>) -> Self {
        Self { values: Vec::new(), failure: Some(why.into()), detail: serde_json::Value::Null }
    }
}

/// Declares a row of a group: name, unit, whether higher is better, note.
pub struct RowSpec {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub note: String,
    /// A pooled row's quantile ([`Side::pooled`]).
    pub pooled: Option<f64>,
    /// A pooled row whose samples pair across peers ([`RowSpec::pooled_paired`]).
    pub paired: bool,
}

impl RowSpec {
    /// The row's figure is quantile `q` of all counted rounds' samples together
    /// ([`Collector::record_samples`]).
    pub fn pooled(self, q: f64) -> Self {
        Self { pooled: Some(q), ..self }
    }

    /// A pooled median whose samples pair across peers: sample i of each peer's round j met
    /// the same conditions (the WAN cells with common random numbers), so a ratio between two
    /// such sides is the median of the pairs' ratios, not the ratio of the medians (which may
    /// fall on different pairs).
    pub fn pooled_paired(self) -> Self {
        Self { pooled: Some(0.5), paired: true, ..self }
    }
}

pub fn spec(name: impl Into<String>, unit: &'static str, higher_is_better: bool, note: impl Into<String>) -> RowSpec {
    RowSpec { name: name.into(), unit, higher_is_better, note: note.into(), pooled: None, paired: false }
}

/// Raw per-round details, kept apart from the rows (one entry per round of the group).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundDetail {
    pub group: String,
    pub peer: String,
    pub order: usize,
    pub warmup: bool,
    pub failure: Option<String>,
    pub detail: serde_json::Value,
}

impl Collector {
    pub fn new(group: &str, specs: Vec<RowSpec>) -> Self {
        let pooled = specs.iter().map(|s| s.pooled).collect();
        let paired = specs.iter().map(|s| s.paired).collect();
        let rows = specs
            .into_iter()
            .map(|s| Row {
                name: s.name,
                group: group.into(),
                unit: s.unit.into(),
                higher_is_better: s.higher_is_better,
                note: s.note,
                sides: Vec::new(),
            })
            .collect();
        Self { rows, pooled, paired, order: 0 }
    }

    /// Record one round of `peer`; returns its raw details for the report.
    pub fn record(&mut self, peer: &str, warmup: bool, outcome: Outcome) -> RoundDetail {
        self.record_samples(peer, warmup, outcome, &[])
    }

    /// As [`Collector::record`], with the round's samples of each pooled row (`samples[i]` for
    /// row `i`; the same for every row when only one is given).
    pub fn record_samples(&mut self, peer: &str, warmup: bool, outcome: Outcome, samples: &[Vec<f64>]) -> RoundDetail {
        let order = self.order;
        self.order += 1;
        for (i, row) in self.rows.iter_mut().enumerate() {
            let value = outcome.values.get(i).copied().flatten();
            // A round that measured nothing for this row failed for it, whatever the others got.
            let failure = match (&outcome.failure, value) {
                (Some(f), _) => Some(f.clone()),
                (None, None) => Some("the round gave no value for this row".into()),
                (None, Some(v)) if !v.is_finite() => Some(format!("not a number ({v})")),
                (None, Some(_)) => None,
            };
            let samples = match self.pooled[i] {
                Some(_) => samples.get(i).or(samples.first()).cloned().unwrap_or_default(),
                None => Vec::new(),
            };
            let round = Round { order, warmup, value, failure, samples };
            match row.sides.iter_mut().find(|s| s.peer == peer) {
                Some(side) => side.rounds.push(round),
                None => row.sides.push(Side { peer: peer.into(), rounds: vec![round], pooled: self.pooled[i], paired: self.paired[i] }),
            }
        }
        RoundDetail {
            group: self.rows.first().map(|r| r.group.clone()).unwrap_or_default(),
            peer: peer.into(),
            order,
            warmup,
            failure: outcome.failure,
            detail: outcome.detail,
        }
    }

    pub fn finish(self) -> Vec<Row> {
        self.rows
    }
}

/// The order rounds run in: one warm-up round per peer, then `rounds` rounds per peer with the
/// peer order reversed every other pass (A B, B A, A B, ...: ABBA for two peers), so a drift
/// in the machine over the run weighs on every peer alike.
pub fn schedule<P: Copy>(peers: &[P], rounds: usize, warmup: bool) -> Vec<(P, bool)> {
    let mut out: Vec<(P, bool)> = Vec::new();
    if warmup {
        out.extend(peers.iter().map(|&p| (p, true)));
    }
    for pass in 0..rounds {
        if pass % 2 == 0 {
            out.extend(peers.iter().map(|&p| (p, false)));
        } else {
            out.extend(peers.iter().rev().map(|&p| (p, false)));
        }
    }
    out
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Reproducibility: commit, build, arguments, sysctls, offloads, tools, mitigations.
    pub meta: serde_json::Value,
    pub rows: Vec<Row>,
    pub rounds: Vec<RoundDetail>,
    /// Row groups that could not run at all (their rig did not start, ...), with why.
    #[serde(default)]
    pub group_failures: std::collections::BTreeMap<String, String>,
    pub secs: f64,
}

impl Report {
    /// Several runs as one: the last run's metadata (each run's command, commit and date kept
    /// under `runs`), rows in order, a row name a later run also measured taken from the later
    /// run (with its rounds), the runs' times added. The last run is the one whose rows win, so
    /// the machine, tools and configuration shown are those of the run most rows come from when
    /// the main run is given last.
    pub fn merge(runs: Vec<Report>) -> Report {
        let mut it = runs.into_iter();
        let Some(mut out) = it.next() else {
            return Report { meta: serde_json::Value::Null, rows: vec![], rounds: vec![], group_failures: Default::default(), secs: 0.0 };
        };
        let summary = |r: &Report| serde_json::json!({ "command": r.meta["command"], "commit": r.meta["commit"], "date": r.meta["date"], "secs": r.secs });
        let mut all = vec![summary(&out)];
        for r in it {
            all.push(summary(&r));
            let groups: Vec<String> = r.rows.iter().map(|x| x.group.clone()).collect();
            let names: Vec<&String> = r.rows.iter().map(|x| &x.name).collect();
            out.rows.retain(|x| !names.contains(&&x.name));
            out.rounds.retain(|d| !groups.contains(&d.group));
            out.group_failures.retain(|g, _| !groups.contains(g));
            out.rows.extend(r.rows.iter().cloned());
            out.rounds.extend(r.rounds);
            out.group_failures.extend(r.group_failures);
            out.secs += r.secs;
            out.meta = r.meta;
        }
        if all.len() > 1 {
            out.meta["runs"] = serde_json::json!(all);
        }
        out
    }
}

/// A number for a table: three significant digits, thousands separated.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    let decimals = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // Three significant digits below 1.
        (2 - a.log10().floor() as i32).clamp(3, 9) as usize
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A side's cell: its figure, marked when some rounds failed or none ran.
pub fn cell(side: Option<&Side>) -> String {
    let Some(s) = side else { return "-".into() };
    match (s.value(), s.failed(), s.attempted()) {
        (_, _, 0) => "not run".into(),
        (Some(m), 0, _) => fmt_num(m),
        (Some(m), f, n) => format!("{} (**{f}/{n} failed**)", fmt_num(m)),
        (None, f, n) => format!("**failed** ({f}/{n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(values: &[f64]) -> Outcome {
        Outcome { values: values.iter().map(|&v| Some(v)).collect(), failure: None, detail: serde_json::Value::Null }
    }

    #[test]
    fn schedule_is_abba_after_a_warmup_per_peer() {
        let s = schedule(&["synx", "kernel"], 4, true);
        let names: Vec<String> = s.iter().map(|(p, w)| format!("{p}{}", if *w { "*" } else { "" })).collect();
        assert_eq!(names, ["synx*", "kernel*", "synx", "kernel", "kernel", "synx", "synx", "kernel", "kernel", "synx"]);
        let three = schedule(&['a', 'b', 'c'], 2, false);
        assert_eq!(three.iter().map(|(p, _)| *p).collect::<String>(), "abccba");
    }

    #[test]
    fn a_failed_round_fails_the_side_and_is_never_hidden_by_a_median() {
        let mut c = Collector::new("g", vec![spec("rate", "x/s", true, ""), spec("cpu", "s", false, "")]);
        c.record("synx", true, outcome(&[1.0, 1.0])); // warm-up: not counted
        c.record("synx", false, outcome(&[10.0, 2.0]));
        c.record("synx", false, Outcome::failed("the server died"));
        c.record("synx", false, outcome(&[30.0, 4.0]));
        c.record("kernel", false, outcome(&[5.0, 1.0]));
        let rows = c.finish();
        let synx = rows[0].side("synx").unwrap();
        assert_eq!((synx.attempted(), synx.succeeded(), synx.failed()), (3, 2, 1));
        // The median of what succeeded is still shown, marked...
        assert_eq!(synx.value(), Some(10.0));
        assert_eq!(cell(Some(synx)), "10.0 (**1/3 failed**)");
        // ...but no target may read it, and the reason travels with it.
        let err = synx.figure().unwrap_err();
        assert!(err.contains("1 of 3 rounds failed") && err.contains("the server died"), "{err}");
        assert!(rows[0].ratio("synx", "kernel").is_err());
        assert_eq!(rows[0].side("kernel").unwrap().figure(), Ok(5.0));
        // The spread counts what succeeded, never the warm-up; one round has none.
        assert_eq!(synx.range(), Some((10.0, 30.0)));
        assert_eq!(rows[0].side("kernel").unwrap().range(), None);
    }

    #[test]
    fn values_beside_a_failure_are_kept_but_do_not_count() {
        let mut c = Collector::new("http", vec![spec("rps", "req/s", true, "")]);
        c.record("kernel", false, Outcome { values: vec![Some(900.0)], failure: Some("wrk: 12 read errors".into()), detail: serde_json::Value::Null });
        let rows = c.finish();
        let side = rows[0].side("kernel").unwrap();
        assert_eq!(side.rounds[0].value, Some(900.0));
        assert_eq!(side.value(), None);
        assert_eq!(cell(Some(side)), "**failed** (1/1)");
        assert!(side.figure().unwrap_err().contains("12 read errors"));
    }

    #[test]
    fn a_nan_or_missing_value_is_a_failure_not_a_best() {
        // A CPU delta from a process that vanished must not read as 0 (or negative) CPU.
        let mut c = Collector::new("g", vec![spec("cpu", "us", false, ""), spec("rate", "x/s", true, "")]);
        c.record("synx", false, Outcome { values: vec![Some(f64::NAN), None], failure: None, detail: serde_json::Value::Null });
        let rows = c.finish();
        assert!(rows[0].side("synx").unwrap().figure().unwrap_err().contains("not a number"));
        assert!(rows[1].side("synx").unwrap().figure().unwrap_err().contains("no value"));
    }

    #[test]
    fn a_pooled_row_takes_its_quantile_from_every_counted_round_s_samples() {
        let mut c = Collector::new("g", vec![spec("p50", "ms", false, "").pooled(0.5), spec("p99", "ms", false, "").pooled(0.99), spec("n", "flows", true, "")]);
        let samples = |from: u32| (from..from + 100).map(f64::from).collect::<Vec<_>>();
        // Warm-up samples (0..100) never count; a round's value is its own percentile.
        c.record_samples("synx", true, outcome(&[50.0, 99.0, 100.0]), &[samples(0)]);
        c.record_samples("synx", false, outcome(&[150.0, 199.0, 100.0]), &[samples(100)]);
        c.record_samples("synx", false, outcome(&[1050.0, 1099.0, 100.0]), &[samples(1000)]);
        let rows = c.finish();
        let side = |i: usize| rows[i].side("synx").unwrap();
        // The 100th and the 198th of the 200 counted samples (nearest rank), where a median
        // of the two rounds' own figures would say 150 and 199.
        assert_eq!((side(0).value(), side(1).value()), (Some(199.0), Some(1097.0)));
        assert_eq!(side(0).rounds[1].value, Some(150.0));
        // A row not pooled keeps no samples and takes the median of its rounds.
        assert!(side(2).rounds.iter().all(|r| r.samples.is_empty()));
        assert_eq!(side(2).value(), Some(100.0));
        // A failed round's samples do not count.
        let mut c = Collector::new("g", vec![spec("p50", "ms", false, "").pooled(0.5)]);
        c.record_samples("synx", false, outcome(&[1050.0]), &[samples(1000)]);
        c.record_samples("synx", false, Outcome::failed("a read timed out"), &[samples(0)]);
        assert_eq!(c.finish()[0].side("synx").unwrap().value(), Some(1049.0));
    }

    #[test]
    fn a_paired_row_s_ratio_is_the_median_of_the_pairs_ratios() {
        let mut c = Collector::new("g", vec![spec("goodput", "Mbit/s", true, "").pooled_paired()]);
        // Pairs in round order: (10, 5), (40, 40), (20, 21), (60, 20), (12, 11): ratios 2, 1,
        // 0.95, 3, 1.09; the medians (20 and 20) would say 1.
        c.record_samples("synx", true, outcome(&[99.0]), &[vec![99.0]]);
        c.record_samples("synx", false, outcome(&[25.0]), &[vec![10.0, 40.0, 20.0]]);
        c.record_samples("kernel", false, outcome(&[22.5]), &[vec![5.0, 40.0, 21.0]]);
        c.record_samples("kernel", false, outcome(&[40.0]), &[vec![20.0, 11.0]]);
        c.record_samples("synx", false, outcome(&[20.0]), &[vec![60.0, 12.0]]);
        let rows = c.finish();
        assert_eq!(rows[0].side("synx").unwrap().value(), Some(20.0));
        assert_eq!(rows[0].side("kernel").unwrap().value(), Some(20.0));
        assert!((rows[0].ratio("synx", "kernel").unwrap() - 12.0 / 11.0).abs() < 1e-12);
        assert_eq!(rows[0].value_ratio("synx", "kernel"), rows[0].ratio("synx", "kernel").ok());
        // Samples that do not pair one for one give no ratio rather than a made-up one.
        let mut c = Collector::new("g", vec![spec("goodput", "Mbit/s", true, "").pooled_paired()]);
        c.record_samples("synx", false, outcome(&[1.0]), &[vec![1.0, 2.0]]);
        c.record_samples("kernel", false, outcome(&[1.0]), &[vec![1.0]]);
        let rows = c.finish();
        assert!(rows[0].ratio("synx", "kernel").is_err());
        assert_eq!(rows[0].value_ratio("synx", "kernel"), None);
    }

    #[test]
    fn even_counts_take_the_lower_middle() {
        let side = Side {
            peer: "p".into(),
            rounds: [4.0, 1.0, 3.0, 2.0].iter().enumerate().map(|(i, &v)| Round { order: i, warmup: false, value: Some(v), failure: None, samples: vec![] }).collect(),
            pooled: None,
            paired: false,
        };
        assert_eq!(side.value(), Some(2.0));
    }

    #[test]
    fn numbers_print_with_three_significant_digits_and_separators() {
        assert_eq!(fmt_num(1_234_567.8), "1,234,568");
        assert_eq!(fmt_num(45.678), "45.7");
        assert_eq!(fmt_num(4.5678), "4.57");
        assert_eq!(fmt_num(0.012345), "0.0123");
        assert_eq!(fmt_num(-1234.0), "-1,234");
        assert_eq!(fmt_num(0.0), "0");
    }

    #[test]
    fn merged_runs_take_a_repeated_row_from_the_later_run() {
        let run = |v: f64, rows: &[&str]| {
            let mut c = Collector::new("idle", rows.iter().map(|r| spec(*r, "B", false, "")).collect());
            let d = c.record("synx", false, outcome(&vec![v; rows.len()]));
            Report { meta: serde_json::json!({"command": format!("run {v}")}), rows: c.finish(), rounds: vec![d], group_failures: Default::default(), secs: 10.0 }
        };
        let m = Report::merge(vec![run(1.0, &["idle_bytes_per_conn_100k"]), run(2.0, &["idle_bytes_per_conn_100k", "idle_bytes_per_conn_1m"])]);
        let names: Vec<&str> = m.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["idle_bytes_per_conn_100k", "idle_bytes_per_conn_1m"]);
        assert_eq!(m.rows[0].side("synx").unwrap().value(), Some(2.0));
        assert_eq!(m.secs, 20.0);
        assert_eq!(m.meta["runs"].as_array().unwrap().len(), 2);
        assert_eq!(m.meta["command"], "run 2");
    }

    #[test]
    fn a_report_survives_json() {
        let mut c = Collector::new("g", vec![spec("rate", "x/s", true, "n")]);
        let d = c.record("synx", false, outcome(&[1.5]));
        let r = Report { meta: serde_json::json!({"commit": "abc"}), rows: c.finish(), rounds: vec![d], group_failures: Default::default(), secs: 1.0 };
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.rows, r.rows);
        assert_eq!(back.rounds, r.rounds);
    }
}
