//! Alert descriptions: what to look for, where, until when.
//!
//! An alert file holds `[[alert]]` tables:
//!
//! ```toml
//! [[alert]]
//! id = "amber-2291"            # unique; becomes the hit topic carwatch/hits/amber-2291
//! make = "BMW"                 # compared case-insensitively with the cascade's labels
//! model = "3-series"           # optional (needs make)
//! view = "front"               # optional
//! colour = "blue"              # optional; "silver" is grey
//! example = "suspect.jpg"      # optional photo(s) (path or URL): see below
//! min_similarity = 0.8         # optional, with example
//! cameras = ["gate-north"]     # optional; default every camera
//! min_confidence = 0.6         # marginal probability of the description
//! expires = 2026-12-01T00:00:00Z   # optional, RFC 3339 (TOML datetime or string)
//! note = "Case 2291, silver child seat"
//! confirm_frames = 2           # optional overrides of [matcher]
//! confirm_window_s = 10
//! cooldown_s = 60
//! ```
//!
//! An alert gives at least one of `make`, `colour` and `example`. Makes, models and
//! views must be ones the loaded cascade knows, and cameras must be configured: a typo
//! would otherwise be an alert that can never fire. Every problem is reported with
//! file:line:column.
//!
//! **Example photos.** `example` (a path, relative to the alert file, or a URL; or a
//! list) is a picture of the wanted car. The inference worker runs it through backbone
//! and cascade when the alert arrives ([`crate::example`]) and fills in [`Derived`]:
//! make, model and colour (and the view, shown but not required: the car may pass any
//! way round), and its embedding. Fields written in the entry win over derived ones.
//! With `min_similarity`, a vehicle must also look like the photo (cosine similarity of
//! embeddings). A photo that cannot be read rejects that alert alone.
//!
//! **Which number is compared.** `min_confidence` is compared with the probability of
//! the description (make, model, view: whatever is given or derived). An alert by
//! colour alone has no such probability: the vehicle's estimated colour must be the
//! alert's, and the hit's confidence is the colour estimate's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::colour::{Colour, Estimate};
use crate::document::{Document, Problem, Problems};
use crate::model::embedding::Embedding;
use crate::model::labels::distinct;
use crate::model::{Label, Leaf, Prediction};
use crate::rule::{MatcherConfig, Rule};
use crate::values::{Name, positive, probability, seconds};

pub mod remote;

/// Where an alert came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The alert file (`alerts` in the config).
    File,
    /// A retained message on `{prefix}/alerts/set/{id}` ([`remote`]).
    Mqtt,
}

/// One alert, validated, with labels in the cascade's spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: Name,
    pub source: Source,
    /// As written (see [`Alert::make`] for what is matched).
    pub make: Option<Label>,
    pub model: Option<Label>,
    pub view: Option<Label>,
    pub colour: Option<Colour>,
    pub example: Option<Example>,
    /// Least cosine similarity to the example's embedding.
    pub min_similarity: Option<f32>,
    /// None: every camera.
    pub cameras: Option<Vec<Name>>,
    pub min_confidence: f32,
    pub expires: Option<Timestamp>,
    pub note: Option<String>,
    pub rule: Rule,
    /// How far back the sightings are searched when the alert appears (`lookback_s`);
    /// `None`: `[sightings] lookback_s`.
    pub lookback: Option<std::time::Duration>,
}

/// An alert's example photos, and what the model made of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Paths (resolved against the alert file's directory) or URLs.
    pub photos: Vec<String>,
    /// Where `example` is written, for problems with the photos.
    pub at: Problem,
    /// `None` until the inference worker has seen the photos.
    pub derived: Option<Derived>,
}

/// What the model made of an alert's example photos (the mean over them).
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub view: Label,
    pub make: Label,
    pub model: Label,
    /// `None`: the photos show no colour (greyscale).
    pub colour: Option<Colour>,
    pub embedding: Embedding,
}

/// Why a vehicle matches an alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The probability compared with `min_confidence` (see the module docs).
    pub confidence: f32,
    /// Cosine similarity to the example photos, for alerts that have them.
    pub similarity: Option<f32>,
}

impl Alert {
    pub fn watches(&self, camera: &str) -> bool {
        self.cameras.as_ref().is_none_or(|c| c.iter().any(|n| n.as_str() == camera))
    }

