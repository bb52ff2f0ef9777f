//! A bench stopped by a signal (Ctrl-C, SIGTERM from a timeout, SIGHUP from a closed terminal)
//! leaves the machine as it found it. The rig's guards undo everything in `Drop`, which a
//! signal's default action never runs: before this, an interrupted bench left its namespaces
//! (a daemon, a kernel server and a million client sockets still running in them), the
//! machine's agent pinned off the server CPU and `netdev_max_backlog` raised, for good.
//!
//! [`install`] catches those signals (signal-hook's handler, which only writes to a pipe; a
//! handler, unlike a blocked mask, is not inherited by the processes the bench starts: they
//! keep the default actions) and waits for them on a thread of its own, which then kills this
//! process's descendants and everything in its namespaces, removes the namespaces, performs
//! every [`Undo`] still registered, and exits with 128 + the signal, as the default action
//! would have.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A signal came: the bench's thread stops at its next [`checkpoint`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The bench's thread has stopped at a checkpoint.
static PARKED: AtomicBool = AtomicBool::new(false);
/// How long the signal path waits for the bench's thread to reach a checkpoint (it gets there
/// fast once its processes are gone: its round fails) before cleaning up regardless.
const PARK_WAIT: Duration = Duration::from_secs(5);

/// Where the bench's thread stops once a signal has come (before it starts a rig or a group,
/// writes the JSON or returns): it waits there for the signal path to clean up and exit, so it
/// neither builds a rig nor reports rows of the killed round, nor exits first with success.
pub fn checkpoint() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        PARKED.store(true, Ordering::SeqCst);
        loop {
            std::thread::park();
        }
    }
}

/// Something the bench changed outside its namespaces, to put back.
pub enum Undo {
    /// Thread `tid` had CPUs `old`.
    Affinity { tid: u32, old: libc::cpu_set_t },
    /// The file (a sysctl) held `old`.
    Write { path: &'static str, old: String },
}

impl Undo {
    fn apply(&self) {
        match self {
            Undo::Affinity { tid, old } => super::peers::restore_affinity(*tid, old),
            Undo::Write { path, old } => {
                let _ = std::fs::write(path, old);
            }
        }
    }
}

static UNDO: Mutex<Vec<(u64, Undo)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// An [`Undo`] kept for the signal path until its owner has performed it (dropping the
/// registration forgets it; the owner's own `Drop` is the normal path).
pub struct Registered(u64);

/// Keep `undo` for the signal path.
pub fn register(undo: Undo) -> Registered {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    UNDO.lock().unwrap_or_else(|e| e.into_inner()).push((id, undo));
    Registered(id)
}

impl Drop for Registered {
    fn drop(&mut self) {
        UNDO.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _)| *id != self.0);
    }
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Take over SIGINT, SIGTERM and SIGHUP for the rest of the process (see the module docs).
pub fn install() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new(SIGNALS)?;
    std::thread::Builder::new().name("bench-signals".into()).spawn(move || {
        let Some(sig) = signals.forever().next() else { return };
        eprintln!("bench: signal {sig}: stopping every process the bench started, removing its namespaces, putting the machine back");
        INTERRUPTED.store(true, Ordering::SeqCst);
        let (killed, namespaces, undone) = clean_up();
        eprintln!("bench: stopped {killed} processes, removed {namespaces} namespaces, undid {undone} changes");
        std::process::exit(128 + sig);
    })?;
    Ok(())
}

/// What the signal path does, returning how many processes it killed, namespaces it removed
/// and changes it undid. The bench's thread runs on until its next checkpoint, which it reaches
/// once its round has failed for want of the processes killed here; then what it may have
/// started meanwhile goes too.
fn clean_up() -> (usize, usize, usize) {
    let (mut killed, mut namespaces) = (kill_descendants(), testbed::remove_own_namespaces());
    let since = Instant::now();
    while !PARKED.load(Ordering::SeqCst) && since.elapsed() < PARK_WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        let (k, n) = (kill_descendants(), testbed::remove_own_namespaces());
        (killed, namespaces) = (killed + k, namespaces + n);
        if k + n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let undo = std::mem::take(&mut *UNDO.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, u) in &undo {
        u.apply();
    }
    (killed, namespaces, undo.len())
}

/// SIGKILL every process descended from this one (perf, load generators, the daemons: started
/// through `ip netns exec`, which execs them, so they are our children). Returns how many.
fn kill_descendants() -> usize {
    let me = std::process::id();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut stack = children.get(&me).cloned().unwrap_or_default();
    let mut n = 0;
    while let Some(pid) = stack.pop() {
        // SAFETY: a signal to a process this one started (directly or through its children).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        n += 1;
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    n
}

/// The parent of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    ppid_in_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The parent's pid in a /proc/PID/stat line: the second field after the parenthesised name,
/// which may itself hold spaces and parentheses.
fn ppid_in_stat(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_forgotten_once_dropped_and_kept_until_then() {
        let count = || UNDO.lock().unwrap().len();
        let before = count();
        let r = register(Undo::Write { path: "/nonexistent/synx-bench-test", old: String::new() });
        assert_eq!(count(), before + 1);
        drop(r);
        assert_eq!(count(), before);
    }

    #[test]
    fn a_process_the_bench_starts_keeps_the_default_actions_of_the_signals_it_takes() {
        let signals = signal_hook::iterator::Signals::new(SIGNALS).unwrap();
        let mask = |pid: u32, field: &str| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status.lines().find_map(|l| Some(u64::from_str_radix(l.strip_prefix(field)?.trim(), 16).unwrap())).unwrap()
        };
        let ours: u64 = SIGNALS.iter().map(|&s| 1 << (s - 1)).sum();
        assert_eq!(mask(std::process::id(), "SigCgt:") & ours, ours, "the signals are not caught here");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let (caught, blocked) = (mask(child.id(), "SigCgt:"), mask(child.id(), "SigBlk:"));
        child.kill().unwrap();
        child.wait().unwrap();
        signals.handle().close();
        assert_eq!((caught & ours, blocked & ours), (0, 0), "a child caught or blocked the bench's signals");
    }

    #[test]
    fn the_parent_is_read_past_a_name_with_spaces_and_parentheses() {
        assert_eq!(ppid_in_stat("4242 (a (b) c) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(ppid_in_stat("4242 (no end S 17"), None);
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(parent_of(child.id()), Some(me));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
