//! Output: hits, camera status and the active alert list, over MQTT.
//!
//! The `publish` thread owns the MQTT client and the [`outbox`]. It receives [`Event`]s
//! from the inference worker; each hit's snapshot is written and the hit stored in the
//! outbox (fsynced) before it is published, and it leaves the outbox only when the
//! broker has acknowledged it. Camera status is published when it changes and every
//! `status_interval`. The worker hands hits over through a bounded channel (256 events)
//! and goes on; only if the publisher falls that far behind (a disk slow to fsync) does
//! the worker wait, rather than drop hits. Topics (see docs/mqtt.md):
//!
//! | topic | retained | payload |
//! | --- | --- | --- |
//! | `{prefix}/hits/{alert_id}` | no, QoS 1 | hit JSON |
//! | `{prefix}/status` | yes | `online` / `offline` (last will) |
//! | `{prefix}/cameras/{name}/status` | yes | camera status JSON |
//! | `{prefix}/cameras/{name}/snapshot` | yes | JPEG of the camera's last hit |
//! | `{prefix}/cameras/{name}/hits` | no | each hit of the camera (Home Assistant's event) |
//! | `{discovery_prefix}/.../config` | yes | Home Assistant discovery ([`homeassistant`]) |
//! | `{prefix}/alerts/active` | yes | JSON list of active alerts |
//! | `{prefix}/alerts/set/{id}` | yes, read | an alert set over MQTT ([`crate::alerts::remote`]) |
//!
//! - [`mqtt`]: the connection and its `mqtt` thread (packet ids, acknowledgements).
//! - [`outbox`]: hits on disk until acknowledged.
//! - [`broker`]: the embedded broker used when none is configured.

pub mod broker;
pub mod homeassistant;
pub mod http;
pub mod inbound;
pub mod message;
pub mod mqtt;
pub mod outbox;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError, select};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::alerts::{AlertSummary, Severity};
use crate::camera::{CameraShared, StateInfo};
use crate::document::Problems;
use crate::matcher::Hit;
use crate::metrics::{AlertLabel, Metrics};
use crate::model::Level;
use crate::sightings::{Retrospective, Sighting};
use crate::snapshot;
use crate::time::{rfc3339, rfc3339_system};
use mqtt::{Mqtt, Report, Tag};
use outbox::Outbox;

/// Why the output side could not start: the embedded broker, the MQTT client's thread,
/// the metrics endpoint. Each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "cannot listen on {listen} for the embedded MQTT broker: {source}. Is another broker running there? Configure [mqtt] url to use it, or set [broker] listen"
    )]
    BrokerListen { listen: std::net::SocketAddr, source: std::io::Error },
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    #[error("embedded MQTT broker did not answer on {0} within 5 s")]
    BrokerSilent(std::net::SocketAddr),
    #[error("cannot start thread `{thread}`: {source}")]
    Spawn { thread: &'static str, source: std::io::Error },
}

/// Topic names under one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    /// Where alerts set over MQTT are read (`[mqtt] alerts_prefix`, else `prefix`).
    alerts: String,
}

impl Topics {
    /// `prefix` must be non-empty, without wildcards or leading/trailing `/`.
    pub fn new(prefix: &str) -> Result<Topics, String> {
        if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['+', '#', '\0']) {
            return Err(format!(
                "topic_prefix `{prefix}` must be non-empty, without + or #, and not start or end with /"
            ));
        }
        Ok(Topics { prefix: prefix.to_string(), alerts: prefix.to_string() })
    }

    /// These topics, with alerts set over MQTT read under `prefix` instead (instances
    /// with prefixes of their own share one for their alerts).
    pub fn with_alerts_prefix(self, prefix: &str) -> Result<Topics, String> {
        let alerts = Topics::new(prefix).map_err(|e| format!("alerts_prefix: {e}"))?.prefix;
        Ok(Topics { alerts, ..self })
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
    /// Each hit of the camera, with its `event_type` (Home Assistant's event entity).
    pub fn camera_hits(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/hits", self.prefix)
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn camera_snapshot(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/snapshot", self.prefix)
    }
    pub fn alerts_active(&self) -> String {
        format!("{}/alerts/active", self.prefix)
    }
    pub fn errors(&self) -> String {
        format!("{}/errors", self.prefix)
    }
    pub fn sightings(&self, camera: &str) -> String {
        format!("{}/sightings/{camera}", self.prefix)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.prefix)
    }
    /// Where an operator sets alert `id` for every watcher (`+`: the subscription).
    pub fn alert_set(&self, id: &str) -> String {
        format!("{}/alerts/set/{id}", self.alerts)
    }
}