    pub fn active_at(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|e| now < e)
    }

    fn derived(&self) -> Option<&Derived> {
        self.example.as_ref().and_then(|e| e.derived.as_ref())
    }

    /// The make matched: as written, else derived from the example.
    pub fn make(&self) -> Option<&Label> {
        self.make.as_ref().or(self.derived().map(|d| &d.make))
    }

    /// The model matched: as written, else derived (when the make is the derived one).
    pub fn model(&self) -> Option<&Label> {
        match (&self.model, self.derived()) {
            (Some(m), _) => Some(m),
            (None, Some(d)) if self.make() == Some(&d.make) => Some(&d.model),
            _ => None,
        }
    }

    /// The colour matched: as written, else derived.
    pub fn colour(&self) -> Option<Colour> {
        self.colour.or(self.derived().and_then(|d| d.colour))
    }

    /// The example's embedding, once derived.
    pub fn embedding(&self) -> Option<&Embedding> {
        self.derived().map(|d| &d.embedding)
    }

    /// Whether an example still has to be run through the model.
    pub fn underived(&self) -> bool {
        self.example.as_ref().is_some_and(|e| e.derived.is_none())
    }

    /// Probability of the description (make, model, view) in `p`; `None` for an alert
    /// that describes no make or view (colour alone).
    pub fn probability(&self, p: &Prediction) -> Option<f32> {
        let view = self.view.as_deref();
        match self.make() {
            Some(make) => Some(p.probability(view, make, self.model().map(|m| m.as_str()))),
            None => view.map(|v| p.view_probability(v)),
        }
    }

    /// Whether the vehicle `p` shows (whose colour `colour` estimates, asked only when
    /// this alert has one) matches; with the numbers the hit reports.
    pub fn verdict(&self, p: &Prediction, colour: impl FnOnce() -> Estimate) -> Option<Verdict> {
        let described = self.probability(p);
        if described.is_some_and(|c| c < self.min_confidence) {
            return None;
        }
        let mut confidence = described.unwrap_or(1.0);
        if let Some(want) = self.colour() {
            let seen = colour();
            if seen.colour != want {
                return None;
            }
            if described.is_none() {
                confidence = seen.p;
            }
        }
        let similarity = self.embedding().map(|e| p.embedding.as_ref().map_or(0.0, |v| e.similarity(v)));
        if let (Some(least), Some(s)) = (self.min_similarity, similarity)
            && s < least
        {
            return None;
        }
        if self.underived() {
            return None;
        }
        Some(Verdict { confidence, similarity })
    }

    /// "blue bmw 3-series (front)" for logs.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(c) = self.colour() {
            parts.push(c.name().to_string());
        }
        if let Some(m) = self.make() {
            parts.push(m.to_string());
        }
        if let Some(m) = self.model() {
            parts.push(m.to_string());
        }
        if let Some(v) = &self.view {
            parts.push(format!("({v})"));
        }
        if parts.is_empty() {
            parts.push("a vehicle like the example".into());
        }
        parts.join(" ")
    }

    /// What identifies the definition compactly (retrospective hits are announced once
    /// per definition): a hash of everything that decides a match.
    pub fn definition(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{self:?}").hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// The retained `alerts/active` entry.
    pub fn summary(&self) -> AlertSummary {
        AlertSummary {
            id: self.id.to_string(),
            source: self.source,
            make: self.make.as_ref().map(Label::to_string),
            model: self.model.as_ref().map(Label::to_string),
            view: self.view.as_ref().map(Label::to_string),
            colour: self.colour.map(|c| c.name()),
            example: self.example.as_ref().map(|e| e.photos.clone()),
            derived: self.derived().map(|d| DerivedSummary {
                view: d.view.to_string(),
                make: d.make.to_string(),
                model: d.model.to_string(),
                colour: d.colour.map(|c| c.name()),
            }),
            min_similarity: self.min_similarity,
            cameras: self.cameras.as_ref().map(|c| c.iter().map(|n| n.to_string()).collect()),
            min_confidence: self.min_confidence,
            expires: self.expires.map(crate::time::rfc3339),
            note: self.note.clone(),
        }
    }
}

/// An alert as published on `{prefix}/alerts/active`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertSummary {
    pub id: String,
    /// Where the alert came from (`file` or `mqtt`).
    pub source: Source,
    pub make: Option<String>,
    pub model: Option<String>,
    pub view: Option<String>,
    pub colour: Option<&'static str>,
    pub example: Option<Vec<String>>,
    /// What the example photos were taken for.
    pub derived: Option<DerivedSummary>,
    pub min_similarity: Option<f32>,
    pub cameras: Option<Vec<String>>,
    pub min_confidence: f32,
    pub expires: Option<String>,
    pub note: Option<String>,
}

/// [`Derived`] as published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedSummary {
    pub view: String,
    pub make: String,
    pub model: String,
    pub colour: Option<&'static str>,
}

/// The labels alerts may use: what the loaded cascade can answer, and the cameras.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub leaves: Vec<Leaf>,
    pub cameras: Vec<Name>,
}

impl Vocabulary {
    fn find<'a>(&'a self, pick: impl Fn(&'a Leaf) -> &'a Label, want: &str) -> Option<&'a Label> {
        self.leaves.iter().map(pick).find(|l| **l == want)
    }

    /// The distinct labels `pick` takes from the leaves `keep` accepts, listed.
    fn known(&self, keep: impl Fn(&Leaf) -> bool, pick: impl Fn(&Leaf) -> &Label) -> String {
        let labels = distinct(self.leaves.iter().filter(|l| keep(l)).map(pick));
        labels.iter().map(Label::as_str).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: Spanned<Name>,
    #[serde(default)]
    make: Option<Spanned<String>>,
    #[serde(default)]
    colour: Option<Spanned<String>>,
    #[serde(default)]
    example: Option<Spanned<Photos>>,
    #[serde(default, deserialize_with = "opt_probability")]
    min_similarity: Option<f32>,
    #[serde(default)]
    model: Option<Spanned<String>>,
    #[serde(default)]
    view: Option<Spanned<String>>,
    #[serde(default)]
    cameras: Option<Vec<Spanned<Name>>>,
    #[serde(default = "default_confidence", deserialize_with = "probability")]
    min_confidence: f32,
    #[serde(default)]
    expires: Option<Expiry>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default, deserialize_with = "opt_positive")]
    confirm_frames: Option<u32>,
    #[serde(default, deserialize_with = "opt_seconds")]
    confirm_window_s: Option<Duration>,
    #[serde(default, deserialize_with = "opt_seconds")]
    cooldown_s: Option<Duration>,
    #[serde(default, deserialize_with = "opt_seconds")]
    lookback_s: Option<Duration>,
}

/// `example`: one photo or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Photos {
    One(String),
    Many(Vec<String>),
}

fn opt_probability<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    probability(d).map(Some)
}

fn default_confidence() -> f32 {
    0.6
}

fn opt_positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    positive(d).map(Some)
}

fn opt_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    seconds(d).map(Some)
}

