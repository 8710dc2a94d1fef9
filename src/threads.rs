//! Long-lived threads, named and supervised.
//!
//! Every thread of `watch` that should live as long as the daemon (cameras, inference,
//! publisher, MQTT, alerts, inbound, broker, metrics, notify, sightings, snapshots) is started through [`spawn`]. When
//! one ends, by returning or by panicking, a guard reports its name and how it ended on
//! one channel that the daemon's main loop watches: an unexpected end is logged with
//! the thread's name and ends the process non-zero, so systemd restarts it whole rather
//! than leaving, say, a publisher spinning without its MQTT thread. `/health` lists
//! every thread and whether it still runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// A thread that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub name: String,
    pub panicked: bool,
    /// The [`begin`] call the thread was started under.
    pub generation: u64,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.panicked { "panicked" } else { "ended" };
        write!(f, "thread `{}` {how}", self.name)
    }
}

struct Registry {
    /// Test fault: the thread of this name panics (see [`inject_panic`]).
    doomed: Mutex<Option<String>>,
    ended_tx: Sender<Ended>,
    ended_rx: Receiver<Ended>,
    /// Every supervised thread of the current generation, and whether it still runs.
    threads: Mutex<Vec<(String, bool)>>,
    generation: AtomicU64,
}

thread_local! {
    /// This thread's name and generation, when it is supervised.
    static SUPERVISED: std::cell::RefCell<Option<(String, u64)>> = const { std::cell::RefCell::new(None) };
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        // A panic is reported from the hook, before unwinding drops the thread's state:
        // otherwise a thread downstream that notices (a channel closing) could report
        // its own end first, and the log would blame it.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let me = SUPERVISED.with(|s| s.borrow().clone());
            if let (Some((name, generation)), Some(r)) = (me, R.get()) {
                let _ = r.ended_tx.send(Ended { name, panicked: true, generation });
            }
            previous(info)
        }));
        let (ended_tx, ended_rx) = crossbeam_channel::unbounded();
        Registry {
            doomed: Mutex::new(None),
            ended_tx,
            ended_rx,
            threads: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        }
    })
}

/// Reports the thread's end when dropped, on return and on unwinding alike.
struct Guard(String, u64);

impl Drop for Guard {
    fn drop(&mut self) {
        let r = registry();
        if let Ok(mut t) = r.threads.lock()
            && r.generation.load(Ordering::SeqCst) == self.1
            && let Some(entry) = t.iter_mut().rev().find(|(n, running)| *n == self.0 && *running)
        {
            entry.1 = false;
        }
        // A panic was reported by the hook already.
        if !std::thread::panicking() {
            let _ = r.ended_tx.send(Ended { name: std::mem::take(&mut self.0), panicked: false, generation: self.1 });
        }
    }
}

/// Starts a new generation (one `watch` run; `bench` runs several in one process) and
/// returns it: threads of earlier runs that end late are then told apart.
pub fn begin() -> u64 {
    let r = registry();
    if let Ok(mut t) = r.threads.lock() {
        t.clear();
    }
    r.generation.fetch_add(1, Ordering::SeqCst) + 1
}

/// Starts thread `name` running `f`, supervised.
pub fn spawn<F>(name: impl Into<String>, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let name = name.into();
    let r = registry();
    if let Ok(mut t) = r.threads.lock() {
        t.push((name.clone(), true));
    }
    let generation = r.generation.load(Ordering::SeqCst);
    let guard = Guard(name.clone(), generation);
    let me = (name.clone(), generation);
    std::thread::Builder::new().name(name).spawn(move || {
        let _guard = guard;
        SUPERVISED.with(|s| *s.borrow_mut() = Some(me));
        f()
    })
}

/// Test fault (`watch --test-fault panic-thread:NAME`): the running supervised thread
/// `name` panics at its next [`checkpoint`]. Threads check at points where they go round
/// anyway; nothing else is affected.
pub fn inject_panic(name: &str) {
    if let Ok(mut d) = registry().doomed.lock() {
        *d = Some(name.to_string());
    }
}

/// Panics if a test asked this thread to (see [`inject_panic`]); otherwise nothing.
pub fn checkpoint() {
    let doomed = registry().doomed.lock().ok().and_then(|d| d.clone());
    if let Some(name) = doomed
        && std::thread::current().name() == Some(name.as_str())
    {
        panic!("test fault: thread `{name}` was asked to panic");
    }
}

/// Where ends are reported (the daemon's main loop selects on it).
pub fn ended() -> Receiver<Ended> {
    registry().ended_rx.clone()
}

/// Every supervised thread of the current generation and whether it still runs.
pub fn list() -> Vec<(String, bool)> {
    registry().threads.lock().map(|t| t.clone()).unwrap_or_default()
}

/// Ends the process at once with `code` when a supervised thread still runs (a model
/// load that cannot be interrupted, a thread that did not finish in time): returning
/// from `main` would run libtorch's static destructors under that thread, which crashes
/// the process (SIGSEGV) instead of exiting `code`. Returns when none runs.
pub fn leave_if_any_running(code: i32) {
    let running: Vec<String> = list().into_iter().filter(|(_, alive)| *alive).map(|(name, _)| name).collect();
    if running.is_empty() {
        return;
    }
    tracing::debug!("leaving thread(s) {} behind", running.join(", "));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process without running anything else; nothing in this
    // process is left unflushed (the outbox and sightings are written as they go).
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_panics_are_reported_by_name() {
        let ended = ended();
        spawn("test-returns", || {}).unwrap().join().unwrap();
        let h = spawn("test-panics", || panic!("on purpose")).unwrap();
        assert!(h.join().is_err());
        let mut seen: Vec<Ended> = Vec::new();
        while seen.len() < 2 {
            let e = ended.recv_timeout(std::time::Duration::from_secs(5)).expect("an end report");
            if e.name.starts_with("test-") {
                seen.push(e);
            }
        }
        let how: Vec<(&str, bool)> = seen.iter().map(|e| (e.name.as_str(), e.panicked)).collect();
        assert!(how.contains(&("test-returns", false)) && how.contains(&("test-panics", true)), "{seen:?}");
    }
}
