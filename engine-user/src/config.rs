//! `synx run` configuration: command-line flags over an optional TOML file over defaults.

use std::{net::SocketAddr, path::Path, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, de};

use crate::{
    api::Keepalive,
    apps::App,
    bpf::{AttachMode, XdpTx},
    cluster::{ClusterOptions, DrainSyns},
    engine::{MemoryLimits, coalesce::CoalesceMode, gso::GsoMode, napi_sched::NapiThreadsMode},
};

/// Parse a duration as operators write it: `75s`, `2h`, `500ms`, `1m30s`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("bad duration {s:?}: {e} (write e.g. 75s, 2h, 500ms or plain seconds)"))
}

/// A size in bytes: plain bytes, or with K, M, G or T (binary: 64M = 64 MiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("bad size {s:?} (write e.g. 256M, 4G or plain bytes)");
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// `ADDR:PORT[=APP]`; IPv6 as `[fd00::1]:80=http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    /// Overrides `--app` for this listener.
    pub app: Option<App>,
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, app) = match s.split_once('=') {
            Some((a, app)) => (a, Some(app.parse::<App>()?)),
            None => (s, None),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|e| {
            format!("bad listen address {addr:?}: {e} (write ADDR:PORT, [V6ADDR]:PORT, optionally =APP)")
        })?;
        if addr.port() == 0 {
            return Err(format!("listen address {addr} needs a port"));
        }
        Ok(Self { addr, app })
    }
}

/// A listener in the TOML file: the command line's `ADDR:PORT[=APP]` as a string, or a table
/// that spells the app's settings as keys:
///
/// ```toml
/// [[listen]]
/// addr = "0.0.0.0:80"
/// app = "proxy"
/// backend = "127.0.0.1:8080"
/// proxy_protocol = "v2"
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum ListenEntry {
    Text(String),
    Table(ListenTable),
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenTable {
    pub addr: String,
    pub app: Option<String>,
    pub backend: Option<String>,
    #[serde(alias = "proxy-protocol")]
    pub proxy_protocol: Option<String>,
    pub pool: Option<u32>,
    pub timeout: Option<String>,
}

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> de::Visitor<'de> for Entry {
            type Value = ListenEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ADDR:PORT[=APP]\" or a table with addr = \"ADDR:PORT\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenEntry, E> {
                Ok(ListenEntry::Text(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ListenEntry, A::Error> {
                ListenTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(ListenEntry::Table)
            }
        }
        d.deserialize_any(Entry)
    }
}

impl ListenEntry {
    pub fn to_spec(&self) -> Result<ListenSpec, String> {
        let t = match self {
            ListenEntry::Text(s) => return s.parse(),
            ListenEntry::Table(t) => t,
        };
        let ListenSpec { addr, app } = t.addr.parse()?;
        if app.is_some() {
            return Err(format!("listen addr {:?}: give the app as app = \"...\" beside addr", t.addr));
        }
        let Some(name) = &t.app else {
            if t.backend.is_some() || t.proxy_protocol.is_some() || t.pool.is_some() || t.timeout.is_some() {
                return Err(format!(
                    "listener {addr}: backend and proxy options need app = \"proxy\" or \"http-proxy\""
                ));
            }
            return Ok(ListenSpec { addr, app: None });
        };
        let mut options = Vec::new();
        if let Some(v) = &t.proxy_protocol {
            options.push(("proxy-protocol".to_string(), v.clone()));
        }
        if let Some(n) = t.pool {
            options.push(("pool".to_string(), n.to_string()));
        }
        if let Some(v) = &t.timeout {
            options.push(("timeout".to_string(), v.clone()));
        }
        let app = App::build(name, t.backend.as_deref(), &options).map_err(|e| format!("listener {addr}: {e}"))?;
        Ok(ListenSpec { addr, app: Some(app) })
    }
}

