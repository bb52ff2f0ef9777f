//! How an app is written. On the command line: `NAME[=BACKEND[,KEY=VALUE]...]`, e.g.
//! `proxy=127.0.0.1:8080,proxy-protocol=v2` or `http-proxy=127.0.0.1:8080,pool=32`: the backend
//! comes first because every proxy has one, and the options follow as `key=value` pairs, which
//! need no shell quoting and leave room for more. In the TOML, a `[[listen]]` table spells the
//! same settings as keys (`crate::config::ListenTable`); keys may be written with `-` or `_`.

use std::{fmt, net::SocketAddr, str::FromStr};

use super::{App, HttpProxyOptions, ProxyOptions, ProxyProtocol};

const CHOOSE: &str = "choose echo, discard, http, proxy=HOST:PORT or http-proxy=HOST:PORT";

impl App {
    /// An app from its name, its backend and its options (keys with `-` or `_`).
    pub fn build(name: &str, backend: Option<&str>, options: &[(String, String)]) -> Result<App, String> {
        let needs_backend = |example: &str| -> Result<SocketAddr, String> {
            let addr = backend.ok_or_else(|| format!("{name} needs a backend: write {name}={example}"))?;
            addr.trim().parse().map_err(|e| {
                format!("bad {name} backend {addr:?}: {e} (write {name}=HOST:PORT, e.g. {name}={example}; IPv6 as [fd00::5]:8080)")
            })
        };
        let no_options = |app: App| match options.first() {
            Some((k, _)) => Err(format!("{name} takes no option {k:?}")),
            None => Ok(app),
        };
        match name {
            "echo" | "discard" | "http" if backend.is_some() => Err(format!("{name} takes no backend")),
            "echo" => no_options(App::Echo),
            "discard" => no_options(App::Discard),
            "http" => no_options(App::Http),
            "proxy" => {
                let mut p = ProxyOptions { backend: needs_backend("127.0.0.1:8080")?, proxy_protocol: None };
                for (key, value) in options {
                    match key.replace('_', "-").as_str() {
                        "proxy-protocol" => p.proxy_protocol = Some(value.parse()?),
                        other => return Err(format!("proxy has no option {other:?}: it takes proxy-protocol=v1|v2")),
                    }
                }
                Ok(App::Proxy(p))
            }
            "http-proxy" => {
                let mut p = HttpProxyOptions::new(needs_backend("127.0.0.1:8080")?);
                for (key, value) in options {
                    match key.replace('_', "-").as_str() {
                        "pool" => {
                            let n = value.parse().map_err(|e| format!("http-proxy pool={value:?}: {e}"))?;
                            p.pool = HttpProxyOptions::POOL.check(n)?;
                        }
                        "timeout" => {
                            let t = crate::config::parse_duration(value)?;
                            p.timeout = HttpProxyOptions::TIMEOUT.check(t)?;
                        }
                        other => {
                            return Err(format!(
                                "http-proxy has no option {other:?}: it takes pool=N (backend connections per engine thread) and timeout=DURATION"
                            ));
                        }
                    }
                }
                Ok(App::HttpProxy(p))
            }
            _ => Err(format!("unknown app {name:?}: {CHOOSE}")),
        }
    }
}

impl FromStr for App {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = match s.split_once('=') {
            Some((name, rest)) => (name, Some(rest)),
            None => (s, None),
        };
        let mut fields = rest.into_iter().flat_map(|r| r.split(','));
        let backend = fields.next();
        let options = fields
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(format!("option {kv:?} of {name}: write KEY=VALUE, e.g. {name}=127.0.0.1:8080,{}", example_option(name))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        App::build(name.trim(), backend, &options)
    }
}

fn example_option(name: &str) -> &'static str {
    match name {
        "http-proxy" => "pool=32",
        _ => "proxy-protocol=v2",
    }
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            App::Echo => f.write_str("echo"),
            App::Discard => f.write_str("discard"),
            App::Http => f.write_str("http"),
            App::Proxy(p) => {
                write!(f, "proxy={}", p.backend)?;
                match p.proxy_protocol {
                    Some(v) => write!(f, ",proxy-protocol={v}"),
                    None => Ok(()),
                }
            }
            App::HttpProxy(p) => {
                write!(f, "http-proxy={}", p.backend)?;
                let default = HttpProxyOptions::new(p.backend);
                if p.pool != default.pool {
                    write!(f, ",pool={}", p.pool)?;
                }
                if p.timeout != default.timeout {
                    write!(f, ",timeout={}", humantime::format_duration(p.timeout))?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "v1" | "1" => Ok(ProxyProtocol::V1),
            "v2" | "2" => Ok(ProxyProtocol::V2),
            other => Err(format!("proxy-protocol={other:?}: choose v1 (text) or v2 (binary)")),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn app_names_parse_and_print() {
        for s in [
            "echo",
            "discard",
            "http",
            "proxy=198.18.0.5:80",
            "proxy=[fd00::5]:8080",
            "proxy=127.0.0.1:8080,proxy-protocol=v1",
            "proxy=[fd00::5]:8080,proxy-protocol=v2",
            "http-proxy=127.0.0.1:8080",
            "http-proxy=127.0.0.1:8080,pool=8",
            "http-proxy=[::1]:8080,pool=8,timeout=5s",
        ] {
            assert_eq!(s.parse::<App>().unwrap().to_string(), s);
        }
        let p: App = "proxy=127.0.0.1:8080,proxy_protocol=2".parse().unwrap();
        assert_eq!(p.to_string(), "proxy=127.0.0.1:8080,proxy-protocol=v2");
        let App::HttpProxy(h) = "http-proxy=127.0.0.1:80,timeout=1m30s".parse().unwrap() else { panic!() };
        assert_eq!(h.timeout, Duration::from_secs(90));
    }

    #[test]
    fn mistakes_in_an_app_say_what_to_write() {
        let err = |s: &str| s.parse::<App>().unwrap_err();
        assert!(err("proxy=nohost").contains("proxy=HOST:PORT"));
        assert!(err("proxy").contains("needs a backend"));
        assert!(err("ftp").contains("choose echo"));
        assert!(err("echo=1.2.3.4:5").contains("no backend"));
        assert!(err("proxy=127.0.0.1:80,proxy-protocol=v3").contains("choose v1"));
        assert!(err("proxy=127.0.0.1:80,send-proxy").contains("KEY=VALUE"));
        assert!(err("proxy=127.0.0.1:80,pool=3").contains("proxy-protocol=v1|v2"));
        assert!(err("http-proxy=127.0.0.1:80,pool=0").contains("allowed"));
        assert!(err("http-proxy=127.0.0.1:80,timeout=0s").contains("allowed"));
        assert!(err("http-proxy=127.0.0.1:80,proxy-protocol=v1").contains("pool=N"));
    }
}