/// `expires`: a TOML datetime or a string, RFC 3339 with a time zone.
struct Expiry(Timestamp);

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Toml(toml::value::Datetime),
        }
        let text = match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expires must be an RFC 3339 time such as 2026-12-01T18:00:00Z"))?
        {
            Raw::Text(s) => s,
            Raw::Toml(dt) => dt.to_string(),
        };
        text.parse::<Timestamp>().map(Expiry).map_err(|e| {
            serde::de::Error::custom(format!(
                "expires `{text}` is not an RFC 3339 time with a time zone (like 2026-12-01T18:00:00Z): {e}"
            ))
        })
    }
}

/// Why an alert file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("cannot read alert file {}: {source} (create it; it may hold no alerts)", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Problems),
}

/// Every alert of a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertSet {
    pub alerts: Vec<Arc<Alert>>,
}

impl AlertSet {
    pub fn load(path: &Path, vocabulary: &Vocabulary, defaults: &MatcherConfig) -> Result<AlertSet, AlertsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AlertsError::Read { path: path.to_path_buf(), source })?;
        AlertSet::parse(path, &text, vocabulary, defaults).map_err(AlertsError::Invalid)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        vocabulary: &Vocabulary,
        defaults: &MatcherConfig,
    ) -> Result<AlertSet, Problems> {
        AlertSet::parse_in(path, path.parent().unwrap_or(Path::new(".")), text, vocabulary, defaults)
    }

    /// As [`AlertSet::parse`], with relative example photos resolved against `dir`
    /// (alerts that do not come from a file: [`remote`]).
    pub fn parse_in(
        path: &Path,
        dir: &Path,
        text: &str,
        vocabulary: &Vocabulary,
        defaults: &MatcherConfig,
    ) -> Result<AlertSet, Problems> {
        let mut doc = Document::parse(path, text);
        doc.reject_unknown_keys(&["alert"]);
        let entries = doc.entries::<Entry>("alert");
        let mut seen = HashSet::new();
        let mut alerts = Vec::new();
        for (i, spanned) in entries.into_iter().enumerate() {
            let mut check = EntryCheck { doc: &mut doc, key: format!("alert[{i}]"), ok: true };
            let span = spanned.span();
            let e = spanned.into_inner();
            if !seen.insert(e.id.get_ref().clone()) {
                check.problem(e.id.span(), format!("alert id `{}` is used twice", e.id.get_ref()));
            }
            if let Some(alert) = check.resolve(e, span, vocabulary, defaults, dir) {
                alerts.push(Arc::new(alert));
            }
        }
        let problems = doc.into_problems();
        if problems.is_empty() { Ok(AlertSet { alerts }) } else { Err(Problems(problems)) }
    }

    /// Alerts not expired at `now`.
    pub fn active(&self, now: Timestamp) -> Vec<Arc<Alert>> {
        self.alerts.iter().filter(|a| a.active_at(now)).cloned().collect()
    }
}

/// Checks one `[[alert]]` entry against the models' labels and the cameras, noting
/// each problem at the value it blames.
struct EntryCheck<'d, 't> {
    doc: &'d mut Document<'t>,
    key: String,
    ok: bool,
}

impl EntryCheck<'_, '_> {
    fn problem(&mut self, span: std::ops::Range<usize>, reason: String) {
        self.doc.push_problem(span, &self.key, &reason);
        self.ok = false;
    }

    /// The alert, with labels in the cascade's spelling; `None` if anything was wrong.
    fn resolve(
        mut self,
        e: Entry,
        entry_span: std::ops::Range<usize>,
        vocabulary: &Vocabulary,
        defaults: &MatcherConfig,
        dir: &Path,
    ) -> Option<Alert> {
        if e.make.is_none() && e.colour.is_none() && e.example.is_none() {
            let reason = "an alert needs at least one of `make`, `colour` and `example`".to_string();
            self.problem(e.id.span(), reason);
        }
        let make = e.make.as_ref().map(|make| match vocabulary.find(|l| &l.make, make.get_ref()) {
            Some(m) => m.clone(),
            None => {
                let known = vocabulary.known(|_| true, |l| &l.make);
                let reason = format!("make `{}` is not one the models know ({known})", make.get_ref());
                self.problem(make.span(), reason);
                Label::default()
            }
        });
        let model = e.model.as_ref().and_then(|m| {
            let Some(make) = &make else {
                self.problem(m.span(), format!("model `{}` needs a make (`make = ...`)", m.get_ref()));
                return None;
            };
            let found = vocabulary.leaves.iter().find(|l| l.make == *make && l.model == m.get_ref().as_str());
            if found.is_none() && !make.is_empty() {
                let known = vocabulary.known(|l| l.make == *make, |l| &l.model);
                let reason = format!("model `{}` is not a {make} model the models know ({known})", m.get_ref());
                self.problem(m.span(), reason);
            }
            found.map(|l| l.model.clone())
        });
        let view = e.view.as_ref().and_then(|v| {
            let found = vocabulary.find(|l| &l.view, v.get_ref());
            if found.is_none() {
                let known = vocabulary.known(|_| true, |l| &l.view);
                self.problem(v.span(), format!("view `{}` is not one the models know ({known})", v.get_ref()));
            }
            found.cloned()
        });
        let cameras = e.cameras.map(|list| {
            for c in &list {
                if !vocabulary.cameras.contains(c.get_ref()) {
                    self.problem(c.span(), format!("camera `{}` is not configured", c.get_ref()));
                }
            }
            list.into_iter().map(|c| c.into_inner()).collect()
        });
        let colour = e.colour.as_ref().and_then(|c| {
            let found = Colour::parse(c.get_ref());
            if found.is_none() {
                let known = Colour::NAMED.map(Colour::name).join(", ");
                self.problem(c.span(), format!("colour `{}` is not one carwatch names ({known}, silver)", c.get_ref()));
            }
            found
        });
        let example = e.example.map(|photos| {
            let span = photos.span();
            let list = match photos.into_inner() {
                Photos::One(p) => vec![p],
                Photos::Many(list) => list,
            };
            if list.is_empty() {
                self.problem(span.clone(), "example lists no photo".into());
            }
            let photos = list.into_iter().map(|p| resolve_photo(dir, p)).collect();
            Example { photos, at: self.doc.problem_at(span, &format!("{}.example", self.key), ""), derived: None }
        });
        if e.min_similarity.is_some() && example.is_none() {
            self.problem(entry_span, "min_similarity compares vehicles with an example photo: add `example`".into());
        }
        self.ok.then(|| Alert {
            id: e.id.into_inner(),
            source: Source::File,
            make,
            model,
            view,
            colour,
            example,
            min_similarity: e.min_similarity,
            cameras,
            min_confidence: e.min_confidence,
            expires: e.expires.map(|x| x.0),
            note: e.note,
            rule: Rule {
                confirm_frames: e.confirm_frames.unwrap_or(defaults.confirm_frames),
                window: e.confirm_window_s.unwrap_or(defaults.confirm_window),
                cooldown: e.cooldown_s.unwrap_or(defaults.cooldown),
            },
            lookback: e.lookback_s,
        })
    }
}