/// What the inference worker tells the publisher.
pub enum Event {
    Hit(Box<Hit>),
    /// A vehicle found in the sightings when its alert appeared.
    Retrospective(Box<Retrospective>),
    /// A vehicle just remembered (`[sightings] publish = true`).
    Sighting(Box<Sighting>),
    /// The active alert set changed (or is being announced).
    AlertsActive(Vec<AlertSummary>),
    /// An input carwatch could not use (an alert file edit), for `{prefix}/errors`.
    Error {
        source: &'static str,
        severity: Severity,
        problems: Problems,
    },
}

/// Receives each hit's JSON as it is published.
pub type HitCallback = Box<dyn FnMut(&Value) + Send>;

/// Publisher settings.
pub struct PublisherConfig {
    pub topics: Topics,
    pub snapshot_dir: PathBuf,
    /// `[snapshots]`: quality, inline, and the copy on MQTT.
    pub snapshots: crate::snapshot::SnapshotConfig,
    pub status_interval: Duration,
    /// Called with each hit's JSON (`watch --print-hits`).
    pub on_hit: Option<HitCallback>,
    pub metrics: Arc<Metrics>,
    /// How often the summary goes to `{prefix}/stats`.
    pub stats_interval: Duration,
    /// Home Assistant discovery, sent at each connection and on each of `births`.
    pub discovery: Option<homeassistant::Discovery>,
    pub births: Receiver<()>,
    /// What the web view shows: kept up to date as things are published.
    pub board: Arc<http::Board>,
}

/// The JSON published for a hit (documented in docs/mqtt.md, schema in
/// docs/hit.schema.json).
pub fn hit_payload(hit: &Hit, snapshot: Option<&str>, inline: Option<&[u8]>) -> Value {
    let p = &hit.region.prediction;
    let view_p = p.marginal(Level::View).into_iter().find(|(v, _)| *v == hit.leaf.view).map_or(0.0, |(_, q)| q);
    let make_p = p.probability(None, &hit.leaf.make, None);
    let model_p =
        if make_p > 0.0 { p.probability(None, &hit.leaf.make, Some(hit.leaf.model.as_str())) / make_p } else { 0.0 };
    let c = hit.region.crop;
    let colour = hit.frame.colour((c.x, c.y, c.width, c.height));
    let bounds = message::Bounds { x: c.x, y: c.y, width: c.width, height: c.height };
    let m = message::HitMessage {
        hit_id: hit.hit_id.to_string(),
        alert_id: hit.alert.id.to_string(),
        alert_note: hit.alert.note.clone(),
        camera: hit.camera.name().to_string(),
        time: rfc3339(hit.time),
        make: hit.leaf.make.to_string(),
        model: hit.leaf.model.to_string(),
        view: hit.leaf.view.to_string(),
        confidence: hit.confidence,
        probabilities: message::Probabilities { view: view_p, make: make_p, model: model_p },
        path: p
            .path
            .iter()
            .map(|c| message::Step { level: c.level, label: c.label.to_string(), probability: c.p })
            .collect(),
        region: match hit.track {
            None => Some(message::Region {
                index: hit.region.index,
                name: hit.region.name.to_string(),
                x: c.x,
                y: c.y,
                width: c.width,
                height: c.height,
            }),
            Some(_) => None,
        },
        bounds,
        track_id: hit.track.as_ref().map(|t| t.id),
        observations: hit.track.as_ref().map(|t| t.observations),
        first_seen: hit.track.as_ref().map(|t| rfc3339(t.first_seen)),
        frames: hit.frames,
        snapshot: snapshot.map(str::to_string),
        redelivered: false,
        retrospective: false,
        event_type: message::EventType::Hit,
        colour: colour.colour,
        colour_probability: colour.p,
        similarity: hit.similarity,
        snapshot_jpeg_base64: inline.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    };
    serde_json::to_value(m).unwrap_or_default()
}

