//! What carwatch measures, and where operators read it.
//!
//! Counters that the frame path already keeps (per camera: frames in, analysed,
//! dropped, reconnects, state) are read at scrape time by a collector, so measuring adds
//! nothing to the frame path. The inference worker records batch sizes and per-stage
//! latencies in histograms; the publisher counts hits and reports outbox depth and the
//! broker connection. Everything is exposed in the Prometheus text format (encoded by
//! `prometheus-client`, not by hand) by the web view ([`crate::publish::http`]: `/metrics`, `/health`),
//! and summarised on `{prefix}/stats` every `stats_interval_s`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::camera::{CameraShared, State};

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The older name of `[http] listen` (the web view, `/metrics` and `/health`), kept
    /// working; a reachable address is guarded as `[http] listen` is.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How often the summary goes to `{prefix}/stats`.
    #[serde(default = "default_stats", deserialize_with = "crate::values::seconds", rename = "stats_interval_s")]
    pub stats_interval: Duration,
}

fn default_stats() -> Duration {
    Duration::from_secs(60)
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None, stats_interval: default_stats() }
    }
}

/// A stage of inference, for the latency histogram.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: Stage,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Stage {
    /// The detector (motion is located on the camera threads, outside this).
    locate,
    preprocess,
    backbone,
    heads,
    matcher,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    pub alert: String,
}