/// An example photo as written: URLs as they are, paths against the alert file's
/// directory.
fn resolve_photo(dir: &Path, photo: String) -> String {
    if photo.starts_with("http://") || photo.starts_with("https://") {
        return photo;
    }
    let path = Path::new(photo.strip_prefix("file://").unwrap_or(&photo));
    if path.is_absolute() { photo } else { dir.join(path).to_string_lossy().into_owned() }
}

/// How bad a problem with an input file is, for `{prefix}/errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The input was refused; what ran before stays in force.
    Error,
    /// The input was applied, but it may not be what the operator meant.
    Warning,
}

/// Keeps the alert set current while carwatch runs (thread `alerts`): the file's alerts
/// and those set over MQTT ([`remote`]), merged; an id in both is the file's.
///
/// The file is read again when it changes (inotify on its directory, so editors that
/// write a new file and rename it are seen), every `poll` as a fallback (network file
/// systems, missed events), and on SIGHUP. A change is read only once the file has been
/// the same for `settle`, so a slow writer is not caught half-way. An edit that does not
/// parse or validate leaves the last good set in force; its problems go to the log and
/// to `errors` (file:line:column each). A good edit goes to `updates`.
///
/// An edit that removes every alert (an emptied or cut file parses as "no alerts") is
/// applied only once the file has stayed that way for `empty_settle` as well, and is
/// reported as a warning: a writer that truncates first and writes later never clears
/// the alerts in between. Writing a temporary file and renaming it avoids all of this.
pub struct Reloader {
    pub path: PathBuf,
    pub vocabulary: Vocabulary,
    pub defaults: MatcherConfig,
    pub updates: crossbeam_channel::Sender<AlertSet>,
    pub errors: crossbeam_channel::Sender<(Severity, Problems)>,
    pub hup: crossbeam_channel::Receiver<()>,
    pub stop: crossbeam_channel::Receiver<()>,
    /// Messages of the `inbound` thread (never anything when it does not run).
    pub remote: crossbeam_channel::Receiver<remote::Message>,
    pub poll: Duration,
    /// How long the file must stay unchanged before it is read.
    pub settle: Duration,
    /// How long a file with no alerts must stay unchanged before it replaces a set that
    /// has some.
    pub empty_settle: Duration,
}

/// What identifies a version of the file without reading it.
pub type Stamp = Option<(std::time::SystemTime, u64)>;

/// The file's stamp now. Take it *before* reading the file, so that an edit between
/// the two is seen as a change later rather than lost.
pub fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// What the running set came from: the text last read and how many alerts it gave
/// (unknown for the text read at start).
struct Applied {
    text: String,
    alerts: Option<usize>,
}

/// The two sources of alerts, as last applied.
struct Merged {
    file: AlertSet,
    mqtt: std::collections::BTreeMap<String, Arc<Alert>>,
    /// After a (re)connection: MQTT alerts the broker has not sent again yet, and until
    /// when it may.
    unconfirmed: Option<(std::time::Instant, HashSet<String>)>,
}

impl Merged {
    /// The file's alerts, then the MQTT ones whose id the file does not use.
    fn set(&self) -> AlertSet {
        let in_file: HashSet<&str> = self.file.alerts.iter().map(|a| a.id.as_str()).collect();
        let mut alerts = self.file.alerts.clone();
        alerts.extend(self.mqtt.values().filter(|a| !in_file.contains(a.id.as_str())).cloned());
        AlertSet { alerts }
    }

    /// Problems for MQTT alerts that the file's alerts of the same id hide (placed in
    /// the alert `file`).
    fn shadowed(&self, file: &Path) -> Option<Problems> {
        let problems: Vec<Problem> = self
            .file
            .alerts
            .iter()
            .filter(|f| self.mqtt.contains_key(f.id.as_str()))
            .map(|f| Problem {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                reason: format!(
                    "alert `{}` set over MQTT is not in force: this file has an alert of that id, which wins",
                    f.id
                ),
            })
            .collect();
        (!problems.is_empty()).then_some(Problems(problems))
    }
}

/// What became of a changed file.
enum Outcome {
    Done,
    /// It changed again while being confirmed: read it again.
    Unsettled,
    Stop,
}

/// Why the reloader stopped waiting.
enum Waited {
    Stop,
    /// The file's stamp when it had not changed for the whole wait (bounded).
    Stable(Stamp),
}

