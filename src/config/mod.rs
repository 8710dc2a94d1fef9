//! `carwatch.toml`: the operator's file, read once at start-up into typed sections.
//!
//! Nothing after start-up reads raw TOML: each stage gets its own typed section. Paths
//! that are relative resolve against the working directory (the unit file sets it).
//! Every problem in the file is reported at once with file:line:column, so an operator
//! fixes them in one pass; see [`crate::document`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::document::Document;
pub use crate::document::{Problem, Problems};
use crate::values;

use crate::batcher::BatchConfig;
use crate::camera::{Camera, CameraConfig};
use crate::locate::detector::DetectorConfig;
use crate::locate::{LocateConfig, Method};
use crate::metrics::MetricsConfig;
use crate::model::{DeviceChoice, PrecisionChoice};
use crate::publish::Topics;
use crate::publish::broker::BrokerConfig;
use crate::publish::homeassistant::HomeAssistantConfig;
use crate::publish::http::HttpConfig;
use crate::publish::mqtt::{MqttConfig, MqttSettings, default_prefix};
use crate::rule::MatcherConfig;
use crate::sightings::SightingsConfig;
use crate::snapshot::SnapshotConfig;

/// Where carwatch looks for its config when none is given.
pub const DEFAULT_PATH: &str = "config/carwatch.toml";

/// Where an installed host keeps its configuration (`make install`).
pub const INSTALLED_PATH: &str = "/etc/carwatch/carwatch.toml";

/// The configuration file when `--config` is not given: `$CARWATCH_CONFIG`, else the
/// installed one when it exists (so `carwatch check` on a host finds it from any
/// directory), else [`DEFAULT_PATH`] (a checkout).
pub fn default_path() -> PathBuf {
    match std::env::var_os("CARWATCH_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if Path::new(INSTALLED_PATH).is_file() => PathBuf::from(INSTALLED_PATH),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub file: PathBuf,
    /// What `watch` writes besides snapshots: the outbox, its dead letters, the lock.
    /// (`train`'s feature cache lives under the user's cache directory instead.)
    pub state_dir: PathBuf,
    /// The alert descriptions file.
    pub alerts: PathBuf,
    pub model: ModelConfig,
    pub cameras: Vec<Camera>,
    /// What happens to located boxes (tracks, crops) and how motion is found.
    pub locate: LocateConfig,
    /// The detector of `locate = "detector"` cameras.
    pub detector: Option<DetectorConfig>,
    /// Where tracked vehicles are remembered.
    pub sightings: SightingsConfig,
    pub batch: BatchConfig,
    pub matcher: MatcherConfig,
    /// The broker to publish to; `None` starts the embedded one on `broker.listen`.
    pub mqtt: Option<MqttSettings>,
    pub topics: Topics,
    pub broker: BrokerConfig,
    pub snapshots: SnapshotConfig,
    /// `[homeassistant]`: MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
    pub outbox: OutboxConfig,
    pub metrics: MetricsConfig,
    /// The web view ([`crate::publish::http`]).
    pub http: HttpConfig,
    /// How often each camera's status is published even when it has not changed.
    pub status_interval: Duration,
    /// The file itself holds a password (rather than naming a password file).
    pub inline_secrets: bool,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("broker", &self.display)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Config {
    /// Where snapshots are written.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.snapshots.dir.clone().unwrap_or_else(|| self.state_dir.join("snapshots"))
    }
}

/// `[model]`: which trained cascade to load, where and how to run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory holding `cascade.toml` (which names the backbone weights).
    #[serde(default = "default_model_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub precision: PrecisionChoice,
    /// libtorch intra-op threads for the backbone on the CPU. Unset: one per core, which
    /// measured best even with decoding beside it (docs/benchmarks.md); fewer leaves
    /// cores to GStreamer on machines with many cameras per core.
    #[serde(default)]
    pub threads: Option<std::num::NonZeroUsize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dir: default_model_dir(),
            device: DeviceChoice::Auto,
            precision: PrecisionChoice::Auto,
            threads: None,
        }
    }
}

