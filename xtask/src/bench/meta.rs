//! What makes a run reproducible, recorded in its JSON: the commit, the build, the command, the
//! machine (kernel, CPU, mitigations), the tools' versions. The rigs add their devices,
//! offloads, sysctls and commands; the peers their configuration.

use testbed::sh;

fn first_line(cmd: &str, args: &[&str]) -> String {
    match std::process::Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("not found ({e})"),
    }
}

pub fn collect(command: &str, profile: &str) -> serde_json::Value {
    let root = crate::workspace_root();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let mut mitigations = serde_json::Map::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") {
        let mut entries: Vec<_> = dir.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let v = std::fs::read_to_string(e.path()).unwrap_or_default();
            mitigations.insert(e.file_name().to_string_lossy().into_owned(), v.trim().into());
        }
    }
    serde_json::json!({
        "command": command,
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default().trim(),
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "build_profile": profile,
        "machine": {
            "kernel": sh("uname", &["-r"]).unwrap_or_default().trim(),
            "uname": sh("uname", &["-a"]).unwrap_or_default().trim(),
            "cpu": cpu,
            "cores": super::rig::cores(),
            "mitigations": mitigations,
            "cmdline": std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim(),
        },
        "tools": {
            "wrk": first_line("wrk", &["-v"]),
            "nft": first_line("nft", &["--version"]),
            "ethtool": first_line("ethtool", &["--version"]),
            "ip": first_line("ip", &["-V"]),
            "rustc": first_line("rustc", &["-V"]),
        },
    })
}