impl std::fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.app {
            Some(app) => write!(f, "{}={app}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Everything `synx run` needs, after merging flags, file and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub iface: String,
    pub listen: Vec<ListenSpec>,
    pub app: App,
    pub keepalive: Keepalive,
    /// Maximum segment lifetime; TIME_WAIT lasts 2*MSL.
    pub msl: Duration,
    /// ECN (RFC 3168) with clients that ask for it.
    pub ecn: bool,
    pub max_conns: u32,
    pub xdp_mode: AttachMode,
    /// How XDP's answers go back out of the interface.
    pub xdp_tx: XdpTx,
    /// How long an engine thread keeps polling after work before it sleeps (0: never).
    pub busy_poll: Duration,
    /// How long a turn's frames from several connections may wait for more on the TX ring
    /// (0: never).
    pub tx_coalesce: Duration,
    /// How long XDP drops a segment with data and a bad cookie before it resets its tuple.
    pub cookie_miss_hold: Duration,
    /// SYN-ACK retransmissions of a cookie handshake whose final ACK has not come (0: none).
    pub synack_retries: u8,
    /// AF_XDP preferred busy polling with this NAPI budget (0: off).
    pub prefer_busy_poll: u16,
    /// The interface's NAPI deferral: adaptive, or left alone.
    pub coalesce: CoalesceMode,
    /// The interface's NAPI threads: left alone, or kept at SCHED_BATCH.
    pub napi_threads: NapiThreadsMode,
    /// Trains of segments through the segmentation offload, or frame by frame.
    pub gso: GsoMode,
    /// How long SIGTERM lets connections finish before resetting the rest.
    pub grace: Duration,
    pub app_threads: AppThreads,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    pub memory: MemoryLimits,
    /// Serving with other hosts (shared cookie key, peers, draining).
    pub cluster: ClusterOptions,
}

/// Which threads run the built-in apps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AppThreads {
    /// Each connection's app on the engine thread of its RX queue: no thread hop between the
    /// TCP core and the app, one wakeup per request/response turn.
    #[default]
    Engine,
    /// Every app on one tokio worker thread beside the engine threads: app and engine work in
    /// parallel, at the cost of two cross-thread wakeups per turn.
    Worker,
}

impl RunConfig {
    pub const DEFAULT_MSL: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNS: u32 = 1 << 20;
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
    pub const DEFAULT_TX_COALESCE: Duration = crate::engine::EngineOptions::DEFAULT_TX_COALESCE;
    pub const DEFAULT_COOKIE_MISS_HOLD: Duration = Duration::from_millis(crate::bpf::COOKIE_MISS_HOLD_MS as u64);

    /// The app that serves `spec`.
    pub fn app_for(&self, spec: &ListenSpec) -> App {
        spec.app.unwrap_or(self.app)
    }
}

/// The TOML file: the same settings as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    #[serde(default)]
    pub listen: Vec<ListenEntry>,
    pub app: Option<String>,
    pub keepalive: Option<bool>,
    pub keepalive_idle: Option<String>,
    pub keepalive_interval: Option<String>,
    pub keepalive_probes: Option<u32>,
    pub ecn: Option<bool>,
    pub msl: Option<String>,
    pub max_conns: Option<u32>,
    pub xdp_mode: Option<String>,
    pub xdp_tx: Option<String>,
    pub busy_poll: Option<String>,
    pub tx_coalesce: Option<String>,
    pub cookie_miss_hold: Option<String>,
    pub synack_retries: Option<u8>,
    pub prefer_busy_poll: Option<u16>,
    pub coalesce: Option<String>,
    pub napi_threads: Option<String>,
    pub gso: Option<String>,
    pub grace: Option<String>,
    pub app_threads: Option<String>,
    pub metrics: Option<String>,
    pub mem_limit: Option<String>,
    pub max_conns_per_source: Option<u32>,
    pub mem_per_source: Option<String>,
    pub persist_timeout: Option<String>,
    pub cookie_key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub peer_hosts: Vec<std::net::Ipv4Addr>,
    pub peer_port: Option<u16>,
    pub drain_syns: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }
}

/// Flags as given on the command line (all optional so the file can fill them in).
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    pub iface: Option<String>,
    pub listen: Vec<ListenSpec>,
    pub app: Option<App>,
    pub no_keepalive: bool,
    pub keepalive_idle: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_probes: Option<u32>,
    pub no_ecn: bool,
    pub msl: Option<Duration>,
    pub max_conns: Option<u32>,
    pub xdp_mode: Option<AttachMode>,
    pub xdp_tx: Option<XdpTx>,
    pub busy_poll: Option<Duration>,
    pub tx_coalesce: Option<Duration>,
    pub cookie_miss_hold: Option<Duration>,
    pub synack_retries: Option<u8>,
    pub prefer_busy_poll: Option<u16>,
    pub coalesce: Option<CoalesceMode>,
    pub napi_threads: Option<NapiThreadsMode>,
    pub gso: Option<GsoMode>,
    pub grace: Option<Duration>,
    pub app_threads: Option<AppThreads>,
    pub metrics: Option<SocketAddr>,
    pub mem_limit: Option<u64>,
    pub max_conns_per_source: Option<u32>,
    pub mem_per_source: Option<u64>,
    pub persist_timeout: Option<Duration>,
    pub cookie_key_file: Option<std::path::PathBuf>,
    pub peer_hosts: Vec<std::net::Ipv4Addr>,
    pub peer_port: Option<u16>,
    pub drain_syns: Option<DrainSyns>,
    pub clock_skew_ms: i64,
}