fn default_model_dir() -> PathBuf {
    PathBuf::from("models")
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Problems),
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config = Config::parse(path, &text).map_err(ConfigError::Invalid)?;
        if config.inline_secrets {
            warn_if_readable(path);
        }
        Ok(config)
    }

    /// Parses `text` as if read from `path`, collecting every problem.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Problems> {
        let mut doc = Document::parse(path, text);
        doc.reject_unknown_keys(&[
            "state_dir",
            "alerts",
            "status_interval_s",
            "model",
            "camera",
            "batch",
            "matcher",
            "mqtt",
            "broker",
            "snapshots",
            "outbox",
            "metrics",
            "locate",
            "detector",
            "sightings",
            "homeassistant",
            "http",
        ]);
        // Paths written in the file resolve against its directory (defaults do not).
        let base = path.parent().unwrap_or(Path::new(""));
        let state_dir = doc.section::<PathBuf>("state_dir").map(|s| anchored(base, &s.into_inner()));
        let alerts = doc.section::<PathBuf>("alerts").map(|s| anchored(base, &s.into_inner()));
        let status_interval = doc.section::<Seconds>("status_interval_s").map(|s| s.into_inner().0);
        let model = doc.section::<ModelConfig>("model").map(|s| {
            let mut m = s.into_inner();
            m.dir = anchored(base, &m.dir);
            m
        });
        let batch = doc.section::<BatchConfig>("batch").map(|s| s.into_inner());
        let matcher = doc.section::<MatcherConfig>("matcher").map(|s| s.into_inner());
        let broker = doc.section::<BrokerConfig>("broker").map(|s| {
            let mut b = s.into_inner();
            b.password_file = b.password_file.map(|f| anchored_secret(base, &f));
            b
        });
        let snapshots = checked(&mut doc, "snapshots", SnapshotConfig::check).map(|mut s| {
            s.dir = s.dir.map(|d| anchored(base, &d));
            s
        });
        let outbox = doc.section::<OutboxConfig>("outbox").map(|s| s.into_inner());
        let http = checked(&mut doc, "http", HttpConfig::check).map(|mut h| {
            h.password_file = h.password_file.map(|f| anchored_secret(base, &f));
            h
        });
        let metrics = doc.section::<MetricsConfig>("metrics").map(|section| {
            let span = section.span();
            let metrics = section.into_inner();
            if let Some(listen) = metrics.listen {
                let http = http.clone().unwrap_or_default();
                if let Err(e) = http.guards(listen, "listen") {
                    doc.push_problem(span.clone(), "metrics", &e);
                }
                if http.listen.is_some_and(|h| h != listen) {
                    let e = "[metrics] listen is the older name of [http] listen: keep one";
                    doc.push_problem(span, "metrics", e);
                }
            }
            metrics
        });
        let locate = checked(&mut doc, "locate", LocateConfig::check);
        let detector = checked(&mut doc, "detector", DetectorConfig::check).map(|mut d| {
            d.file = anchored(base, &d.file);
            d
        });
        let sightings = doc.section::<SightingsConfig>("sightings").map(|s| {
            let mut s = s.into_inner();
            s.file = s.file.map(|f| anchored(base, &f));
            s
        });
        let homeassistant = checked(&mut doc, "homeassistant", HomeAssistantConfig::check);

        let has_detector = doc.keys().iter().any(|(k, _)| k == "detector");
        let (cameras, camera_secrets) = cameras(&mut doc, has_detector, base);
        let (mqtt, topics, mqtt_secrets) = mqtt(&mut doc, base);
        let inline_secrets = camera_secrets || mqtt_secrets;

        let problems = doc.into_problems();
        let (Some(topics), true) = (topics, problems.is_empty()) else {
            return Err(Problems(problems));
        };
        Ok(Config {
            file: path.to_path_buf(),
            state_dir: state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/carwatch")),
            alerts: alerts.unwrap_or_else(|| PathBuf::from("config/alerts.toml")),
            model: model.unwrap_or_default(),
            cameras,
            locate: locate.unwrap_or_default(),
            detector,
            sightings: sightings.unwrap_or_default(),
            batch: batch.unwrap_or_default(),
            matcher: matcher.unwrap_or_default(),
            mqtt,
            topics,
            broker: broker.unwrap_or_default(),
            snapshots: snapshots.unwrap_or_default(),
            homeassistant: homeassistant.unwrap_or_default(),
            outbox: outbox.unwrap_or_default(),
            metrics: metrics.unwrap_or_default(),
            http: http.unwrap_or_default(),
            status_interval: status_interval.unwrap_or(Duration::from_secs(10)),
            inline_secrets,
        })
    }
}

/// Section `key`, also checked by `check` (its problem reported at the section).
fn checked<T: serde::de::DeserializeOwned>(
    doc: &mut Document,
    key: &str,
    check: fn(&T) -> Result<(), String>,
) -> Option<T> {
    let section = doc.section::<T>(key)?;
    let span = section.span();
    let value = section.into_inner();
    match check(&value) {
        Ok(()) => Some(value),
        Err(e) => {
            doc.push_problem(span, key, &e);
            None
        }
    }
}