/// The inference worker's heartbeat: when its loop last went round. The watchdog and
/// `/health` read it.
#[derive(Debug)]
pub struct Heartbeat {
    start: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub fn beat(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// Every measurement, shared by the stages that make them.
#[derive(Debug)]
pub struct Metrics {
    pub batch_size: Histogram,
    /// The most frames per batch (configured, or measured with `max_size = "auto"`).
    pub batch_max: Gauge,
    pub stage_seconds: Family<StageLabel, Histogram>,
    pub hits: Family<AlertLabel, Counter>,
    pub inference_errors: Counter,
    /// Capture of the confirming frame to the broker's acknowledgement, per hit.
    pub hit_latency: Histogram,
    /// The same latencies (seconds), most recent 100,000, for percentiles (`bench`).
    pub latencies: std::sync::Mutex<Vec<f32>>,
    /// Hits published since start (all alerts).
    pub hits_total: AtomicU64,
    pub outbox_depth: AtomicU64,
    pub outbox_dropped: AtomicU64,
    /// Hits the broker kept refusing, moved to `outbox/dead-letter.jsonl`.
    pub outbox_dead_letters: AtomicU64,
    /// Hits that could not be stored (disk full, I/O errors): published at most once.
    pub outbox_write_errors: AtomicU64,
    pub mqtt_connected: AtomicBool,
    pub heartbeat: Heartbeat,
    /// The alerts whose hit series exist ([`Metrics::alerts_active`]).
    alert_series: std::sync::Mutex<Vec<String>>,
    /// Where and how the model runs (`cpu/int8`), once loaded: for `bench` reports.
    pub model: std::sync::Mutex<Option<String>>,
    /// What the sightings store wrote, failed to write, dropped and pruned.
    pub sightings: Arc<crate::sightings::Counters>,
    registry: Registry,
}

/// Reads the cameras' own counters at scrape time.
#[derive(Debug)]
struct Cameras(Vec<Arc<CameraShared>>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraLabel {
    camera: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraStateLabel {
    camera: String,
    state: String,
}

const STATES: [State; 6] =
    [State::Connecting, State::Streaming, State::Stalled, State::BackingOff, State::Disabled, State::Stopped];

impl Collector for Cameras {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Read = fn(&CameraShared) -> u64;
        let counters: [(&str, &str, Read); 9] = [
            ("carwatch_camera_frames_in", "Frames delivered by the camera's pipeline (after rate limiting).", |c| {
                c.frames_in.load(Ordering::Relaxed)
            }),
            ("carwatch_camera_frames_analysed", "Frames classified by the inference worker.", |c| {
                c.analysed.load(Ordering::Relaxed)
            }),
            ("carwatch_camera_frames_dropped", "Frames dropped (oldest first) because inference was behind.", |c| {
                c.dropped.load(Ordering::Relaxed)
            }),
            ("carwatch_camera_reconnects", "Times the camera's pipeline was opened again after a failure.", |c| {
                c.reconnects.load(Ordering::Relaxed)
            }),
            ("carwatch_camera_frames_not_decoded", "Frames dropped before the decoder (decode = keyframes).", |c| {
                c.skipped_decode.load(Ordering::Relaxed)
            }),
            (
                "carwatch_camera_regions_motionless",
                "Regions (or, with locate = motion, frames) not classified because nothing moved.",
                |c| c.motion_skipped.load(Ordering::Relaxed),
            ),
            (
                "carwatch_camera_vehicles_skipped",
                "Located vehicles not classified: beyond locate.max_vehicles_per_frame.",
                |c| c.vehicles_skipped.load(Ordering::Relaxed),
            ),
            (
                "carwatch_camera_looks_skipped",
                "Looks at tracked vehicles not classified: settled between relooks, entering between cut looks, or cut after a whole look.",
                |c| c.looks_skipped.load(Ordering::Relaxed),
            ),
            ("carwatch_camera_tracks_evicted", "Tracks ended early because locate.max_tracks were alive.", |c| {
                c.tracks_evicted.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in counters {
            let sample = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, sample.metric_type())?;
            for cam in &self.0 {
                let labels = CameraLabel { camera: cam.name().to_string() };
                ConstCounter::new(read(cam)).encode(family.encode_family(&labels)?)?;
            }
        }
        let sample = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "carwatch_camera_state",
            "1 for the camera's current state, 0 for the others.",
            None,
            sample.metric_type(),
        )?;
        for cam in &self.0 {
            let current = cam.state().state;
            for s in STATES {
                let labels = CameraStateLabel { camera: cam.name().to_string(), state: s.name().to_string() };
                ConstGauge::new(i64::from(s == current)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Gauges read from the shared atomics at scrape time.
#[derive(Debug)]
struct Gauges(Arc<Metrics>);

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let gauges: [(&str, &str, i64); 2] = [
            (
                "carwatch_outbox_depth",
                "Hits stored and not yet acknowledged by the broker.",
                m.outbox_depth.load(Ordering::Relaxed) as i64,
            ),
            (
                "carwatch_mqtt_connected",
                "1 while connected to the MQTT broker.",
                i64::from(m.mqtt_connected.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        // A timestamp, so that an alert rule compares it with time() and the scrape's
        // own delay does not blur it.
        let beat = std::time::SystemTime::now()
            .checked_sub(m.heartbeat.age())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let g = ConstGauge::new(beat);
        g.encode(encoder.encode_descriptor(
            "carwatch_inference_heartbeat_timestamp_seconds",
            "When the inference loop last went round (Unix time).",
            None,
            g.metric_type(),
        )?)?;
        // Counts since start are counters (the encoder adds `_total`).
        let counters: [(&str, &str, u64); 6] = [
            (
                "carwatch_outbox_dropped_hits",
                "Hits dropped because the outbox was full.",
                m.outbox_dropped.load(Ordering::Relaxed),
            ),
            (
                "carwatch_outbox_dead_letters",
                "Hits the broker kept refusing, moved to outbox/dead-letter.jsonl.",
                m.outbox_dead_letters.load(Ordering::Relaxed),
            ),
            (
                "carwatch_outbox_write_errors",
                "Hits that could not be stored in the outbox (disk full?) and went out at most once.",
                m.outbox_write_errors.load(Ordering::Relaxed),
            ),
            (
                "carwatch_sightings_written",
                "Vehicles remembered in the sightings database.",
                m.sightings.written.load(Ordering::Relaxed),
            ),
            (
                "carwatch_sightings_failed",
                "Vehicles not remembered: the database could not be opened or written.",
                m.sightings.failed.load(Ordering::Relaxed),
            ),
            (
                "carwatch_sightings_dropped",
                "Vehicles not remembered: the sightings thread was behind.",
                m.sightings.dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Gives each active alert its hit series (at 0 until it hits, so rates and alert
    /// rules see it from the start) and drops the series of alerts no longer active.
    pub fn alerts_active(&self, ids: &[String]) {
        let mut gone = Vec::new();
        // Family has no key listing: the active set is remembered here.
        if let Ok(mut known) = self.alert_series.lock() {
            for old in known.iter() {
                if !ids.contains(old) {
                    gone.push(old.clone());
                }
            }
            known.clone_from(&ids.to_vec());
        }
        for id in gone {
            self.hits.remove(&AlertLabel { alert: id });
        }
        for id in ids {
            let _ = self.hits.get_or_create(&AlertLabel { alert: id.clone() });
        }
    }

    /// Metrics for `cameras`.
    pub fn new(cameras: &[Arc<CameraShared>]) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        let stage_seconds = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let hits = Family::<AlertLabel, Counter>::default();
        let inference_errors = Counter::default();
        let hit_latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register("carwatch_batch_size", "Frames per backbone call.", batch_size.clone());
        let batch_max = Gauge::default();
        registry.register(
            "carwatch_batch_max_size",
            "Most frames per backbone call (configured, or measured at start-up).",
            batch_max.clone(),
        );
        registry.register(
            "carwatch_inference_stage_seconds",
            "Time per batch in each inference stage.",
            stage_seconds.clone(),
        );
        registry.register("carwatch_hits", "Hits published, per alert.", hits.clone());
        registry.register(
            "carwatch_build",
            "The running carwatch's version.",
            prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "carwatch_inference_errors",
            "Batches dropped because inference failed.",
            inference_errors.clone(),
        );
        registry.register(
            "carwatch_hit_latency_seconds",
            "From capture of the confirming frame to the broker's acknowledgement of the hit.",
            hit_latency.clone(),
        );
        registry.register_collector(Box::new(Cameras(cameras.to_vec())));
        Arc::new(Metrics {
            batch_size,
            batch_max,
            stage_seconds,
            hits,
            inference_errors,
            hit_latency,
            latencies: std::sync::Mutex::new(Vec::new()),
            hits_total: AtomicU64::new(0),
            outbox_depth: AtomicU64::new(0),
            outbox_dropped: AtomicU64::new(0),
            outbox_dead_letters: AtomicU64::new(0),
            outbox_write_errors: AtomicU64::new(0),
            sightings: Arc::default(),
            mqtt_connected: AtomicBool::new(false),
            heartbeat: Heartbeat::new(),
            alert_series: std::sync::Mutex::new(Vec::new()),
            model: std::sync::Mutex::new(None),
            registry,
        })
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(self: &Arc<Metrics>) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        // The atomics of this struct are encoded through a second registry that holds
        // only a collector over it (a registry cannot hold a collector of its owner).
        let mut gauges = Registry::default();
        gauges.register_collector(Box::new(Gauges(Arc::clone(self))));
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &gauges);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    pub fn observe_latency(&self, took: Duration) {
        self.hit_latency.observe(took.as_secs_f64());
        if let Ok(mut l) = self.latencies.lock() {
            if l.len() >= 100_000 {
                l.remove(0);
            }
            l.push(took.as_secs_f32());
        }
    }

    pub fn observe_stage(&self, stage: Stage, took: Duration) {
        self.stage_seconds.get_or_create(&StageLabel { stage }).observe(took.as_secs_f64());
    }
}

/// Whether every part is alive, and a line per part (`/health`): alive means the
/// inference loop went round within `stale` and every supervised thread runs.
pub fn health(metrics: &Metrics, stale: Duration) -> (bool, String) {
    let age = metrics.heartbeat.age();
    let mut ok = age < stale;
    let mut body = if ok {
        format!("inference: ok (went round {:.1} s ago)\n", age.as_secs_f64())
    } else {
        format!("inference: silent for {:.1} s\n", age.as_secs_f64())
    };
    for (name, running) in crate::threads::list() {
        ok &= running;
        body.push_str(&format!("thread {name}: {}\n", if running { "running" } else { "ended" }));
    }
    (ok, format!("{}\n{body}", if ok { "ok" } else { "unhealthy" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{Camera, CameraConfig};

    #[test]
    fn renders_camera_counters_and_histograms() {
        let cfg: CameraConfig = toml::from_str("name = \"gate\"\nurl = \"rtsp://h/\"").unwrap();
        let cam = CameraShared::new(Camera::from_config(&cfg).unwrap());
        cam.frames_in.fetch_add(7, Ordering::Relaxed);
        cam.set_state(State::Streaming, None);
        let m = Metrics::new(&[cam]);
        m.batch_size.observe(4.0);
        m.observe_stage(Stage::backbone, Duration::from_millis(30));
        m.alerts_active(&["a1".into()]);
        m.hits.get_or_create(&AlertLabel { alert: "a1".into() }).inc();
        m.outbox_depth.store(3, Ordering::Relaxed);
        let text = m.render();
        for want in [
            "carwatch_camera_frames_in_total{camera=\"gate\"} 7",
            "carwatch_camera_state{camera=\"gate\",state=\"streaming\"} 1",
            "carwatch_camera_state{camera=\"gate\",state=\"stalled\"} 0",
            "carwatch_batch_size_count 1",
            "carwatch_inference_stage_seconds_count{stage=\"backbone\"} 1",
            "carwatch_hits_total{alert=\"a1\"} 1",
            "carwatch_outbox_depth 3",
            "carwatch_outbox_dropped_hits_total 0",
            "carwatch_build_info{version=\"",
            "carwatch_inference_heartbeat_timestamp_seconds 1",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        // Active alerts have a series from the start; removed ones none.
        m.alerts_active(&["a2".into()]);
        let text = m.render();
        assert!(text.contains("carwatch_hits_total{alert=\"a2\"} 0"), "{text}");
        assert!(!text.contains("alert=\"a1\""), "{text}");
    }
}