/// Flags win over the file, the file over defaults.
/// A setting with named values: the command line's, else the file's `key = "name"` (one of the
/// names the command line takes), else `default`.
fn choice<T: clap::ValueEnum>(key: &str, flag: Option<T>, file: Option<&str>, default: T) -> Result<T, String> {
    match (flag, file) {
        (Some(v), _) => Ok(v),
        (None, None) => Ok(default),
        (None, Some(text)) => T::from_str(text, false).map_err(|_| {
            let names: Vec<String> =
                T::value_variants().iter().filter_map(|v| Some(v.to_possible_value()?.get_name().to_string())).collect();
            format!("{key} {text:?}: choose {}", names.join(" or "))
        }),
    }
}

pub fn merge(flags: FlagConfig, file: FileConfig) -> Result<RunConfig, String> {
    let dur = |v: Option<String>| v.as_deref().map(parse_duration).transpose();
    let iface = flags
        .iface
        .or(file.iface)
        .ok_or("no interface: pass --iface IF (or iface = \"IF\" in the config file)")?;
    let listen = if flags.listen.is_empty() {
        file.listen.iter().map(ListenEntry::to_spec).collect::<Result<Vec<ListenSpec>, _>>()?
    } else {
        flags.listen
    };
    if listen.is_empty() {
        return Err("nothing to serve: pass --listen ADDR:PORT[=APP]".into());
    }
    let app = match flags.app {
        Some(a) => a,
        None => file.app.as_deref().map(str::parse).transpose()?.unwrap_or(App::Echo),
    };
    let default = Keepalive::default();
    let keepalive = Keepalive {
        enabled: !flags.no_keepalive && file.keepalive.unwrap_or(true),
        idle: flags.keepalive_idle.or(dur(file.keepalive_idle)?).unwrap_or(default.idle),
        interval: flags
            .keepalive_interval
            .or(dur(file.keepalive_interval)?)
            .unwrap_or(default.interval),
        probes: flags.keepalive_probes.or(file.keepalive_probes).unwrap_or(default.probes),
    };
    bounds::KEEPALIVE_IDLE.check(keepalive.idle)?;
    bounds::KEEPALIVE_INTERVAL.check(keepalive.interval)?;
    bounds::KEEPALIVE_PROBES.check(keepalive.probes)?;
    let xdp_mode = choice("xdp_mode", flags.xdp_mode, file.xdp_mode.as_deref(), AttachMode::Native)?;
    let xdp_tx = choice("xdp_tx", flags.xdp_tx, file.xdp_tx.as_deref(), XdpTx::default())?;
    let app_threads = choice("app_threads", flags.app_threads, file.app_threads.as_deref(), AppThreads::default())?;
    let ecn = !flags.no_ecn && file.ecn.unwrap_or(true);
    let msl = bounds::MSL.check(flags.msl.or(dur(file.msl)?).unwrap_or(RunConfig::DEFAULT_MSL))?;
    let max_conns =
        bounds::MAX_CONNS.check(flags.max_conns.or(file.max_conns).unwrap_or(RunConfig::DEFAULT_MAX_CONNS))?;
    let busy_poll = bounds::BUSY_POLL.check(flags.busy_poll.or(dur(file.busy_poll)?).unwrap_or(Duration::ZERO))?;
    let tx_coalesce = bounds::TX_COALESCE
        .check(flags.tx_coalesce.or(dur(file.tx_coalesce)?).unwrap_or(RunConfig::DEFAULT_TX_COALESCE))?;
    let cookie_miss_hold = bounds::COOKIE_MISS_HOLD
        .check(flags.cookie_miss_hold.or(dur(file.cookie_miss_hold)?).unwrap_or(RunConfig::DEFAULT_COOKIE_MISS_HOLD))?;
    let synack_retries = bounds::SYNACK_RETRIES
        .check(flags.synack_retries.or(file.synack_retries).unwrap_or(crate::engine::synack_retry::DEFAULT_RETRIES))?;
    let prefer_busy_poll = bounds::PREFER_BUSY_POLL.check(flags.prefer_busy_poll.or(file.prefer_busy_poll).unwrap_or(0))?;
    let coalesce = choice("coalesce", flags.coalesce, file.coalesce.as_deref(), CoalesceMode::default())?;
    let napi_threads = choice("napi_threads", flags.napi_threads, file.napi_threads.as_deref(), NapiThreadsMode::default())?;
    let gso = choice("gso", flags.gso, file.gso.as_deref(), GsoMode::default())?;
    let grace = bounds::GRACE.check(flags.grace.or(dur(file.grace)?).unwrap_or(RunConfig::DEFAULT_GRACE))?;
    let metrics = match (flags.metrics, file.metrics.as_deref()) {
        (Some(a), _) => Some(a),
        (None, None) => None,
        (None, Some(text)) => Some(text.parse::<SocketAddr>().map_err(|e| {
            format!("metrics {text:?}: {e} (write ADDR:PORT, e.g. \"127.0.0.1:9464\")")
        })?),
    };
    let size = |v: Option<String>| v.as_deref().map(parse_size).transpose();
    let memory = MemoryLimits {
        limit: bounds::MEM_LIMIT.check(flags.mem_limit.or(size(file.mem_limit)?).unwrap_or(MemoryLimits::DEFAULT_LIMIT))?,
        conns_per_source: flags
            .max_conns_per_source
            .or(file.max_conns_per_source)
            .map(|n| bounds::MAX_CONNS_PER_SOURCE.check(n))
            .transpose()?,
        bytes_per_source: flags.mem_per_source.or(size(file.mem_per_source)?).map(|n| bounds::MEM_PER_SOURCE.check(n)).transpose()?,
        persist_timeout: bounds::PERSIST_TIMEOUT
            .check(flags.persist_timeout.or(dur(file.persist_timeout)?).unwrap_or(MemoryLimits::DEFAULT_PERSIST_TIMEOUT))?,
    };
    for (i, spec) in listen.iter().enumerate() {
        if listen[..i].iter().any(|other| other.addr == spec.addr) {
            return Err(format!("listener {} is given twice: give each ADDR:PORT once", spec.addr));
        }
    }
    let drain_syns = choice("drain_syns", flags.drain_syns, file.drain_syns.as_deref(), DrainSyns::default())?;
    let peer_port = flags.peer_port.or(file.peer_port).unwrap_or(ClusterOptions::DEFAULT_PEER_PORT);
    if peer_port == 0 {
        return Err("--peer-port 0 is out of range: allowed 1 to 65535".into());
    }
    let cluster = ClusterOptions {
        cookie_key_file: flags.cookie_key_file.or(file.cookie_key_file),
        peer_hosts: if flags.peer_hosts.is_empty() { file.peer_hosts } else { flags.peer_hosts },
        peer_port,
        drain_syns,
        clock_skew_ms: flags.clock_skew_ms,
    };
    Ok(RunConfig {
        iface,
        listen,
        app,
        keepalive,
        msl,
        ecn,
        max_conns,
        xdp_mode,
        xdp_tx,
        busy_poll,
        tx_coalesce,
        cookie_miss_hold,
        synack_retries,
        prefer_busy_poll,
        coalesce,
        napi_threads,
        gso,
        grace,
        app_threads,
        metrics,
        memory,
        cluster,
    })
}