/// The JSON of a sighting on `{prefix}/sightings/{camera}` (the fields `carwatch
/// search --json` prints, without the thumbnail, which stays on this host).
pub fn sighting_payload(s: &Sighting) -> Value {
    json!({
        "time": rfc3339(s.last_seen),
        "first_seen": rfc3339(s.first_seen),
        "camera": s.camera,
        "track_id": s.track_id,
        "make": s.make,
        "model": s.model,
        "view": s.view,
        "observations": s.looks,
        "colour": s.colour,
        "colour_probability": s.colour_p,
        "confidence": s.confidence,
        "makes": s.makes,
        "make_models": s.make_models,
        "box": { "x": s.x, "y": s.y, "width": s.width, "height": s.height },
    })
}

/// The JSON of a retrospective hit: the fields of a live hit, from what the sightings
/// remember (no greedy path; the snapshot is the vehicle's thumbnail).
pub fn retrospective_payload(r: &Retrospective, inline: Option<&[u8]>) -> Value {
    let s = &r.sighting;
    let make = r.alert.make().map_or_else(|| s.make.clone(), |m| m.to_string());
    let model = r.alert.model().map(|m| m.to_string()).unwrap_or_else(|| {
        let prefix = format!("{make}/");
        s.make_models
            .iter()
            .find(|p| p.label.to_lowercase().starts_with(&prefix.to_lowercase()))
            .map(|p| p.label[prefix.len()..].to_string())
            .unwrap_or_default()
    });
    let view = r.alert.view.as_ref().map(|v| v.to_string()).unwrap_or_else(|| s.view.clone());
    let make_p = s.probability(&make, None);
    let model_p = if make_p > 0.0 { s.probability(&make, Some(&model)) / make_p } else { 0.0 };
    let view_p = if view == s.view { s.view_p } else { 0.0 };
    let m = message::HitMessage {
        hit_id: r.hit_id.to_string(),
        alert_id: r.alert.id.to_string(),
        alert_note: r.alert.note.clone(),
        camera: s.camera.clone(),
        time: rfc3339(s.last_seen),
        make,
        model,
        view,
        confidence: r.confidence,
        probabilities: message::Probabilities { view: view_p, make: make_p, model: model_p },
        path: Vec::new(),
        region: None,
        bounds: message::Bounds { x: s.x, y: s.y, width: s.width, height: s.height },
        track_id: Some(s.track_id),
        observations: Some(s.looks),
        first_seen: Some(rfc3339(s.first_seen)),
        frames: s.looks.max(1),
        snapshot: s.thumbnail.as_ref().map(|p| p.display().to_string()),
        redelivered: false,
        retrospective: true,
        event_type: message::EventType::Retrospective,
        colour: s.colour,
        colour_probability: s.colour_p,
        similarity: r.similarity,
        snapshot_jpeg_base64: inline.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    };
    serde_json::to_value(m).unwrap_or_default()
}

/// A camera's retained status message, for state `s`.
fn camera_status(cam: &CameraShared, s: &StateInfo, fps_in: f64, fps_analysed: f64) -> Value {
    json!({
        "state": s.state,
        "since": rfc3339_system(s.since),
        "reason": s.reason,
        "url": cam.camera.source.redacted,
        "fps_in": (fps_in * 100.0).round() / 100.0,
        "fps_analysed": (fps_analysed * 100.0).round() / 100.0,
        "dropped": cam.dropped.load(Ordering::Relaxed),
        "decode": cam.camera.decode.name(),
        "decoding": cam.decoding(),
        "keyframe_interval_s": match cam.keyframe_interval_ms.load(Ordering::Relaxed) {
            0 => serde_json::Value::Null,
            ms => serde_json::json!(ms as f64 / 1000.0),
        },
        "decoder": cam.decoder(),
        "motion_skipped": cam.motion_skipped.load(Ordering::Relaxed),
        "skipped_before_decode": cam.skipped_decode.load(Ordering::Relaxed),
        "locate": cam.camera.locate.name(),
        "vehicles_skipped": cam.vehicles_skipped.load(Ordering::Relaxed),
        "looks_skipped": cam.looks_skipped.load(Ordering::Relaxed),
        "tracks_evicted": cam.tracks_evicted.load(Ordering::Relaxed),
    })
}