impl Reloader {
    /// Runs until `stop` fires. `initial` is the text the running set came from and
    /// `initial_stamp` the file's stamp taken before that text was read.
    /// `initial_set` is what that text gave.
    pub fn run(self, initial: &str, initial_stamp: Stamp, initial_set: AlertSet) {
        let (fs_tx, fs_rx) = crossbeam_channel::bounded::<()>(16);
        let _watcher = self.watch(fs_tx);
        let mut state = Applied { text: initial.to_string(), alerts: None };
        let mut merged = Merged { file: initial_set, mqtt: Default::default(), unconfirmed: None };
        let mut last_stamp = initial_stamp;
        let tick = crossbeam_channel::tick(self.poll);
        // An edit made before the watcher started is only seen by comparing stamps.
        let mut pending = stamp(&self.path) != last_stamp;
        loop {
            let forced = if std::mem::take(&mut pending) {
                false
            } else {
                crossbeam_channel::select! {
                    recv(self.stop) -> _ => return,
                    recv(self.hup) -> r => {
                        if r.is_err() {
                            return;
                        }
                        tracing::info!("SIGHUP: reading {} again", self.path.display());
                        true
                    }
                    recv(fs_rx) -> _ => false,
                    recv(self.remote) -> m => {
                        if let Ok(m) = m
                            && self.remote(m, &mut merged)
                            && self.updates.send(merged.set()).is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    recv(tick) -> _ => {
                        if self.expire_unconfirmed(&mut merged) && self.updates.send(merged.set()).is_err() {
                            return;
                        }
                        if stamp(&self.path) == last_stamp {
                            continue;
                        }
                        false
                    }
                }
            };
            let Waited::Stable(seen) = self.settled(self.settle, &fs_rx) else { return };
            last_stamp = seen;
            let text = match std::fs::read_to_string(&self.path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot read alert file {}: {e}; keeping the current alerts", self.path.display());
                    continue;
                }
            };
            if text == state.text && !forced {
                continue;
            }
            match self.apply(text, seen, &mut state, &mut merged, &fs_rx) {
                Outcome::Stop => return,
                Outcome::Unsettled => pending = true,
                Outcome::Done => {}
            }
        }
    }

