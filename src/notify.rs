//! Telling systemd how carwatch is doing (`Type=notify`).
//!
//! `READY=1` once the cameras are started and the model has run a test batch;
//! `STATUS=` a one-line summary every few seconds; `WATCHDOG=1` at half the watchdog
//! interval, but only while the inference loop's heartbeat is fresh, so a wedged worker
//! stops the pings and systemd restarts the service. Without `NOTIFY_SOCKET` (not run by
//! systemd) every call does nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sd_notify::NotifyState;

use crate::camera::{CameraShared, State};
use crate::metrics::Metrics;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The one-line status: cameras streaming, hits since start, outbox depth.
pub fn summary(cameras: &[Arc<CameraShared>], metrics: &Metrics, hits: u64) -> String {
    let streaming = cameras.iter().filter(|c| c.state().state == State::Streaming).count();
    let outbox = metrics.outbox_depth.load(Ordering::Relaxed);
    let broker = if metrics.mqtt_connected.load(Ordering::Relaxed) { "connected" } else { "disconnected" };
    format!(
        "{streaming}/{} cameras streaming, {hits} hits since start, outbox {outbox}, broker {broker}",
        cameras.len()
    )
}

/// Sends STATUS= every `status_every` and WATCHDOG=1 while the heartbeat is fresh, until
/// `stop` fires (thread `notify`).
pub fn run(cameras: Vec<Arc<CameraShared>>, metrics: Arc<Metrics>, hits: impl Fn() -> u64, stop: Receiver<()>) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = match watchdog {
        Some(w) => (w / 2).min(Duration::from_secs(5)),
        None => Duration::from_secs(5),
    };
    // The worker goes round at least every half second when idle; a batch on a slow CPU
    // takes a few seconds. Silence for half the watchdog interval means it is stuck.
    let stale = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(30));
    let mut last_warned = false;
    loop {
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let line = summary(&cameras, &metrics, hits());
        let mut states = vec![NotifyState::Status(&line)];
        let age = metrics.heartbeat.age();
        if watchdog.is_some() {
            if age < stale {
                states.push(NotifyState::Watchdog);
                last_warned = false;
            } else if !last_warned {
                tracing::error!("the inference loop has not gone round for {age:?}: withholding the watchdog ping");
                last_warned = true;
            }
        }
        send(&states);
    }
}