struct Rates {
    at: Instant,
    frames_in: u64,
    analysed: u64,
    fps_in: f64,
    fps_analysed: f64,
}

/// The publisher: runs until `events` closes, then delivers what it can, says `offline`
/// and disconnects.
pub struct Publisher {
    mqtt: Mqtt,
    config: PublisherConfig,
    outbox: Outbox,
    cameras: Vec<Arc<CameraShared>>,
    rates: HashMap<String, Rates>,
    /// Hits in the outbox not yet handed to the `mqtt` thread, oldest first.
    unsent: VecDeque<u64>,
    /// Hits handed over and not yet acknowledged.
    in_flight: BTreeSet<u64>,
    /// Hits to mark `redelivered` (sent before, or found in the outbox at start).
    redeliver: HashSet<u64>,
    /// Connections that ended while this hit was the oldest in flight: a hit the broker
    /// refuses (too large for it) ends every connection it is sent on.
    attempts: HashMap<u64, u32>,
    alerts: Option<Vec<u8>>,
    /// Hits per alert since start, for `{prefix}/stats`.
    hit_counts: BTreeMap<String, u64>,
    /// When the confirming frame of each hit of this run was captured (for latency).
    seen: HashMap<u64, Instant>,
    started: Instant,
}

impl Publisher {
    /// Starts the `publish` thread. Hits left in `outbox` by an earlier run are sent
    /// first, marked redelivered.
    pub fn spawn(
        mqtt: Mqtt,
        outbox: Outbox,
        config: PublisherConfig,
        cameras: Vec<Arc<CameraShared>>,
        events: Receiver<Event>,
    ) -> std::io::Result<JoinHandle<()>> {
        let now = Instant::now();
        let rates = cameras
            .iter()
            .map(|c| {
                let r = Rates { at: now, frames_in: 0, analysed: 0, fps_in: 0.0, fps_analysed: 0.0 };
                (c.name().to_string(), r)
            })
            .collect();
        let unsent: VecDeque<u64> = outbox.pending().collect();
        let redeliver = unsent.iter().copied().collect();
        let p = Publisher {
            mqtt,
            config,
            outbox,
            cameras,
            rates,
            unsent,
            in_flight: BTreeSet::new(),
            redeliver,
            attempts: HashMap::new(),
            alerts: None,
            hit_counts: BTreeMap::new(),
            seen: HashMap::new(),
            started: Instant::now(),
        };
        crate::threads::spawn("publish", move || p.run(events))
    }