    /// Watches the file's directory (so editors that write a new file and rename it are
    /// seen); `None` if the platform will not, leaving the periodic check.
    fn watch(&self, fs_tx: crossbeam_channel::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let name = self.path.file_name().map(|n| n.to_os_string());
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(e) = event
                && e.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            {
                let _ = fs_tx.try_send(());
            }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watched = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
        match watched {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch {} for changes ({e}); checking every {:?}", dir.display(), self.poll);
                None
            }
        }
    }

    /// Parses `text` (read when the file's stamp was `seen`) and sends the set on, or
    /// its problems to `errors`. A set that removes every alert must first stay so.
    fn apply(
        &self,
        text: String,
        seen: Stamp,
        state: &mut Applied,
        merged: &mut Merged,
        fs_rx: &crossbeam_channel::Receiver<()>,
    ) -> Outcome {
        let set = match AlertSet::parse(&self.path, &text, &self.vocabulary, &self.defaults) {
            Ok(set) => set,
            Err(problems) => {
                tracing::error!(
                    "alert file {} not applied, the previous alerts stay active:\n{problems}",
                    self.path.display()
                );
                state.text = text;
                let _ = self.errors.send((Severity::Error, problems));
                return Outcome::Done;
            }
        };
        if set.alerts.is_empty() && state.alerts.unwrap_or(1) > 0 {
            match self.settled(self.empty_settle, fs_rx) {
                Waited::Stop => return Outcome::Stop,
                Waited::Stable(s) if s == seen => {}
                // Still being written: look again once it settles.
                Waited::Stable(_) => return Outcome::Unsettled,
            }
            let reason = format!(
                "the alert file now holds no alerts: every alert was removed (after it stayed so for {:?})",
                self.empty_settle
            );
            tracing::warn!("{}: {reason}", self.path.display());
            let problem =
                crate::document::Problem { file: self.path.clone(), line: 0, column: 0, key: String::new(), reason };
            let _ = self.errors.send((Severity::Warning, Problems(vec![problem])));
        }
        tracing::info!("alert file {} reloaded: {} alert(s)", self.path.display(), set.alerts.len());
        state.text = text;
        state.alerts = Some(set.alerts.len());
        merged.file = set;
        if let Some(problems) = merged.shadowed(&self.path) {
            tracing::error!("{problems}");
            let _ = self.errors.send((Severity::Error, problems));
        }
        if self.updates.send(merged.set()).is_err() { Outcome::Stop } else { Outcome::Done }
    }

    /// Applies a message of the `inbound` thread; whether the merged set changed.
    /// A message that does not check out changes nothing and goes to `errors`.
    fn remote(&self, m: remote::Message, merged: &mut Merged) -> bool {
        let (topic, id, payload) = match m {
            remote::Message::Connected => {
                let known = merged.mqtt.keys().cloned().collect::<HashSet<_>>();
                merged.unconfirmed =
                    (!known.is_empty()).then(|| (std::time::Instant::now() + remote::RECONFIRM, known));
                return false;
            }
            remote::Message::Set { topic, id, payload } => (topic, id, payload),
        };
        if let Some((_, waiting)) = merged.unconfirmed.as_mut() {
            waiting.remove(&id);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let before = merged.set();
        match remote::parse(&topic, &id, &payload, dir, &self.vocabulary, &self.defaults) {
            Ok(None) => {
                if merged.mqtt.remove(&id).is_some() {
                    tracing::info!(alert = %id, "alert {id} removed over MQTT ({topic})");
                }
            }
            Ok(Some(alert)) => {
                let alert = Arc::new(alert);
                if merged.mqtt.get(&id) != Some(&alert) {
                    tracing::info!(alert = %id, "alert {id} set over MQTT ({topic}): {}", alert.describe());
                }
                merged.mqtt.insert(id.clone(), alert);
                if merged.file.alerts.iter().any(|a| a.id.as_str() == id) {
                    let reason = format!(
                        "alert `{id}` set over MQTT is not in force: the alert file has an alert of that id, which wins"
                    );
                    tracing::error!("{topic}: {reason}");
                    let problem = Problem { file: topic.into(), line: 0, column: 0, key: String::new(), reason };
                    let _ = self.errors.send((Severity::Error, Problems(vec![problem])));
                }
            }
            Err(problems) => {
                tracing::error!("alert message not applied, alert `{id}` stays as it was:\n{problems}");
                let _ = self.errors.send((Severity::Error, problems));
            }
        }
        merged.set() != before
    }

    /// Removes the MQTT alerts the broker did not send again after a reconnection (their
    /// retained messages were cleared meanwhile); whether any went.
    fn expire_unconfirmed(&self, merged: &mut Merged) -> bool {
        let Some((until, _)) = &merged.unconfirmed else { return false };
        if std::time::Instant::now() < *until {
            return false;
        }
        let Some((_, gone)) = merged.unconfirmed.take() else { return false };
        let before = merged.set();
        for id in gone {
            tracing::info!(alert = %id, "alert {id} removed: the broker no longer holds its message");
            merged.mqtt.remove(&id);
        }
        merged.set() != before
    }

    /// Waits until the file has not changed for `quiet` (at most ten times that).
    fn settled(&self, quiet: Duration, fs_rx: &crossbeam_channel::Receiver<()>) -> Waited {
        let deadline = std::time::Instant::now() + quiet * 10;
        let mut seen = stamp(&self.path);
        loop {
            if self.stop.recv_timeout(quiet).is_ok() {
                return Waited::Stop;
            }
            while fs_rx.try_recv().is_ok() {}
            let now = stamp(&self.path);
            if now == seen || std::time::Instant::now() > deadline {
                return Waited::Stable(now);
            }
            seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> Vocabulary {
        let leaf = |v: &str, m: &str, o: &str| Leaf { view: v.into(), make: m.into(), model: o.into() };
        Vocabulary {
            leaves: vec![leaf("front", "BMW", "3-series"), leaf("front", "BMW", "x5"), leaf("angled", "audi", "a4")],
            cameras: vec![Name::new("gate").unwrap(), Name::new("yard").unwrap()],
        }
    }

    fn parse(text: &str) -> Result<AlertSet, Problems> {
        AlertSet::parse(Path::new("alerts.toml"), text, &vocabulary(), &MatcherConfig::default())
    }

    #[test]
    fn labels_resolve_case_insensitively_and_defaults_apply() {
        let set = parse("[[alert]]\nid = \"a1\"\nmake = \"bmw\"\nmodel = \"3-SERIES\"\nexpires = 2026-12-01T00:00:00Z\n\n[[alert]]\nid = \"a2\"\nmake = \"Audi\"\nview = \"ANGLED\"\ncameras = [\"yard\"]\ncooldown_s = 5\nexpires = \"2026-12-01T01:00:00+01:00\"\n").unwrap();
        let a = &set.alerts[0];
        assert_eq!((a.make.as_deref(), a.model.as_deref()), (Some("BMW"), Some("3-series")));
        assert_eq!(a.min_confidence, 0.6);
        assert_eq!(
            a.rule,
            Rule { confirm_frames: 2, window: Duration::from_secs(10), cooldown: Duration::from_secs(60) }
        );
        let b = &set.alerts[1];
        assert_eq!(b.view.as_deref(), Some("angled"));
        assert_eq!(b.rule.cooldown, Duration::from_secs(5));
        assert!(b.watches("yard") && !b.watches("gate"));
        assert_eq!(a.expires, b.expires, "the same instant in two notations");
        let before: Timestamp = "2026-11-30T23:59:59Z".parse().unwrap();
        let after: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert!(a.active_at(before) && !a.active_at(after));
        assert_eq!(set.active(after).len(), 0);
    }

    #[test]
    fn colour_and_example_alerts_parse_and_their_mistakes_are_placed() {
        let set = parse(
            "[[alert]]\nid = \"c\"\ncolour = \"Silver\"\n\n[[alert]]\nid = \"e\"\nexample = [\"a.jpg\", \"/p/b.jpg\", \"https://x/c.jpg\"]\nmin_similarity = 0.8\nmake = \"audi\"\n",
        )
        .unwrap();
        let (c, e) = (&set.alerts[0], &set.alerts[1]);
        assert_eq!((c.colour(), c.make(), c.describe().as_str()), (Some(Colour::Grey), None, "grey"));
        let photos = &e.example.as_ref().unwrap().photos;
        assert_eq!(
            photos,
            &["a.jpg".to_string(), "/p/b.jpg".into(), "https://x/c.jpg".into()],
            "relative to alerts.toml's dir"
        );
        assert!(e.underived() && e.make().is_some_and(|m| m == "audi"));
        assert_eq!(e.example.as_ref().unwrap().at.line, 7);
        let text = "[[alert]]\nid = \"none\"\nview = \"front\"\n\n[[alert]]\nid = \"m\"\nmodel = \"x5\"\ncolour = \"teal\"\n\n[[alert]]\nid = \"s\"\nmake = \"bmw\"\nmin_similarity = 0.5\n";
        let problems = parse(text).unwrap_err().0;
        let at: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.reason.as_str())).collect();
        assert!(at[0].0 == 2 && at[0].1.contains("at least one of `make`, `colour` and `example`"), "{at:?}");
        assert!(at[1].0 == 7 && at[1].1.contains("needs a make"), "{at:?}");
        assert!(at[2].0 == 8 && at[2].1.contains("colour `teal`"), "{at:?}");
        assert!(at[3].0 >= 10 && at[3].1.contains("min_similarity"), "{at:?}");
    }

    #[test]
    fn a_colour_alert_matches_on_colour_and_reports_the_estimate() {
        use crate::model::cascade::testing::prediction;
        let set = parse(
            "[[alert]]\nid = \"c\"\ncolour = \"blue\"\n\n[[alert]]\nid = \"b\"\nmake = \"bmw\"\ncolour = \"red\"\n",
        )
        .unwrap();
        let p = prediction(&[(("front", "BMW", "3-series"), 0.9), (("angled", "audi", "a4"), 0.1)]);
        let blue = || Estimate { colour: Colour::Blue, p: 0.7 };
        let red = || Estimate { colour: Colour::Red, p: 0.8 };
        let v = set.alerts[0].verdict(&p, blue).unwrap();
        assert_eq!((v.confidence, v.similarity), (0.7, None), "colour alone: the estimate's probability");
        assert!(set.alerts[0].verdict(&p, red).is_none());
        assert!(set.alerts[1].verdict(&p, blue).is_none(), "the right make in the wrong colour");
        assert!((set.alerts[1].verdict(&p, red).unwrap().confidence - 0.9).abs() < 1e-6);
        let unknown = || Estimate { colour: Colour::Unknown, p: 1.0 };
        assert!(set.alerts[0].verdict(&p, unknown).is_none(), "a greyscale frame matches no colour");
    }

    #[test]
    fn every_problem_is_listed_with_its_position() {
        let text = "[[alert]]\nid = \"a1\"\nmake = \"tesla\"\n\n[[alert]]\nid = \"a1\"\nmake = \"bmw\"\nmodel = \"a4\"\ncameras = [\"gate\", \"roof\"]\n\n[[alert]]\nid = \"a3\"\nmake = \"bmw\"\nexpires = 2026-12-01T00:00:00\nmin_confidence = 1.5\n";
        let problems = parse(text).unwrap_err().0;
        let at: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.reason.as_str())).collect();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(at[0].0 == 3 && at[0].1.contains("make `tesla`"), "{at:?}");
        assert!(at[1].0 == 6 && at[1].1.contains("used twice"), "{at:?}");
        assert!(at[2].0 == 8 && at[2].1.contains("model `a4` is not a BMW model"), "{at:?}");
        assert!(at[3].0 == 9 && at[3].1.contains("camera `roof`"), "{at:?}");
        assert!(at[4].0 >= 13 && (at[4].1.contains("time zone") || at[4].1.contains("probability")), "{at:?}");
    }

    #[test]
    fn an_empty_file_is_no_alerts() {
        assert!(parse("").unwrap().alerts.is_empty());
        assert!(parse("# nothing yet\n").unwrap().alerts.is_empty());
    }

    struct Running {
        updates: crossbeam_channel::Receiver<AlertSet>,
        errors: crossbeam_channel::Receiver<(Severity, Problems)>,
        remote: crossbeam_channel::Sender<remote::Message>,
        _stop: crossbeam_channel::Sender<()>,
        _hup: crossbeam_channel::Sender<()>,
    }

    /// A reloader on `path` whose running set came from `initial` (stamp `stamp`).
    fn reloader(path: &Path, initial: &str, stamp: Stamp) -> Running {
        let (updates_tx, updates) = crossbeam_channel::unbounded();
        let (errors_tx, errors) = crossbeam_channel::unbounded();
        let (stop_tx, stop) = crossbeam_channel::bounded(1);
        let (hup_tx, hup) = crossbeam_channel::bounded(1);
        let (remote_tx, remote_rx) = crossbeam_channel::unbounded();
        let r = Reloader {
            path: path.to_path_buf(),
            vocabulary: vocabulary(),
            defaults: MatcherConfig::default(),
            updates: updates_tx,
            errors: errors_tx,
            hup,
            stop,
            remote: remote_rx,
            poll: Duration::from_millis(100),
            settle: Duration::from_millis(100),
            empty_settle: Duration::from_millis(1500),
        };
        let initial = initial.to_string();
        let set = parse(&initial).unwrap_or_default();
        std::thread::spawn(move || r.run(&initial, stamp, set));
        Running { updates, errors, remote: remote_tx, _stop: stop_tx, _hup: hup_tx }
    }

    const ONE: &str = "[[alert]]\nid = \"a1\"\nmake = \"bmw\"\n";
    const TWO: &str = "[[alert]]\nid = \"a1\"\nmake = \"bmw\"\n\n[[alert]]\nid = \"a2\"\nmake = \"audi\"\n";
    const WAIT: Duration = Duration::from_secs(10);

    fn set(id: &str, payload: &str) -> remote::Message {
        remote::Message::Set { topic: format!("cw/alerts/set/{id}"), id: id.into(), payload: payload.into() }
    }

    fn ids(set: &AlertSet) -> Vec<(String, Source)> {
        set.alerts.iter().map(|a| (a.id.to_string(), a.source)).collect()
    }

    #[test]
    fn alerts_set_over_mqtt_join_the_file_which_wins_on_an_id_in_both() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alerts.toml");
        std::fs::write(&path, ONE).unwrap();
        let r = reloader(&path, ONE, stamp(&path));
        r.remote.send(set("m1", r#"{"make": "audi", "note": "fleet"}"#)).unwrap();
        let got = r.updates.recv_timeout(WAIT).unwrap();
        assert_eq!(ids(&got), [("a1".into(), Source::File), ("m1".into(), Source::Mqtt)]);
        assert_eq!(got.alerts[1].make.as_ref().map(|m| m.to_string()).as_deref(), Some("audi"));
        // A bad message changes nothing and says why, naming the key as sent.
        r.remote.send(set("m1", r#"{"make": "tesla"}"#)).unwrap();
        let (severity, problems) = r.errors.recv_timeout(WAIT).unwrap();
        assert_eq!(severity, Severity::Error);
        let text = problems.to_string();
        assert!(text.starts_with("cw/alerts/set/m1: make `tesla` is not one"), "{text}");
        // The file's a1 wins over an MQTT a1, which is reported.
        r.remote.send(set("a1", r#"{"make": "audi"}"#)).unwrap();
        let (_, problems) = r.errors.recv_timeout(WAIT).unwrap();
        assert!(problems.to_string().contains("alert `a1` set over MQTT is not in force"), "{problems}");
        // An empty message removes m1.
        r.remote.send(set("m1", "")).unwrap();
        let got = r.updates.recv_timeout(WAIT).unwrap();
        assert_eq!(ids(&got), [("a1".into(), Source::File)]);
        // Once the file no longer has a1, the MQTT one is in force.
        std::fs::write(&path, "[[alert]]\nid = \"f2\"\nmake = \"bmw\"\n").unwrap();
        let got = r.updates.recv_timeout(WAIT).unwrap();
        assert_eq!(ids(&got), [("f2".into(), Source::File), ("a1".into(), Source::Mqtt)]);
    }

    #[test]
    fn an_mqtt_alert_the_broker_does_not_send_again_after_a_reconnection_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alerts.toml");
        std::fs::write(&path, "").unwrap();
        let r = reloader(&path, "", stamp(&path));
        r.remote.send(set("kept", r#"{"make": "bmw"}"#)).unwrap();
        r.remote.send(set("cleared", r#"{"make": "audi"}"#)).unwrap();
        r.updates.recv_timeout(WAIT).unwrap();
        assert_eq!(r.updates.recv_timeout(WAIT).unwrap().alerts.len(), 2);
        r.remote.send(remote::Message::Connected).unwrap();
        r.remote.send(set("kept", r#"{"make": "bmw"}"#)).unwrap();
        let got = r.updates.recv_timeout(remote::RECONFIRM + WAIT).unwrap();
        assert_eq!(ids(&got), [("kept".into(), Source::Mqtt)]);
    }

    #[test]
    fn mqtt_messages_are_checked_as_entries_are() {
        let v = vocabulary();
        let d = MatcherConfig::default();
        let dir = Path::new("/etc/carwatch");
        let parse = |id: &str, payload: &str| remote::parse("cw/alerts/set/x", id, payload.as_bytes(), dir, &v, &d);
        let a = parse(
            "amber-1",
            r#"{"make": "bmw", "model": "x5", "example": "car.jpg", "expires": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.id.as_str(), a.source), ("amber-1", Source::Mqtt));
        assert_eq!(a.example.unwrap().photos, ["/etc/carwatch/car.jpg"]);
        assert!(a.expires.is_some());
        assert_eq!(parse("x", "").unwrap(), None, "empty: removed");
        let err = |id: &str, payload: &str| parse(id, payload).unwrap_err().to_string();
        assert!(err("x", "not json").contains("not a JSON object"));
        assert!(err("x", r#"{"id": "y", "make": "bmw"}"#).contains("the topic says `x`"));
        assert!(err("x", r#"{"make": null}"#).contains("null"));
        assert!(err("x", r#"{"model": "x5"}"#).contains("needs a make"));
        assert!(err("x", r#"{"make": "bmw", "colour": "plaid"}"#).contains("colour `plaid`"));
        assert!(err("a b", r#"{"make": "bmw"}"#).contains("letters, digits"));
    }

    /// The review's defect 13: an edit between reading the file at start and recording
    /// its stamp was never applied.
    #[test]
    fn an_edit_made_while_starting_is_applied() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alerts.toml");
        std::fs::write(&path, ONE).unwrap();
        let before = stamp(&path);
        // carwatch read ONE; the operator saves TWO before the reloader runs.
        std::fs::write(&path, TWO).unwrap();
        let r = reloader(&path, ONE, before);
        let set = r.updates.recv_timeout(WAIT).expect("the edit is applied");
        assert_eq!(set.alerts.len(), 2);
    }

    /// The review's defect 5: a file cut to nothing by a slow writer wiped every alert.
    #[test]
    fn emptying_the_file_applies_only_once_it_stays_empty_and_warns() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alerts.toml");
        std::fs::write(&path, TWO).unwrap();
        let r = reloader(&path, TWO, stamp(&path));
        // A writer that truncates, pauses (longer than the settle time), then writes.
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(Duration::from_millis(600));
        std::fs::write(&path, ONE).unwrap();
        let set = r.updates.recv_timeout(WAIT).expect("an update");
        assert_eq!(set.alerts.len(), 1, "the empty moment was never applied");
        assert!(r.errors.try_recv().is_err(), "no warning for a rewrite");
        // Emptied for good: applied, with a warning.
        std::fs::write(&path, "# no alerts\n").unwrap();
        let set = r.updates.recv_timeout(WAIT).expect("the emptied file is applied once stable");
        assert!(set.alerts.is_empty());
        let (severity, problems) = r.errors.recv_timeout(WAIT).expect("a warning");
        assert_eq!(severity, Severity::Warning);
        assert!(problems.to_string().contains("no alerts"), "{problems}");
    }

    #[test]
    fn huge_durations_are_refused_with_their_line() {
        let problems = parse("[[alert]]\nid = \"a1\"\nmake = \"bmw\"\ncooldown_s = 1e300\n").unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].line == 4 && problems[0].reason.contains("ten years"), "{}", problems[0]);
    }
}