/// The `[[camera]]` entries, each checked on its own; whether any holds a password.
/// A path written in the config file whose directory is `base`: a relative one
/// resolves against that directory, so the file means the same from any working
/// directory (an installed host's /etc/carwatch, a checkout's config/).
fn anchored(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() { base.join(p) } else { p.to_path_buf() }
}

/// A password file: a relative name that systemd's `$CREDENTIALS_DIRECTORY` holds
/// (`LoadCredential=`) is that credential; otherwise as [`anchored`].
fn anchored_secret(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() && crate::values::resolve_credential_path(p) != p { p.to_path_buf() } else { anchored(base, p) }
}

fn cameras(doc: &mut Document, has_detector: bool, base: &Path) -> (Vec<Camera>, bool) {
    let mut cameras = Vec::new();
    let mut names = HashSet::new();
    let mut inline_secrets = false;
    for (i, entry) in doc.entries::<CameraConfig>("camera").into_iter().enumerate() {
        let key = format!("camera[{i}]");
        let span = entry.span();
        let mut c = entry.into_inner();
        c.file = c.file.map(|f| anchored(base, &f));
        c.password_file = c.password_file.map(|f| anchored_secret(base, &f));
        inline_secrets |= c.password.is_some();
        if !names.insert(c.name.clone()) {
            doc.push_problem(span.clone(), &key, &format!("camera name `{}` is used twice", c.name));
        }
        match Camera::from_config(&c) {
            Ok(cam) if cam.locate == Method::Detector && !has_detector => {
                let reason = format!(
                    "camera `{}` has locate = \"detector\", but there is no [detector] section naming the model file",
                    c.name
                );
                doc.push_problem(span, &key, &reason);
            }
            Ok(cam) => cameras.push(cam),
            Err(e) => doc.push_problem(span, &key, &format!("camera `{}`: {e}", c.name)),
        }
    }
    (cameras, inline_secrets)
}

/// `[mqtt]` resolved (none: the embedded broker) and the topics under its prefix;
/// whether the section holds a password.
fn mqtt(doc: &mut Document, base: &Path) -> (Option<MqttSettings>, Option<Topics>, bool) {
    let mut prefix = default_prefix();
    let mut alerts_prefix = None;
    let mut mqtt = None;
    let mut inline_secrets = false;
    if let Some(section) = doc.section::<MqttConfig>("mqtt") {
        let span = section.span();
        let mut m = section.into_inner();
        m.password_file = m.password_file.map(|f| anchored_secret(base, &f));
        for file in [&mut m.ca_file, &mut m.client_cert, &mut m.client_key] {
            *file = file.take().map(|f| anchored(base, &f));
        }
        inline_secrets = m.password.is_some() || url::Url::parse(&m.url).is_ok_and(|u| u.password().is_some());
        prefix = m.topic_prefix.clone();
        alerts_prefix = m.alerts_prefix.clone();
        match MqttSettings::from_config(&m) {
            Ok(s) => mqtt = Some(s),
            Err(e) => doc.push_problem(span, "mqtt", &e),
        }
    }
    let topics = Topics::new(&prefix).and_then(|t| match &alerts_prefix {
        Some(a) => t.with_alerts_prefix(a),
        None => Ok(t),
    });
    let topics = match topics {
        Ok(t) => Some(t),
        Err(e) => {
            doc.push_problem(0..0, "mqtt.topic_prefix", &e);
            None
        }
    };
    (mqtt, topics, inline_secrets)
}

/// Warns when a file holding passwords can be read by users other than its owner.
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                "{} holds a password and is readable by other users (mode {:o}); run `chmod 600` on it, or use password_file / systemd credentials",
                path.display(),
                mode & 0o777
            );
        }
    }
}

/// `[outbox]`: undelivered hits kept on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most undelivered hits kept; beyond it the oldest are dropped (counted and logged).
    #[serde(default = "default_outbox_hits", deserialize_with = "values::positive")]
    pub max_hits: u32,
    /// Most bytes of undelivered hits kept (inline snapshots make hits large); beyond it
    /// the oldest are dropped (counted and logged).
    #[serde(default = "default_outbox_bytes", deserialize_with = "values::byte_count")]
    pub max_bytes: u64,
}

impl OutboxConfig {
    pub fn bounds(&self) -> crate::publish::outbox::Bounds {
        crate::publish::outbox::Bounds { hits: self.max_hits as usize, bytes: self.max_bytes }
    }
}

fn default_outbox_bytes() -> u64 {
    256 << 20
}

fn default_outbox_hits() -> u32 {
    100_000
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { max_hits: default_outbox_hits(), max_bytes: default_outbox_bytes() }
    }
}

