//! Output: hits, camera status and the active alert list, over MQTT.
//!
//! The `publish` thread owns the MQTT client. It receives [`Event`]s from the inference
//! worker, writes each hit's snapshot, then publishes; it also publishes each camera's
//! status when it changes and every `status_interval`. Topics (see docs/mqtt.md):
//!
//! | topic | retained | payload |
//! | --- | --- | --- |
//! | `{prefix}/hits/{alert_id}` | no, QoS 1 | hit JSON |
//! | `{prefix}/status` | yes | `online` / `offline` (last will) |
//! | `{prefix}/cameras/{name}/status` | yes | camera status JSON |
//! | `{prefix}/alerts/active` | yes | JSON list of active alerts |
//!
//! - [`mqtt`]: the connection and its `mqtt` thread.
//! - [`broker`]: the embedded broker used when none is configured.

pub mod broker;
pub mod mqtt;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use crossbeam_channel::{Receiver, select};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::alerts::AlertSummary;
use crate::camera::{CameraShared, State};
use crate::matcher::Hit;
use crate::model::Level;
use crate::snapshot;
use mqtt::Mqtt;

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-26T15:04:05.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn rfc3339_system(t: SystemTime) -> String {
    Timestamp::try_from(t).map(rfc3339).unwrap_or_default()
}

/// Topic names under one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` must be non-empty, without wildcards or leading/trailing `/`.
    pub fn new(prefix: &str) -> Result<Topics, String> {
        if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['+', '#', '\0']) {
            return Err(format!(
                "topic_prefix `{prefix}` must be non-empty, without + or #, and not start or end with /"
            ));
        }
        Ok(Topics { prefix: prefix.to_string() })
    }

    pub fn hits(&self, alert: &str) -> String {
        format!("{}/hits/{alert}", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }
    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/status", self.prefix)
    }
    pub fn alerts_active(&self) -> String {
        format!("{}/alerts/active", self.prefix)
    }
}

/// What the inference worker tells the publisher.
pub enum Event {
    Hit(Box<Hit>),
    /// The active alert set changed (or is being announced).
    AlertsActive(Vec<AlertSummary>),
}

/// Receives each hit's JSON as it is published.
pub type HitCallback = Box<dyn FnMut(&Value) + Send>;

/// Publisher settings.
pub struct PublisherConfig {
    pub topics: Topics,
    pub snapshot_dir: PathBuf,
    pub snapshot_inline: bool,
    pub snapshot_quality: u8,
    pub status_interval: Duration,
    /// Called with each hit's JSON (`watch --print-hits`).
    pub on_hit: Option<HitCallback>,
}