    fn run(mut self, events: Receiver<Event>) {
        let tick = crossbeam_channel::tick(Duration::from_millis(250));
        let mut last_full = Instant::now() - self.config.status_interval;
        let mut last_stats = Instant::now();
        let reports = self.mqtt.reports.clone();
        let births = self.config.births.clone();
        loop {
            crate::threads::checkpoint();
            select! {
                recv(events) -> ev => match ev {
                    Ok(Event::Hit(hit)) => self.hit(&hit),
                    Ok(Event::Retrospective(r)) => self.retrospective(&r),
                    Ok(Event::Sighting(s)) => {
                        // QoS 0, dropped first when the link is slow, never in the outbox.
                        let body = serde_json::to_vec(&sighting_payload(&s)).unwrap_or_default();
                        let topic = self.config.topics.sightings(&s.camera);
                        if self.mqtt.publish(topic, false, body, Tag::Fleeting).is_err() {
                            tracing::debug!("MQTT queue full: a sighting was not published");
                        }
                    }
                    Ok(Event::AlertsActive(list)) => {
                        let body = serde_json::to_vec(&list).unwrap_or_default();
                        self.config.board.alerts(&serde_json::to_value(&list).unwrap_or_default());
                        self.alerts = Some(body.clone());
                        self.state(self.config.topics.alerts_active(), body);
                    }
                    Ok(Event::Error { source, severity, problems }) => {
                        let body = serde_json::to_vec(&error_payload(source, severity, &problems)).unwrap_or_default();
                        if self.mqtt.publish(self.config.topics.errors(), false, body, Tag::State).is_err() {
                            tracing::warn!("MQTT queue full: an error report was not published");
                        }
                    }
                    Err(_) => break,
                },
                recv(births) -> _ => self.discovery(),
                recv(reports) -> r => match r {
                    Ok(r) => self.report(r),
                    Err(_) => {
                        // Without its `mqtt` thread nothing can be published: end, and
                        // let the daemon's supervision stop the process.
                        tracing::error!("the mqtt thread has ended; the publisher stops");
                        return;
                    }
                },
                recv(tick) -> _ => {
                    let full = last_full.elapsed() >= self.config.status_interval;
                    self.statuses(full);
                    if full {
                        last_full = Instant::now();
                    }
                    if last_stats.elapsed() >= self.config.stats_interval {
                        last_stats = Instant::now();
                        let body = serde_json::to_vec(&self.stats()).unwrap_or_default();
                        self.state(self.config.topics.stats(), body);
                    }
                }
            }
            self.pump();
            let m = &self.config.metrics;
            m.outbox_depth.store(self.outbox.len() as u64, Ordering::Relaxed);
            m.outbox_dropped.store(self.outbox.dropped, Ordering::Relaxed);
            m.outbox_dead_letters.store(self.outbox.dead_letters, Ordering::Relaxed);
            m.mqtt_connected.store(self.mqtt.is_connected(), Ordering::Relaxed);
        }
        self.shutdown(&reports);
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Connected => {
                // A new session: whatever was in flight will not be acknowledged. Send
                // it again, in order, ahead of newer hits, and the retained state too.
                let again: Vec<u64> = std::mem::take(&mut self.in_flight).into_iter().collect();
                if let Some(&oldest) = again.first() {
                    *self.attempts.entry(oldest).or_default() += 1;
                }
                for seq in again.into_iter().rev() {
                    self.redeliver.insert(seq);
                    self.unsent.push_front(seq);
                }
                if !self.outbox.is_empty() {
                    tracing::info!("{} hit(s) waiting in the outbox are being delivered", self.outbox.len());
                }
                if let Some(body) = self.alerts.clone() {
                    self.state(self.config.topics.alerts_active(), body);
                }
                self.discovery();
                self.statuses(true);
            }
            Report::Acked(Tag::Hit(seq)) => {
                if let Some(seen) = self.seen.remove(&seq) {
                    self.config.metrics.observe_latency(seen.elapsed());
                }
                self.in_flight.remove(&seq);
                self.redeliver.remove(&seq);
                self.attempts.remove(&seq);
                if let Err(e) = self.outbox.ack(seq) {
                    tracing::error!("{e}");
                }
            }
            Report::Acked(_) => {}
        }
    }

    /// Hands unsent hits to the `mqtt` thread while connected, up to the window.
    fn pump(&mut self) {
        while self.mqtt.is_connected() && self.in_flight.len() < mqtt::WINDOW {
            let Some(seq) = self.unsent.pop_front() else { return };
            let tries = self.attempts.get(&seq).copied().unwrap_or(0);
            if tries >= DEAD_LETTER_AFTER {
                self.attempts.remove(&seq);
                match self.outbox.dead_letter(seq) {
                    Ok(()) => tracing::error!(
                        "hit #{seq}: the broker ended the connection each of the {tries} times it was sent; moved to outbox/dead-letter.jsonl so later hits can go out"
                    ),
                    Err(e) => tracing::error!("hit #{seq}: cannot move it to the dead-letter file: {e}"),
                }
                continue;
            }
            let p = match self.outbox.get(seq) {
                Ok(Some(p)) => p,
                // Dropped at the outbox's bound meanwhile: nothing to send or count.
                Ok(None) => {
                    self.attempts.remove(&seq);
                    continue;
                }
                Err(e) => {
                    tracing::error!("hit #{seq} cannot be read back: {e}");
                    continue;
                }
            };
            let (redelivered, strip) = (self.redeliver.contains(&seq), tries >= STRIP_AFTER);
            let payload = if redelivered || strip { revise(&p.payload, redelivered, strip) } else { p.payload };
            if tries == STRIP_AFTER {
                tracing::warn!(
                    "hit #{seq}: the broker ended the connection {tries} times while it was sent; sending it without its inline snapshot"
                );
            }
            match self.mqtt.publish(p.topic, false, payload, Tag::Hit(seq)) {
                Ok(()) => {
                    self.in_flight.insert(seq);
                }
                Err(_) => {
                    self.unsent.push_front(seq);
                    return;
                }
            }
        }
    }

    fn hit(&mut self, hit: &Hit) {
        let id = hit.hit_id.to_string();
        let date = hit.time.strftime("%Y-%m-%d").to_string();
        let path = snapshot::path(&self.config.snapshot_dir, hit.camera.name(), &date, &id);
        let jpeg = match snapshot::encode(&hit.frame, hit.region.crop, self.config.snapshots.quality) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!("hit {id}: snapshot: {e}");
                None
            }
        };
        let written = match &jpeg {
            Some(j) => match snapshot::write(&path, j) {
                Ok(()) => Some(path.display().to_string()),
                Err(e) => {
                    tracing::error!("hit {id}: {e}");
                    None
                }
            },
            None => None,
        };
        let inline = if self.config.snapshots.inline { jpeg.as_deref() } else { None };
        let payload = hit_payload(hit, written.as_deref(), inline);
        if self.config.snapshots.mqtt {
            // Retained, so a dashboard that connects later still shows the last hit.
            match snapshot::for_mqtt(&self.config.snapshots, &hit.frame, hit.region.crop, jpeg.as_deref()) {
                Ok(bytes) => self.state(self.config.topics.camera_snapshot(hit.camera.name()), bytes),
                Err(e) => tracing::error!("hit {id}: snapshot for MQTT: {e}"),
            }
        }
        tracing::info!(
            alert = %hit.alert.id, camera = %hit.camera.name(), hit = %id,
            "hit: {} on {} ({:.2}, {} frames)", hit.alert.describe(), hit.camera.name(), hit.confidence, hit.frames
        );
        self.deliver(hit.alert.id.as_str(), &id, payload, Some(hit.frame.seen));
    }

    /// A retrospective hit: its snapshot is the sighting's thumbnail.
    fn retrospective(&mut self, r: &Retrospective) {
        let id = r.hit_id.to_string();
        let inline = match (&r.sighting.thumbnail, self.config.snapshots.inline) {
            (Some(t), true) => std::fs::read(t).ok(),
            _ => None,
        };
        let payload = retrospective_payload(r, inline.as_deref());
        self.deliver(r.alert.id.as_str(), &id, payload, None);
    }

    /// Counts, stores in the outbox and queues a hit's payload; `seen`: when its frame
    /// was captured (for the latency metric), if it comes from a live frame.
    fn deliver(&mut self, alert: &str, id: &str, payload: Value, seen: Option<Instant>) {
        if let Some(cb) = self.config.on_hit.as_mut() {
            cb(&payload);
        }
        self.config.board.hit(&payload);
        *self.hit_counts.entry(alert.to_string()).or_default() += 1;
        self.config.metrics.hits.get_or_create(&AlertLabel { alert: alert.to_string() }).inc();
        self.config.metrics.hits_total.fetch_add(1, Ordering::Relaxed);
        let topic = self.config.topics.hits(alert);
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        if let Some(camera) = payload["camera"].as_str() {
            // The camera's own feed (Home Assistant's event entity): not retained, no
            // inline snapshot, superseded rather than kept while the broker is away.
            let mut copy = payload.clone();
            if let Some(o) = copy.as_object_mut() {
                o.remove("snapshot_jpeg_base64");
            }
            let copy = serde_json::to_vec(&copy).unwrap_or_default();
            if self.mqtt.publish(self.config.topics.camera_hits(camera), false, copy, Tag::State).is_err() {
                tracing::debug!("MQTT queue full: a hit's copy on its camera's topic was skipped");
            }
        }
        match self.outbox.append(&topic, &body) {
            Ok(seq) => {
                if let Some(seen) = seen {
                    self.seen.insert(seq, seen);
                }
                self.unsent.push_back(seq);
            }
            Err(e) => {
                // Without the outbox the hit can still go out now, just not survive a
                // crash or a broker outage: say so, count it, and show it in stats.
                self.config.metrics.outbox_write_errors.fetch_add(1, Ordering::Relaxed);
                let why =
                    if e.is_disk_full() { "the disk is full: free space under state_dir" } else { "see the error" };
                tracing::error!("hit {id} could not be stored ({e}); {why}; publishing it once, without the outbox");
                if self.mqtt.publish(topic, false, body, Tag::State).is_err() {
                    tracing::error!("hit {id} was lost: the MQTT queue is full as well");
                }
            }
        }
    }

    /// Sends the Home Assistant discovery configs (retained), when discovery is on.
    fn discovery(&mut self) {
        let configs = self.config.discovery.as_ref().map(|d| d.configs()).unwrap_or_default();
        for (topic, body) in configs {
            self.state(topic, body);
        }
    }

    /// Publishes a retained state message; dropped if the queue is full (the next one
    /// supersedes it).
    fn state(&mut self, topic: String, payload: Vec<u8>) {
        if self.mqtt.publish(topic, true, payload, Tag::State).is_err() {
            tracing::debug!("MQTT queue full: a state message was skipped");
        }
    }

    /// Publishes every camera state change since the last call, in order, and (with
    /// `full`) every camera's current status with fresh rates.
    fn statuses(&mut self, full: bool) {
        let now = Instant::now();
        for cam in self.cameras.clone() {
            let Some(r) = self.rates.get_mut(cam.name()) else { continue };
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
            let (fps_in, fps_analysed) = (r.fps_in, r.fps_analysed);
            let mut messages: Vec<Value> =
                cam.take_transitions().iter().map(|s| camera_status(&cam, s, fps_in, fps_analysed)).collect();
            if full && messages.is_empty() {
                messages.push(camera_status(&cam, &cam.state(), fps_in, fps_analysed));
            }
            if let Some(last) = messages.last() {
                self.config.board.camera(cam.name(), last);
            }
            for m in messages {
                let body = serde_json::to_vec(&m).unwrap_or_default();
                self.state(self.config.topics.camera_status(cam.name()), body);
            }
        }
        if full && let Some(body) = self.alerts.clone() {
            self.state(self.config.topics.alerts_active(), body);
        }
    }

    /// The `{prefix}/stats` summary.
    fn stats(&self) -> Value {
        let m = &self.config.metrics;
        let cameras: serde_json::Map<String, Value> = self
            .cameras
            .iter()
            .map(|c| {
                let v = json!({
                    "state": c.state().state,
                    "frames_in": c.frames_in.load(Ordering::Relaxed),
                    "frames_analysed": c.analysed.load(Ordering::Relaxed),
                    "frames_dropped": c.dropped.load(Ordering::Relaxed),
                    "reconnects": c.reconnects.load(Ordering::Relaxed),
                });
                (c.name().to_string(), v)
            })
            .collect();
        json!({
            "time": rfc3339(Timestamp::now()),
            "uptime_s": self.started.elapsed().as_secs(),
            "cameras": cameras,
            "hits": self.hit_counts,
            "hits_total": m.hits_total.load(Ordering::Relaxed),
            "outbox_depth": self.outbox.len(),
            "outbox_dropped": self.outbox.dropped,
            "outbox_dead_letters": self.outbox.dead_letters,
            "outbox_write_errors": m.outbox_write_errors.load(Ordering::Relaxed),
            "sightings": {
                "written": m.sightings.written.load(Ordering::Relaxed),
                "failed": m.sightings.failed.load(Ordering::Relaxed),
                "dropped": m.sightings.dropped.load(Ordering::Relaxed),
                "pruned": m.sightings.pruned.load(Ordering::Relaxed),
            },
            "inference_errors": m.inference_errors.get(),
            "mqtt_connected": self.mqtt.is_connected(),
        })
    }

    /// Delivers what is pending (for at most [`DRAIN`]), then always publishes
    /// `offline`, waits (bounded) for its acknowledgement and disconnects. Every hit the
    /// worker handed over is in the outbox by now (the event channel was drained before
    /// this runs); undelivered ones stay there for the next start.
    fn shutdown(mut self, reports: &Receiver<Report>) {
        self.statuses(true);
        let drain_until = Instant::now() + DRAIN;
        while Instant::now() < drain_until
            && self.mqtt.is_connected()
            && !(self.unsent.is_empty() && self.in_flight.is_empty())
        {
            self.pump();
            match reports.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => self.report(r),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let topic = self.config.topics.status();
        let mut offline_acked = false;
        if self.mqtt.publish(topic, true, b"offline".to_vec(), Tag::Offline).is_ok() {
            let deadline = Instant::now() + OFFLINE_ACK;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match reports.recv_timeout(left) {
                    Ok(Report::Acked(Tag::Offline)) => {
                        offline_acked = true;
                        break;
                    }
                    Ok(r) => self.report(r),
                    Err(_) => break,
                }
            }
        }
        if !self.outbox.is_empty() {
            tracing::warn!("{} hit(s) not yet acknowledged stay in the outbox for the next start", self.outbox.len());
        }
        if !offline_acked {
            tracing::warn!("the broker did not acknowledge `offline` before shutdown; its last will says it instead");
        }
        self.mqtt.disconnect(Duration::from_millis(500));
    }
}