/// A bare number of seconds as a top-level value.
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        values::seconds(d).map(Seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Precision;

    fn parse(text: &str) -> Result<Config, Problems> {
        Config::parse(Path::new("carwatch.toml"), text)
    }

    #[test]
    fn relative_paths_in_the_file_resolve_against_its_directory() {
        let text = "state_dir = \"../state\"\nalerts = \"alerts.toml\"\n[model]\ndir = \"/opt/models\"\n\
                    [snapshots]\ndir = \"snaps\"\n[sightings]\nfile = \"db/s.db\"\n\
                    [[camera]]\nname = \"gate\"\nfile = \"clip.mkv\"\n";
        let c = Config::parse(Path::new("/etc/carwatch/carwatch.toml"), text).unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/carwatch/../state"));
        assert_eq!(c.alerts, Path::new("/etc/carwatch/alerts.toml"));
        assert_eq!(c.model.dir, Path::new("/opt/models"), "absolute paths stay");
        assert_eq!(c.snapshot_dir(), Path::new("/etc/carwatch/snaps"));
        assert_eq!(c.sightings.path(&c.state_dir), Path::new("/etc/carwatch/db/s.db"));
        assert!(c.cameras[0].source.uri.ends_with("/etc/carwatch/clip.mkv"), "{}", c.cameras[0].source.uri);
        // Defaults are not moved.
        let d = Config::parse(Path::new("/etc/carwatch/carwatch.toml"), "").unwrap();
        assert_eq!((d.alerts, d.model.dir), (PathBuf::from("config/alerts.toml"), PathBuf::from("models")));
    }

    #[test]
    fn metrics_listen_is_the_web_views_older_name_and_guarded_alike() {
        assert_eq!(parse("[metrics]\nlisten = \"127.0.0.1:9810\"").unwrap().metrics.listen.unwrap().port(), 9810);
        let e = parse("[metrics]\nlisten = \"0.0.0.0:9810\"").unwrap_err().to_string();
        assert!(e.contains("carwatch.toml:1:1") && e.contains("username and password_file"), "{e}");
        assert!(parse("[metrics]\nlisten = \"0.0.0.0:9810\"\n[http]\nallow_anonymous = true").is_ok());
        let both = "[metrics]\nlisten = \"127.0.0.1:9810\"\n[http]\nlisten = \"127.0.0.1:9811\"";
        assert!(parse(both).unwrap_err().to_string().contains("keep one"));
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/carwatch"));
        assert_eq!(c.alerts, PathBuf::from("config/alerts.toml"));
        assert_eq!(c.model.dir, PathBuf::from("models"));
        assert_eq!(c.model.device, DeviceChoice::Auto);
    }

    #[test]
    fn typed_values_parse() {
        let c =
            parse("state_dir = \"/tmp/s\"\n[model]\ndir = \"m\"\ndevice = \"cuda:1\"\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.model.device, DeviceChoice::Cuda(1));
        assert_eq!(c.model.precision, PrecisionChoice::Exactly(Precision::Bf16));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported_with_lines() {
        let text = "state_dir = \"/tmp/s\"\nfrobnicate = 1\n\n[model]\ndevice = \"gpu\"\nprecison = \"fp32\"\n";
        let problems = parse(text).unwrap_err().0;
        let at: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(at, vec![(2, 1), (5, 10)], "{problems:?}");
        assert!(problems[0].reason.contains("unknown key `frobnicate`"), "{}", problems[0]);
        assert!(problems[0].reason.contains("camera"), "the message lists the known keys: {}", problems[0]);
        assert!(problems[1].reason.contains("unknown device `gpu`"), "{}", problems[1]);
        let shown = Problems(problems).to_string();
        assert!(shown.starts_with("carwatch.toml:2:1: frobnicate: unknown key"), "{shown}");

        // serde stops at the first problem inside one section; the misspelt key is
        // reported once the device is fixed.
        let problems = parse("[model]\ndevice = \"cpu\"\nprecison = \"fp32\"\n").unwrap_err().0;
        assert_eq!((problems[0].line, problems[0].column), (3, 1), "{problems:?}");
        assert!(problems[0].reason.contains("unknown field `precison`"), "{}", problems[0]);
    }

    #[test]
    fn cameras_are_checked_one_by_one() {
        let text = "[[camera]]\nname = \"gate\"\nurl = \"rtsp://cam/1\"\n\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://cam/2\"\n\n[[camera]]\nname = \"yard\"\nfps = 0\nurl = \"rtsp://cam/3\"\n\n[[camera]]\nname = \"bad name\"\n";
        let problems = parse(text).unwrap_err().0;
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].line == 5 && problems[0].reason.contains("used twice"), "{}", problems[0]);
        assert!(problems[1].line == 9 && problems[1].reason.contains("fps"), "{}", problems[1]);
        assert!(problems[2].line == 15 && problems[2].reason.contains("not a valid name"), "{}", problems[2]);
        let ok = parse("[[camera]]\nname = \"gate\"\nurl = \"rtsp://cam/1\"\nregions = [{ x = 0, y = 0, width = 0.5, height = 1.0 }]\n").unwrap();
        assert_eq!(ok.cameras.len(), 1);
        assert_eq!(ok.cameras[0].fps, 2.0);
    }

    #[test]
    fn motion_gating_is_on_unless_turned_off() {
        let cam =
            |extra: &str| format!("[[camera]]\nname = \"c\"\nurl = \"rtsp://cam/1\"\nlocate = \"frame\"\n{extra}\n");
        let motion = |text: &str| parse(text).unwrap().cameras[0].motion;
        assert!(motion(&cam("")).enabled, "on by default");
        let tuned = motion(&cam("motion = { threshold = 30 }"));
        assert!(tuned.enabled && tuned.threshold == 30, "setting a threshold keeps it on: {tuned:?}");
        assert!(!motion(&cam("motion = { enabled = false }")).enabled);
    }

    #[test]
    fn each_camera_locates_as_told_or_by_default() {
        let cam = |extra: &str| format!("[[camera]]\nname = \"c\"\nurl = \"rtsp://cam/1\"\n{extra}\n");
        let region = "regions = [{ x = 0, y = 0, width = 0.5, height = 1.0 }]";
        let locate = |text: &str| parse(text).map(|c| c.cameras[0].locate);
        assert_eq!(locate(&cam("")).unwrap(), Method::Motion, "no regions: motion");
        assert_eq!(locate(&cam(region)).unwrap(), Method::Regions, "regions: as before");
        assert_eq!(locate(&cam(&format!("{region}\nlocate = \"motion\""))).unwrap(), Method::Motion);
        assert_eq!(locate(&cam("locate = \"frame\"")).unwrap(), Method::Frame);
        let e = locate(&cam("locate = \"regions\"")).unwrap_err().to_string();
        assert!(e.contains("needs at least one entry in `regions`"), "{e}");
        let e = locate(&cam("locate = \"detector\"")).unwrap_err().to_string();
        assert!(e.contains("no [detector] section"), "{e}");
        let with_detector = format!("{}\n[detector]\nfile = \"d.pt\"\ninput = 100\n", cam("locate = \"detector\""));
        let e = parse(&with_detector).unwrap_err().to_string();
        assert!(e.contains("multiple of 32") && e.contains(":6:") && !e.contains("no [detector]"), "at its line: {e}");
        let e = parse("[locate.motion]\nmin_area = 0.5\nmax_area = 0.1\n").unwrap_err().to_string();
        assert!(e.contains("min_area (0.5) must be below max_area (0.1)"), "{e}");
        let e = parse("[locate]\nmax_vehicles_per_frame = 0\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("from 1 to 64"), "{e}");
    }

    #[test]
    fn mqtt_problems_are_reported_and_the_default_is_the_embedded_broker() {
        let c = parse("").unwrap();
        assert!(c.mqtt.is_none());
        assert_eq!(c.broker.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.topics.status(), "carwatch/status");
        let problems = parse("[mqtt]\nurl = \"mqtts://broker\"\n").unwrap_err().0;
        assert!(problems[0].reason.contains("ca_file"), "{problems:?}");
        let c = parse("[mqtt]\nurl = \"mqtt://u:pw@broker:1999\"\ntopic_prefix = \"site7\"\n").unwrap();
        assert_eq!(c.topics.status(), "site7/status");
        assert!(!format!("{c:?}").contains("pw@") && !format!("{c:?}").contains("\"pw\""), "{c:?}");
    }

    #[test]
    fn the_shipped_configs_parse() {
        for file in ["config/carwatch.toml", "config/service.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(p) = Config::parse(&path, &text) {
                panic!("{file}:\n{p}");
            }
        }
        let c = Config::parse(
            Path::new("c"),
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/carwatch.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert!(c.mqtt.is_none(), "make run uses the embedded broker");
    }

    #[test]
    fn wrong_types_are_reported() {
        let problems = parse("state_dir = 5\n[model]\ndir = [1]\n").unwrap_err().0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, 1);
        assert_eq!(problems[1].line, 3);
    }
}