/// The JSON published for a hit (documented in docs/mqtt.md).
pub fn hit_payload(hit: &Hit, snapshot: Option<&str>, inline: Option<&[u8]>) -> Value {
    let p = &hit.region.prediction;
    let view_p = p
        .marginal(Level::View)
        .into_iter()
        .find(|(v, _)| v.eq_ignore_ascii_case(&hit.leaf.view))
        .map_or(0.0, |(_, q)| q);
    let make_p = p.probability(None, &hit.leaf.make, None);
    let model_p = if make_p > 0.0 { p.probability(None, &hit.leaf.make, Some(&hit.leaf.model)) / make_p } else { 0.0 };
    let c = hit.region.crop;
    let mut v = json!({
        "hit_id": hit.hit_id.to_string(),
        "alert_id": hit.alert.id.as_str(),
        "alert_note": hit.alert.note,
        "camera": hit.camera.name(),
        "time": rfc3339(hit.time),
        "make": hit.leaf.make,
        "model": hit.leaf.model,
        "view": hit.leaf.view,
        "confidence": hit.confidence,
        "probabilities": { "view": view_p, "make": make_p, "model": model_p },
        "path": p.path.iter().map(|c| json!({ "level": c.level, "label": c.label, "probability": c.p })).collect::<Vec<_>>(),
        "region": { "index": hit.region.index, "name": hit.region.name, "x": c.x, "y": c.y, "width": c.width, "height": c.height },
        "frames": hit.frames,
        "snapshot": snapshot,
        "redelivered": false,
    });
    if let Some(bytes) = inline {
        v["snapshot_jpeg_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    v
}

/// A camera's retained status message.
fn camera_status(cam: &CameraShared, fps_in: f64, fps_analysed: f64) -> Value {
    let s = cam.state();
    json!({
        "state": s.state,
        "since": rfc3339_system(s.since),
        "reason": s.reason,
        "url": cam.camera.source.redacted,
        "fps_in": (fps_in * 100.0).round() / 100.0,
        "fps_analysed": (fps_analysed * 100.0).round() / 100.0,
        "dropped": cam.dropped.load(Ordering::Relaxed),
    })
}

struct Rates {
    at: Instant,
    frames_in: u64,
    analysed: u64,
    fps_in: f64,
    fps_analysed: f64,
    last_state: Option<(State, SystemTime)>,
}

/// The publisher: runs until `events` closes, then says `offline` and disconnects.
pub struct Publisher {
    mqtt: Mqtt,
    config: PublisherConfig,
    cameras: Vec<Arc<CameraShared>>,
    rates: HashMap<String, Rates>,
    /// Publishes that rumqttc's queue refused (broker away); retried in order.
    backlog: VecDeque<(String, bool, Vec<u8>)>,
    alerts: Option<Vec<u8>>,
    generation: u64,
}

/// Most messages kept while the broker cannot take them; beyond it the oldest go.
const BACKLOG_LIMIT: usize = 10_000;

impl Publisher {
    pub fn spawn(
        mqtt: Mqtt,
        config: PublisherConfig,
        cameras: Vec<Arc<CameraShared>>,
        events: Receiver<Event>,
    ) -> std::io::Result<JoinHandle<()>> {
        let now = Instant::now();
        let rates = cameras
            .iter()
            .map(|c| {
                (
                    c.name().to_string(),
                    Rates { at: now, frames_in: 0, analysed: 0, fps_in: 0.0, fps_analysed: 0.0, last_state: None },
                )
            })
            .collect();
        let generation = mqtt.link.generation.load(Ordering::SeqCst);
        let p = Publisher { mqtt, config, cameras, rates, backlog: VecDeque::new(), alerts: None, generation };
        std::thread::Builder::new().name("publish".into()).spawn(move || p.run(events))
    }

    fn run(mut self, events: Receiver<Event>) {
        let tick = crossbeam_channel::tick(Duration::from_millis(250));
        let mut last_full = Instant::now() - self.config.status_interval;
        loop {
            select! {
                recv(events) -> ev => match ev {
                    Ok(Event::Hit(hit)) => self.hit(&hit),
                    Ok(Event::AlertsActive(list)) => {
                        let body = serde_json::to_vec(&list).unwrap_or_default();
                        self.alerts = Some(body.clone());
                        self.send(self.config.topics.alerts_active(), true, body);
                    }
                    Err(_) => break,
                },
                recv(tick) -> _ => {
                    let reconnected = self.mqtt.link.generation.load(Ordering::SeqCst);
                    let full = last_full.elapsed() >= self.config.status_interval || reconnected != self.generation;
                    if reconnected != self.generation {
                        // A new session: retained state may be gone from a restarted broker.
                        self.generation = reconnected;
                        if let Some(body) = self.alerts.clone() {
                            self.send(self.config.topics.alerts_active(), true, body);
                        }
                    }
                    self.statuses(full);
                    if full {
                        last_full = Instant::now();
                    }
                    self.flush();
                }
            }
        }
        // Shutdown: final statuses, then offline and disconnect.
        self.statuses(true);
        self.flush();
        if !self.backlog.is_empty() {
            tracing::warn!("{} message(s) could not be handed to the MQTT client before shutdown", self.backlog.len());
        }
        self.mqtt.close(Duration::from_secs(2));
    }

    fn hit(&mut self, hit: &Hit) {
        let id = hit.hit_id.to_string();
        let date = hit.time.strftime("%Y-%m-%d").to_string();
        let (path, inline) = match snapshot::encode(&hit.frame, hit.region.crop, self.config.snapshot_quality) {
            Ok(jpeg) => {
                let path = match snapshot::write(&self.config.snapshot_dir, hit.camera.name(), &date, &id, &jpeg) {
                    Ok(p) => Some(p.display().to_string()),
                    Err(e) => {
                        tracing::error!("hit {id}: {e}");
                        None
                    }
                };
                (path, self.config.snapshot_inline.then_some(jpeg))
            }
            Err(e) => {
                tracing::error!("hit {id}: snapshot: {e}");
                (None, None)
            }
        };
        let payload = hit_payload(hit, path.as_deref(), inline.as_deref());
        tracing::info!(
            alert = %hit.alert.id, camera = %hit.camera.name(), hit = %id,
            "hit: {} on {} ({:.2}, {} frames)", hit.alert.describe(), hit.camera.name(), hit.confidence, hit.frames
        );
        if let Some(cb) = self.config.on_hit.as_mut() {
            cb(&payload);
        }
        let topic = self.config.topics.hits(hit.alert.id.as_str());
        self.send(topic, false, serde_json::to_vec(&payload).unwrap_or_default());
    }

    fn statuses(&mut self, full: bool) {
        let now = Instant::now();
        for cam in self.cameras.clone() {
            let Some(r) = self.rates.get_mut(cam.name()) else { continue };
            let state = cam.state();
            let changed = r.last_state != Some((state.state, state.since));
            if !(full || changed) {
                continue;
            }
            let dt = now.duration_since(r.at).as_secs_f64();
            if full && dt > 0.5 {
                let fi = cam.frames_in.load(Ordering::Relaxed);
                let fa = cam.analysed.load(Ordering::Relaxed);
                r.fps_in = (fi - r.frames_in) as f64 / dt;
                r.fps_analysed = (fa - r.analysed) as f64 / dt;
                r.frames_in = fi;
                r.analysed = fa;
                r.at = now;
            }
            r.last_state = Some((state.state, state.since));
            let body = serde_json::to_vec(&camera_status(&cam, r.fps_in, r.fps_analysed)).unwrap_or_default();
            self.send(self.config.topics.camera_status(cam.name()), true, body);
        }
    }

    /// Publishes with QoS 1, or keeps the message for later if rumqttc's queue is full.
    fn send(&mut self, topic: String, retain: bool, payload: Vec<u8>) {
        if self.backlog.is_empty() && self.mqtt.publish(&topic, retain, payload.clone()).is_ok() {
            return;
        }
        if self.backlog.len() >= BACKLOG_LIMIT
            && let Some((t, _, _)) = self.backlog.pop_front()
        {
            tracing::error!("MQTT backlog full: dropped the oldest message (to {t})");
        }
        self.backlog.push_back((topic, retain, payload));
    }

    fn flush(&mut self) {
        while let Some((topic, retain, payload)) = self.backlog.pop_front() {
            if self.mqtt.publish(&topic, retain, payload.clone()).is_err() {
                self.backlog.push_front((topic, retain, payload));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        let t: Timestamp = "2026-11-26T16:04:05.123456+01:00".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-26T15:04:05.123Z");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(Topics::new("carwatch").is_ok());
        assert!(Topics::new("site/a").is_ok());
        for bad in ["", "/x", "x/", "a/+", "#"] {
            assert!(Topics::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Topics::new("cw").unwrap().camera_status("gate"), "cw/cameras/gate/status");
    }
}