/// The range each setting may take. Values outside are refused with a message that names the
/// range: they would overflow deadlines (an MSL of 2^63 s), hold a shutdown for ever, or spin
/// an engine thread, and none of them is a setting anyone means.
pub mod bounds {
    use std::{fmt::Debug, ops::RangeInclusive, time::Duration};

    pub struct Bound<T: 'static> {
        pub name: &'static str,
        pub range: RangeInclusive<T>,
        /// How the range reads in a message.
        pub says: &'static str,
    }

    impl<T: PartialOrd + Copy + Debug> Bound<T> {
        pub fn check(&self, v: T) -> Result<T, String> {
            if self.range.contains(&v) {
                Ok(v)
            } else {
                Err(format!("{} {v:?} is out of range: allowed {}", self.name, self.says))
            }
        }
    }

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    const fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 s; a day is allowed here, and values
    /// below a second are for tests and demos.
    pub const KEEPALIVE_IDLE: Bound<Duration> =
        Bound { name: "--keepalive-idle", range: ms(100)..=secs(86_400), says: "100ms to 24h" };
    pub const KEEPALIVE_INTERVAL: Bound<Duration> =
        Bound { name: "--keepalive-interval", range: ms(100)..=secs(86_400), says: "100ms to 24h" };
    /// Linux's TCP_KEEPCNT limit.
    pub const KEEPALIVE_PROBES: Bound<u32> = Bound { name: "--keepalive-probes", range: 1..=127, says: "1 to 127" };
    /// RFC 9293 3.4.2 takes 2 minutes as an engineering choice and Linux's TIME_WAIT is 60 s
    /// (MSL 30 s); 10 minutes is already far beyond any path's segment lifetime.
    pub const MSL: Bound<Duration> = Bound { name: "--msl", range: ms(100)..=secs(600), says: "100ms to 10m" };
    pub const GRACE: Bound<Duration> = Bound { name: "--grace", range: secs(0)..=secs(3600), says: "0s to 1h" };
    /// Linux's net.core.busy_poll is typically 50 us; more than a few ms is a spinning thread.
    pub const BUSY_POLL: Bound<Duration> =
        Bound { name: "--busy-poll", range: secs(0)..=ms(10), says: "0 (off) to 10ms" };
    /// A NIC's TX interrupt coalescing is tens of microseconds; a millisecond is already a
    /// delay a request's latency shows.
    pub const TX_COALESCE: Bound<Duration> =
        Bound { name: "--tx-coalesce", range: secs(0)..=ms(1), says: "0 (off) to 1ms" };
    /// XDP keeps it in whole milliseconds; past a minute a dead connection's client waits
    /// minutes for its reset.
    pub const COOKIE_MISS_HOLD: Bound<Duration> =
        Bound { name: "--cookie-miss-hold", range: secs(0)..=secs(60), says: "0 (reset at once) to 60s" };
    /// The 7th retransmission would come 127 s after the SYN-ACK, when its cookie may no
    /// longer validate (`engine::synack_retry::MAX_RETRIES`).
    pub const SYNACK_RETRIES: Bound<u8> = Bound {
        name: "--synack-retries",
        range: 0..=crate::engine::synack_retry::MAX_RETRIES,
        says: "0 (none) to 6",
    };
    /// SO_BUSY_POLL_BUDGET takes up to 65535; a NAPI poll's usual weight is 64, and a budget
    /// beyond the RX ring's 4096 descriptors polls for frames with nowhere to go.
    pub const PREFER_BUSY_POLL: Bound<u16> =
        Bound { name: "--prefer-busy-poll", range: 0..=4096, says: "0 (off) to 4096 frames per poll" };
    pub const MAX_CONNS: Bound<u32> =
        Bound { name: "--max-conns", range: 1..=1 << 24, says: "1 to 16777216" };
    /// Below 16 MiB a few bulk connections would already be over; above 1 TiB is no limit.
    pub const MEM_LIMIT: Bound<u64> = Bound { name: "--mem-limit", range: 16 << 20..=1 << 40, says: "16M to 1T" };
    pub const MAX_CONNS_PER_SOURCE: Bound<u32> =
        Bound { name: "--max-conns-per-source", range: 1..=1 << 24, says: "1 to 16777216" };
    /// One connection's buffers take up to about 1 MiB (TCP and app queues, each way).
    pub const MEM_PER_SOURCE: Bound<u64> = Bound { name: "--mem-per-source", range: 1 << 20..=1 << 40, says: "1M to 1T" };
    /// Linux has no such limit (TCP_USER_TIMEOUT is per socket); a second is for tests.
    pub const PERSIST_TIMEOUT: Bound<Duration> =
        Bound { name: "--persist-timeout", range: secs(1)..=secs(86_400), says: "1s to 24h" };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_operators_write_them() {
        assert_eq!(parse_duration("75s").unwrap(), Duration::from_secs(75));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("75s"));
    }

    #[test]
    fn listen_specs_with_app_overrides() {
        let s: ListenSpec = "198.18.0.1:80=http".parse().unwrap();
        assert_eq!(s.addr, "198.18.0.1:80".parse().unwrap());
        assert_eq!(s.app, Some(App::Http));
        let s: ListenSpec = "[fd00::1]:80=http".parse().unwrap();
        assert!(s.addr.is_ipv6());
        let s: ListenSpec = "0.0.0.0:7".parse().unwrap();
        assert_eq!(s.app, None);
        let s: ListenSpec = "198.18.0.1:5201=proxy=198.18.0.9:5201".parse().unwrap();
        assert_eq!(s.app, Some(App::Proxy(crate::apps::ProxyOptions { backend: "198.18.0.9:5201".parse().unwrap(), proxy_protocol: None })));
        assert!("198.18.0.1".parse::<ListenSpec>().is_err());
        assert!("198.18.0.1:0".parse::<ListenSpec>().unwrap_err().contains("port"));
        for text in ["198.18.0.1:80=http", "[fd00::1]:8080", "0.0.0.0:7=echo", "0.0.0.0:80=proxy=127.0.0.1:8080,proxy-protocol=v2"] {
            assert_eq!(text.parse::<ListenSpec>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn flags_override_file_and_defaults_are_the_seeds() {
        let file: FileConfig = toml::from_str(
            r#"
            iface = "eth0"
            listen = ["198.18.0.1:80=http", "198.18.0.1:7"]
            app = "discard"
            keepalive_idle = "10m"
            keepalive_probes = 3
            msl = "1s"
            busy_poll = "50us"
            tx_coalesce = "0s"
            cookie_miss_hold = "300ms"
            synack_retries = 2
            prefer_busy_poll = 64
            coalesce = "off"
            napi_threads = "batch"
            gso = "off"
            xdp_tx = "redirect"
            app_threads = "worker"
            metrics = "[::1]:9464"
            ecn = false
            "#,
        )
        .unwrap();
        let flags = FlagConfig {
            keepalive_probes: Some(5),
            xdp_mode: Some(AttachMode::Skb),
            ..Default::default()
        };
        let c = merge(flags, file).unwrap();
        assert_eq!(c.iface, "eth0");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.app_for(&c.listen[0]), App::Http);
        assert_eq!(c.app_for(&c.listen[1]), App::Discard);
        assert_eq!(c.keepalive.idle, Duration::from_secs(600));
        assert_eq!(c.keepalive.interval, Duration::from_secs(75));
        assert_eq!(c.keepalive.probes, 5);
        assert_eq!(c.msl, Duration::from_secs(1));
        assert_eq!(c.xdp_mode, AttachMode::Skb);
        assert_eq!(c.xdp_tx, XdpTx::Redirect);
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        assert_eq!(c.tx_coalesce, Duration::ZERO);
        assert_eq!(c.cookie_miss_hold, Duration::from_millis(300));
        assert_eq!(c.synack_retries, 2);
        assert_eq!(c.prefer_busy_poll, 64);
        assert_eq!(c.coalesce, CoalesceMode::Off);
        assert_eq!(c.napi_threads, NapiThreadsMode::Batch);
        assert_eq!(c.gso, GsoMode::Off);
        assert_eq!(c.app_threads, AppThreads::Worker);
        assert_eq!(c.metrics, Some("[::1]:9464".parse().unwrap()));
        assert!(!c.ecn);

        let d = merge(
            FlagConfig {
                iface: Some("veth0".into()),
                listen: vec!["198.18.0.1:7".parse().unwrap()],
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(d.keepalive, Keepalive::default());
        assert_eq!(d.keepalive.idle, Duration::from_secs(7200));
        assert_eq!(d.keepalive.probes, 10);
        assert_eq!(d.msl, Duration::from_secs(30));
        assert_eq!(d.app, App::Echo);
        assert_eq!(d.busy_poll, Duration::ZERO);
        assert_eq!(d.tx_coalesce, Duration::from_micros(20));
        assert_eq!(d.cookie_miss_hold, Duration::from_secs(1));
        // As Linux's net.ipv4.tcp_synack_retries.
        assert_eq!(d.synack_retries, 5);
        assert_eq!(d.prefer_busy_poll, 0);
        assert_eq!(d.coalesce, CoalesceMode::Auto);
        assert_eq!(d.napi_threads, NapiThreadsMode::Keep);
        assert_eq!(d.gso, GsoMode::Auto);
        assert_eq!(d.xdp_tx, XdpTx::Auto);
        assert_eq!(d.app_threads, AppThreads::Engine);
        assert_eq!(d.metrics, None);
        // As Linux's net.ipv4.tcp_ecn=2: ECN when the client asks.
        assert!(d.ecn);
        let listen = vec!["198.18.0.1:7".parse().unwrap()];
        let off = FlagConfig { iface: Some("veth0".into()), listen, no_ecn: true, ..Default::default() };
        assert!(!merge(off, toml::from_str("ecn = true").unwrap()).unwrap().ecn, "the flag wins");
    }

    #[test]
    fn listeners_in_the_file_as_strings_or_tables() {
        let file = toml::from_str::<FileConfig>(
            r#"
            iface = "eth0"
            listen = ["0.0.0.0:7=echo"]

            [[listen]]
            addr = "0.0.0.0:80"
            app = "proxy"
            backend = "127.0.0.1:8080"
            proxy_protocol = "v2"

            [[listen]]
            addr = "[::]:8000"
            app = "http-proxy"
            backend = "[::1]:8080"
            pool = 16
            timeout = "5s"

            [[listen]]
            addr = "0.0.0.0:9"
            "#,
        );
        // TOML keeps a key's values together: `listen = [...]` and `[[listen]]` tables cannot both
        // be given; the array may hold tables inline instead.
        assert!(file.is_err());
        let file: FileConfig = toml::from_str(
            r#"
            iface = "eth0"
            listen = [
                "0.0.0.0:7=echo",
                { addr = "0.0.0.0:80", app = "proxy", backend = "127.0.0.1:8080", proxy_protocol = "v2" },
                { addr = "[::]:8000", app = "http-proxy", backend = "[::1]:8080", pool = 16, timeout = "5s" },
                { addr = "0.0.0.0:9" },
            ]
            "#,
        )
        .unwrap();
        let c = merge(FlagConfig::default(), file).unwrap();
        let apps: Vec<String> = c.listen.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            apps,
            [
                "0.0.0.0:7=echo",
                "0.0.0.0:80=proxy=127.0.0.1:8080,proxy-protocol=v2",
                "[::]:8000=http-proxy=[::1]:8080,pool=16,timeout=5s",
                "0.0.0.0:9",
            ]
        );
        let tables: FileConfig = toml::from_str(
            r#"
            iface = "eth0"
            [[listen]]
            addr = "0.0.0.0:80"
            app = "http-proxy"
            backend = "127.0.0.1:8080"
            "#,
        )
        .unwrap();
        assert_eq!(merge(FlagConfig::default(), tables).unwrap().listen[0].to_string(), "0.0.0.0:80=http-proxy=127.0.0.1:8080");
        let bad = |text: &str| {
            toml::from_str::<FileConfig>(text).map_err(|e| e.to_string()).and_then(|f| merge(FlagConfig::default(), f).map(drop))
        };
        assert!(bad("iface = \"x\"\n[[listen]]\naddr = \"0.0.0.0:80\"\nbackend = \"127.0.0.1:8\"").unwrap_err().contains("need app"));
        assert!(bad("iface = \"x\"\n[[listen]]\naddr = \"0.0.0.0:80\"\npool_size = 3").unwrap_err().contains("pool_size"));
        assert!(bad("iface = \"x\"\n[[listen]]\naddr = \"0.0.0.0:80\"\napp = \"proxy\"\nbackend = \"127.0.0.1:8\"\nproxy_protocol = \"v9\"").unwrap_err().contains("choose v1"));
        assert!(bad("iface = \"x\"\nlisten = [7]").unwrap_err().contains("ADDR:PORT"));
    }

    #[test]
    fn mistakes_say_what_to_do() {
        assert!(merge(FlagConfig::default(), FileConfig::default()).unwrap_err().contains("--iface"));
        let no_listen = FlagConfig { iface: Some("x".into()), ..Default::default() };
        assert!(merge(no_listen, FileConfig::default()).unwrap_err().contains("--listen"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let threads: FileConfig = toml::from_str(r#"app_threads = "many""#).unwrap();
        let flags = FlagConfig { iface: Some("x".into()), listen: vec!["198.18.0.1:7".parse().unwrap()], ..Default::default() };
        assert!(merge(flags.clone(), threads).unwrap_err().contains("engine or worker"));
        let metrics: FileConfig = toml::from_str(r#"metrics = "9464""#).unwrap();
        assert!(merge(flags.clone(), metrics).unwrap_err().contains("ADDR:PORT"));
        // Every named setting of the file says its names.
        for (line, want) in [
            (r#"xdp_mode = "driver""#, r#"xdp_mode "driver": choose native or skb"#),
            (r#"app_threads = "many""#, r#"app_threads "many": choose engine or worker"#),
            (r#"coalesce = "on""#, r#"coalesce "on": choose auto or off"#),
            (r#"gso = "on""#, r#"gso "on": choose auto or off"#),
            (r#"xdp_tx = "xmit""#, r#"xdp_tx "xmit": choose auto or tx or redirect"#),
            (r#"drain_syns = "keep""#, r#"drain_syns "keep": choose drop or pass"#),
        ] {
            let file: FileConfig = toml::from_str(line).unwrap();
            assert_eq!(merge(flags.clone(), file).unwrap_err(), want);
        }
        let file: FileConfig = toml::from_str("xdp_mode = \"skb\"\ngso = \"off\"\ndrain_syns = \"pass\"").unwrap();
        let c = merge(flags, file).unwrap();
        assert_eq!((c.xdp_mode, c.gso, c.cluster.drain_syns), (AttachMode::Skb, GsoMode::Off, DrainSyns::Pass));
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_range() {
        let base = || FlagConfig {
            iface: Some("x".into()),
            listen: vec!["198.18.0.1:7".parse().unwrap()],
            ..Default::default()
        };
        let huge = Duration::from_secs(1 << 63);
        let cases: Vec<(FlagConfig, &str)> = vec![
            (FlagConfig { msl: Some(huge), ..base() }, "--msl"),
            (FlagConfig { msl: Some(Duration::ZERO), ..base() }, "--msl"),
            (FlagConfig { grace: Some(huge), ..base() }, "--grace"),
            (FlagConfig { busy_poll: Some(Duration::from_secs(5)), ..base() }, "--busy-poll"),
            (FlagConfig { tx_coalesce: Some(Duration::from_micros(1001)), ..base() }, "--tx-coalesce"),
            (FlagConfig { cookie_miss_hold: Some(Duration::from_secs(61)), ..base() }, "--cookie-miss-hold"),
            (FlagConfig { synack_retries: Some(7), ..base() }, "--synack-retries"),
            (FlagConfig { prefer_busy_poll: Some(4097), ..base() }, "--prefer-busy-poll"),
            (FlagConfig { keepalive_idle: Some(huge), ..base() }, "--keepalive-idle"),
            (FlagConfig { keepalive_idle: Some(Duration::ZERO), ..base() }, "--keepalive-idle"),
            (FlagConfig { keepalive_interval: Some(Duration::ZERO), ..base() }, "--keepalive-interval"),
            (FlagConfig { keepalive_probes: Some(0), ..base() }, "--keepalive-probes"),
            (FlagConfig { keepalive_probes: Some(u32::MAX), ..base() }, "--keepalive-probes"),
            (FlagConfig { max_conns: Some(0), ..base() }, "--max-conns"),
            (FlagConfig { max_conns: Some(u32::MAX), ..base() }, "--max-conns"),
            (FlagConfig { mem_limit: Some(1 << 20), ..base() }, "--mem-limit"),
            (FlagConfig { mem_limit: Some(u64::MAX), ..base() }, "--mem-limit"),
            (FlagConfig { max_conns_per_source: Some(0), ..base() }, "--max-conns-per-source"),
            (FlagConfig { mem_per_source: Some(4096), ..base() }, "--mem-per-source"),
            (FlagConfig { persist_timeout: Some(Duration::ZERO), ..base() }, "--persist-timeout"),
            (FlagConfig { persist_timeout: Some(huge), ..base() }, "--persist-timeout"),
        ];
        for (flags, name) in cases {
            let err = merge(flags, FileConfig::default()).unwrap_err();
            assert!(err.starts_with(name) && err.contains("allowed"), "{name}: {err}");
        }
        // The same bounds hold for the file.
        let file: FileConfig = toml::from_str(r#"msl = "1000000h""#).unwrap();
        assert!(merge(base(), file).unwrap_err().contains("--msl"));
        // The edges are allowed.
        let edges = FlagConfig {
            msl: Some(Duration::from_millis(100)),
            grace: Some(Duration::ZERO),
            busy_poll: Some(Duration::from_millis(10)),
            tx_coalesce: Some(Duration::from_millis(1)),
            cookie_miss_hold: Some(Duration::ZERO),
            synack_retries: Some(0),
            keepalive_probes: Some(127),
            max_conns: Some(1 << 24),
            mem_limit: Some(16 << 20),
            max_conns_per_source: Some(1),
            mem_per_source: Some(1 << 40),
            persist_timeout: Some(Duration::from_secs(1)),
            ..base()
        };
        let c = merge(edges, FileConfig::default()).unwrap();
        assert_eq!(c.memory.limit, 16 << 20);
        assert_eq!(c.memory.conns_per_source, Some(1));
        let file: FileConfig = toml::from_str("mem_limit = \"256M\"\nmem_per_source = \"8M\"\npersist_timeout = \"2m\"").unwrap();
        let c = merge(base(), file).unwrap();
        assert_eq!((c.memory.limit, c.memory.bytes_per_source), (256 << 20, Some(8 << 20)));
        assert_eq!(c.memory.persist_timeout, Duration::from_secs(120));
        assert_eq!(merge(base(), FileConfig::default()).unwrap().memory, MemoryLimits::default());
        assert!(merge(base(), toml::from_str("mem_limit = \"lots\"").unwrap()).unwrap_err().contains("bad size"));
    }

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size(" 4G "), Ok(4 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "M", "12X", "-1", "99999999999T"] {
            assert!(parse_size(bad).unwrap_err().contains("bad size"), "{bad}");
        }
    }

    #[test]
    fn cluster_settings_from_flags_and_file() {
        let file: FileConfig = toml::from_str(
            r#"
            iface = "eth0"
            listen = ["198.19.0.1:80"]
            cookie_key_file = "/etc/synx/cookie.key"
            peer_hosts = ["198.18.1.2", "198.18.1.6"]
            drain_syns = "pass"
            "#,
        )
        .unwrap();
        let c = merge(FlagConfig::default(), file).unwrap().cluster;
        assert_eq!(c.cookie_key_file.as_deref(), Some(Path::new("/etc/synx/cookie.key")));
        assert_eq!(c.peer_hosts, ["198.18.1.2".parse::<std::net::Ipv4Addr>().unwrap(), "198.18.1.6".parse().unwrap()]);
        assert_eq!((c.peer_port, c.drain_syns), (ClusterOptions::DEFAULT_PEER_PORT, DrainSyns::Pass));
        let alone = FlagConfig { iface: Some("x".into()), listen: vec!["198.18.0.1:7".parse().unwrap()], ..Default::default() };
        assert_eq!(merge(alone.clone(), FileConfig::default()).unwrap().cluster, ClusterOptions {
            peer_port: ClusterOptions::DEFAULT_PEER_PORT,
            ..ClusterOptions::default()
        });
        let bad: FileConfig = toml::from_str(r#"drain_syns = "reset""#).unwrap();
        assert!(merge(alone.clone(), bad).unwrap_err().contains("drop or pass"));
        assert!(merge(FlagConfig { peer_port: Some(0), ..alone }, FileConfig::default()).unwrap_err().contains("--peer-port"));
    }

    #[test]
    fn a_listener_given_twice_is_an_error() {
        let flags = FlagConfig {
            iface: Some("x".into()),
            listen: vec!["198.18.0.1:7=echo".parse().unwrap(), "198.18.0.1:7=http".parse().unwrap()],
            ..Default::default()
        };
        assert!(merge(flags, FileConfig::default()).unwrap_err().contains("198.18.0.1:7 is given twice"));
        let file: FileConfig = toml::from_str(r#"listen = ["[fd00::1]:80", "[fd00::1]:80=http", "[fd00::1]:81"]"#).unwrap();
        let flags = FlagConfig { iface: Some("x".into()), ..Default::default() };
        assert!(merge(flags, file).unwrap_err().contains("twice"));
    }
}
