//! nginx (Debian's package) started inside a namespace with a configuration of the caller's,
//! in a directory of its own: the real backend that parses the PROXY protocol, and the reverse
//! proxy synx is measured against. Stopped, and its directory removed, on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{Netns, wait_for};

pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Start nginx in `ns`: `main` goes at the top level of the configuration (e.g.
    /// `worker_processes 2;`), `http` inside its `http {}` block, with `{dir}` replaced by the
    /// instance's directory (for logs). Returns once every port of `ports` listens in `ns`.
    pub fn start(ns: &Netns, main: &str, events: &str, http: &str, ports: &[u16]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("synx-nginx-{}-{}", ns.name(), std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.to_str().context("temp dir path")?;
        // Everything nginx writes goes to its own directory; the workers run as root so that
        // they can write there. No daemon: the child is nginx's master, stopped on drop.
        let conf = format!(
            "daemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n{main}\n\
             events {{\n{events}\n}}\n\
             http {{\n\
             client_body_temp_path {d}/client_body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             {}\n}}\n",
            http.replace("{dir}", d)
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = ns
            .command("nginx")
            .args(["-p", d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (cargo xtask setup installs it)")?;
        let mut nginx = Self { child, dir };
        let listening = |port: u16| {
            ns.exec("ss", &["-Htln", &format!("sport = :{port}")]).is_ok_and(|s| !s.trim().is_empty())
        };
        if !wait_for(Duration::from_secs(10), || {
            matches!(nginx.child.try_wait(), Ok(Some(_))) || ports.iter().all(|p| listening(*p))
        }) || !ports.iter().all(|p| listening(*p))
        {
            let mut stderr = String::new();
            if let (Ok(Some(_)), Some(mut e)) = (nginx.child.try_wait(), nginx.child.stderr.take()) {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut stderr);
            }
            bail!("nginx did not start: {}{}", stderr.trim(), nginx.error_log());
        }
        Ok(nginx)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the instance's directory (an access log named in the configuration).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        self.read("error.log")
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master's and the workers' pids.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.pid();
        let mut pids = vec![master];
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
        pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown; its workers go with the master.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !wait_for(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