/// At shutdown: how long pending hits are delivered before `offline` is sent anyway,
/// and how long its acknowledgement is awaited. Together with the cameras' teardown
/// they stay well inside the unit's `TimeoutStopSec` (15 s).
const DRAIN: Duration = Duration::from_millis(1500);
const OFFLINE_ACK: Duration = Duration::from_millis(1000);

/// The `{prefix}/errors` message for problems with an input file.
pub fn error_payload(source: &str, severity: Severity, problems: &Problems) -> Value {
    json!({
        "time": rfc3339(Timestamp::now()),
        "source": source,
        "level": severity,
        "message": problems.to_string(),
        "problems": problems.0.iter().map(|p| json!({
            "file": p.file.display().to_string(), "line": p.line, "column": p.column, "key": p.key, "reason": p.reason,
        })).collect::<Vec<_>>(),
    })
}

/// Connections a hit may end (as the oldest in flight) before it goes without its
/// inline snapshot, and before it is moved to the dead-letter file.
const STRIP_AFTER: u32 = 2;
const DEAD_LETTER_AFTER: u32 = 4;

/// The stored hit message with `redelivered` set and/or its inline snapshot left out.
fn revise(payload: &[u8], redelivered: bool, strip: bool) -> Vec<u8> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(mut v) => {
            if redelivered {
                v["redelivered"] = Value::Bool(true);
            }
            if strip && let Some(o) = v.as_object_mut() {
                o.remove("snapshot_jpeg_base64");
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| payload.to_vec())
        }
        Err(_) => payload.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(Topics::new("carwatch").is_ok());
        assert!(Topics::new("site/a").is_ok());
        for bad in ["", "/x", "x/", "a/+", "#"] {
            assert!(Topics::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Topics::new("cw").unwrap().camera_status("gate"), "cw/cameras/gate/status");
        // Instances with prefixes of their own read their alerts under a common one.
        let a = Topics::new("site/a").unwrap();
        assert_eq!(a.alert_set("+"), "site/a/alerts/set/+");
        let shared = a.with_alerts_prefix("site").unwrap();
        assert_eq!((shared.alert_set("x"), shared.hits("x")), ("site/alerts/set/x".into(), "site/a/hits/x".into()));
        assert!(Topics::new("a").unwrap().with_alerts_prefix("b/#").is_err());
    }
}
