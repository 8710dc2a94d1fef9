//! Cameras: one GStreamer pipeline per camera, each on its own thread, delivering RGB
//! frames at the configured analysis rate.
//!
//! - [`CameraConfig`] is a `[[camera]]` entry as written; [`Camera`] is what it resolves
//!   to: a URI without credentials, a redacted form for logs, regions, rate.
//! - [`pipeline`] builds and tears down the GStreamer pipeline and turns appsink samples
//!   into [`Frame`]s.
//! - [`supervisor`] is the per-camera loop (`camera:<name>` thread): open, stream,
//!   and on error tear down and retry with backoff, reporting its [`State`].
//!
//! Frames go into one bounded channel shared by all cameras. A camera never waits on
//! it: when it is full the oldest frame is taken out and counted as dropped for its
//! camera, and the fresh one goes in (see [`FrameQueue`]).

pub mod nal;
pub mod pipeline;
pub mod supervisor;

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::locate::{Bounds, Method};
use crate::model::Crop;
use crate::model::preprocess::{Picture, RgbImage};
use crate::pixels::{I420, Pixels};
use crate::values::{Credentials, Name, Secret};

/// A `[[camera]]` entry as the operator wrote it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: Name,
    /// rtsp://, rtsps://, http(s)://, file:// or any URI GStreamer's uridecodebin takes.
    #[serde(default)]
    pub url: Option<String>,
    /// A local video file (relative to the working directory): shorthand for a file://
    /// URL.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Frames analysed per second.
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Regions classified separately; none means the whole frame.
    #[serde(default)]
    pub regions: Vec<Region>,
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Play a file source again from the start when it ends (sample clips, tests).
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// No frame for this long: the camera is declared stalled and reconnected.
    #[serde(default = "default_stall", deserialize_with = "crate::values::seconds", rename = "stall_timeout_s")]
    pub stall_timeout: Duration,
    /// Which decoder, and whether to decode only keyframes.
    #[serde(default)]
    pub decode: DecodeMode,
    /// Skip regions where nothing moved since they were last analysed.
    #[serde(default)]
    pub motion: MotionConfig,
    /// How vehicles are found: `motion`, `detector`, `regions` or `frame`. Unset:
    /// `regions` when the camera has regions, else `motion`.
    #[serde(default)]
    pub locate: Option<Method>,
}

/// How a camera's video is decoded (`decode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// The decoder GStreamer ranks first: NVDEC (nvh264dec, nvh265dec) where the
    /// nvcodec plugin is registered, software otherwise. Only keyframes are decoded
    /// while the stream's keyframes come at least as often as `fps` asks for frames
    /// (measured between keyframes; every frame again as soon as they do not).
    #[default]
    Auto,
    /// Software decoding only.
    Cpu,
    /// NVIDIA's decoders only; a camera fails to start where they are not registered.
    Nvdec,
    /// Only keyframes reach the decoder (the others are dropped after parsing): the
    /// analysed rate becomes the keyframe rate, capped at `fps`, for a fraction of the
    /// decoding cost.
    Keyframes,
}

impl DecodeMode {
    pub fn name(self) -> &'static str {
        match self {
            DecodeMode::Auto => "auto",
            DecodeMode::Cpu => "cpu",
            DecodeMode::Nvdec => "nvdec",
            DecodeMode::Keyframes => "keyframes",
        }
    }
}

/// `motion`: a cheap frame difference before the backbone. On by default: a region
/// (or whole frame) that has not changed since it was last classified keeps that
/// answer, which is the answer the model would give again.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionConfig {
    #[serde(default = "default_motion_enabled")]
    pub enabled: bool,
    /// A pixel has changed when its grey level moved by more than this (0-255).
    #[serde(default = "default_motion_threshold")]
    pub threshold: u8,
    /// A region has changed when at least this share of its pixels did.
    #[serde(default = "default_motion_area")]
    pub min_area: f32,
}

fn default_motion_enabled() -> bool {
    true
}

fn default_motion_threshold() -> u8 {
    20
}

fn default_motion_area() -> f32 {
    0.01
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig { enabled: true, threshold: default_motion_threshold(), min_area: default_motion_area() }
    }
}

fn default_stall() -> Duration {
    Duration::from_secs(10)
}

fn default_fps() -> f64 {
    2.0
}

fn yes() -> bool {
    true
}

/// How rtspsrc carries RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Interleaved in the RTSP TCP connection: works through NAT and firewalls.
    #[default]
    Tcp,
    Udp,
    /// Let rtspsrc try UDP, then TCP.
    Auto,
}

/// One coordinate of a region: whole pixels, or a fraction of the frame's side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coord {
    Pixels(u32),
    Fraction(f64),
}

impl Coord {
    fn resolve(self, side: u32) -> u32 {
        match self {
            Coord::Pixels(p) => p,
            Coord::Fraction(f) => (f * side as f64).round() as u32,
        }
    }
}

impl<'de> Deserialize<'de> for Coord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Coord;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("whole pixels (an integer) or a fraction of the frame (0.0 to 1.0)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Coord, E> {
                u32::try_from(v)
                    .map(Coord::Pixels)
                    .map_err(|_| E::custom(format!("pixel coordinate {v} is negative or too large")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Coord, E> {
                u32::try_from(v).map(Coord::Pixels).map_err(|_| E::custom(format!("pixel coordinate {v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Coord, E> {
                if (0.0..=1.0).contains(&v) {
                    Ok(Coord::Fraction(v))
                } else {
                    Err(E::custom(format!("fraction {v} is outside 0.0 to 1.0 (write whole pixels as integers)")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A rectangle of the frame to classify on its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Shown in hits; defaults to `region-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    pub x: Coord,
    pub y: Coord,
    pub width: Coord,
    pub height: Coord,
}

impl Region {
    /// The region in pixels of a `width` x `height` frame, or why it does not fit.
    pub fn resolve(&self, width: u32, height: u32) -> Result<Crop, String> {
        let crop = Crop {
            x: self.x.resolve(width),
            y: self.y.resolve(height),
            width: self.width.resolve(width),
            height: self.height.resolve(height),
        };
        if crop.fits(width, height) {
            Ok(crop)
        } else {
            Err(format!("region {crop:?} does not fit a {width}x{height} frame"))
        }
    }

    /// Problems that do not depend on the frame size.
    pub fn check(&self) -> Result<(), String> {
        let frac = |c: Coord| match c {
            Coord::Fraction(f) => Some(f),
            Coord::Pixels(_) => None,
        };
        if let (Some(x), Some(w)) = (frac(self.x), frac(self.width))
            && x + w > 1.0 + 1e-9
        {
            return Err(format!("x + width = {} is beyond the frame's right edge", x + w));
        }
        if let (Some(y), Some(h)) = (frac(self.y), frac(self.height))
            && y + h > 1.0 + 1e-9
        {
            return Err(format!("y + height = {} is beyond the frame's bottom edge", y + h));
        }
        for (what, c) in [("width", self.width), ("height", self.height)] {
            if matches!(c, Coord::Pixels(0)) || matches!(c, Coord::Fraction(f) if f <= 0.0) {
                return Err(format!("{what} must be positive"));
            }
        }
        Ok(())
    }
}

/// Where a camera's frames come from, with credentials kept apart from the URI.
#[derive(Clone)]
pub struct Source {
    /// What GStreamer opens: no user or password in it.
    pub uri: String,
    /// The URI for logs and status: credentials removed, query string elided.
    pub redacted: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A live source (RTSP, HTTP) is read as fast as it comes; a file is played at its
    /// own pace so that it behaves like a camera.
    pub live: bool,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("uri", &self.redacted)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl Source {
    /// Builds the source of `c`: exactly one of `url` and `file`, credentials from the
    /// fields, the password file or (moved out of) the URL.
    pub fn from_config(c: &CameraConfig) -> Result<Source, String> {
        let (mut url, live) = match (&c.url, &c.file) {
            (Some(_), Some(_)) => return Err("give either url or file, not both".into()),
            (None, None) => return Err("missing url (or file)".into()),
            (Some(u), None) => {
                let url = url::Url::parse(u).map_err(|e| format!("url is not a valid URL: {e}"))?;
                let live = !matches!(url.scheme(), "file");
                (url, live)
            }
            (None, Some(path)) => {
                let abs = std::path::absolute(path).map_err(|e| format!("file {}: {e}", path.display()))?;
                let url = url::Url::from_file_path(&abs)
                    .map_err(|_| format!("file {} cannot be made a file:// URL", path.display()))?;
                (url, false)
            }
        };
        // Credentials in the URL are taken out: GStreamer gets them as properties and
        // they never reach a log line.
        let Credentials { username, password } =
            Credentials::resolve(&mut url, c.username.as_deref(), c.password.as_ref(), c.password_file.as_deref())?;
        let mut redacted = url.clone();
        if redacted.query().is_some() {
            redacted.set_query(Some("..."));
        }
        Ok(Source { uri: url.to_string(), redacted: redacted.to_string(), username, password, live })
    }

    /// `text` (an error message from GStreamer, say) with the URI and any credential
    /// replaced by their redacted forms, so it can go to logs and status topics.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.uri, &self.redacted);
        if let Some(p) = &self.password
            && !p.expose().is_empty()
        {
            out = out.replace(p.expose(), "***");
        }
        out
    }
}

/// A camera ready to run: everything resolved and checked.
#[derive(Debug, Clone)]
pub struct Camera {
    pub name: Name,
    pub source: Source,
    pub fps: f64,
    pub regions: Vec<Region>,
    pub rtsp_transport: RtspTransport,
    pub enabled: bool,
    pub looping: bool,
    pub stall_timeout: Duration,
    pub decode: DecodeMode,
    pub motion: MotionConfig,
    /// How vehicles are found; with `motion` or `detector`, `regions` are masks: only
    /// boxes whose centre lies in one of them count.
    pub locate: Method,
}

impl Camera {
    pub fn from_config(c: &CameraConfig) -> Result<Camera, String> {
        if !(0.0..=1.0).contains(&c.motion.min_area) {
            return Err(format!("motion.min_area must be between 0 and 1, found {}", c.motion.min_area));
        }
        if !(c.fps.is_finite() && c.fps > 0.0 && c.fps <= 120.0) {
            return Err(format!("fps must be above 0 and at most 120, found {}", c.fps));
        }
        for (i, r) in c.regions.iter().enumerate() {
            r.check().map_err(|e| format!("regions[{i}]: {e}"))?;
        }
        let locate = match c.locate {
            Some(Method::Regions) if c.regions.is_empty() => {
                return Err("locate = \"regions\" needs at least one entry in `regions`".into());
            }
            Some(m) => m,
            None if c.regions.is_empty() => Method::Motion,
            None => Method::Regions,
        };
        Ok(Camera {
            name: c.name.clone(),
            source: Source::from_config(c)?,
            fps: c.fps,
            regions: c.regions.clone(),
            rtsp_transport: c.rtsp_transport,
            enabled: c.enabled,
            looping: c.looping,
            stall_timeout: c.stall_timeout.max(Duration::from_millis(500)),
            decode: c.decode,
            motion: c.motion,
            locate,
        })
    }

    /// Whether a box centred at (`x`, `y`) of a `width` x `height` frame is inside the
    /// camera's regions (always, when it has none): regions as masks.
    pub fn admits(&self, x: u32, y: u32, width: u32, height: u32) -> bool {
        self.regions.is_empty()
            || self
                .regions
                .iter()
                .filter_map(|r| r.resolve(width, height).ok())
                .any(|c| x >= c.x && x < c.x + c.width && y >= c.y && y < c.y + c.height)
    }

    /// The name of region `i` in hits.
    pub fn region_name(&self, i: usize) -> String {
        match self.regions.get(i).and_then(|r| r.name.clone()) {
            Some(n) => n,
            None if self.regions.is_empty() => "frame".into(),
            None => format!("region-{i}"),
        }
    }
}

/// Where a camera is in its life, as its status topic shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Connecting,
    Streaming,
    Stalled,
    BackingOff,
    Disabled,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Streaming => "streaming",
            State::Stalled => "stalled",
            State::BackingOff => "backing_off",
            State::Disabled => "disabled",
            State::Stopped => "stopped",
        }
    }
}

/// A camera's state with when it began and why.
#[derive(Debug, Clone)]
pub struct StateInfo {
    pub state: State,
    pub since: SystemTime,
    pub reason: Option<String>,
}

/// What the camera thread, the inference worker and the publisher share about a camera:
/// counters (atomics, updated on the frame path without locks) and the current state
/// (a mutex touched only on state changes and by the status publisher).
#[derive(Debug)]
pub struct CameraShared {
    pub camera: Camera,
    /// Frames the pipeline delivered (after rate limiting).
    pub frames_in: AtomicU64,
    /// Frames the inference worker classified.
    pub analysed: AtomicU64,
    /// Frames dropped because inference was behind.
    pub dropped: AtomicU64,
    /// Pipelines opened again after a failure.
    pub reconnects: AtomicU64,
    /// Frames dropped before the decoder: non-keyframes while only keyframes are
    /// decoded, frames nothing refers to between analysed ones ([`pipeline::DecodeGate`]).
    pub skipped_decode: AtomicU64,
    /// Regions not classified because nothing moved (`motion`), and frames of a
    /// `locate = "motion"` camera with nothing moving in them.
    pub motion_skipped: AtomicU64,
    /// Located vehicles not classified: beyond `max_vehicles_per_frame`.
    pub vehicles_skipped: AtomicU64,
    /// Looks at tracked vehicles not taken: settled ones between relooks, entering ones
    /// between their cut looks, and cut looks of vehicles already seen whole
    /// ([`crate::track::Vehicles::wants_look`]).
    pub looks_skipped: AtomicU64,
    /// Tracks ended early because `max_tracks` were alive.
    pub tracks_evicted: AtomicU64,
    /// Time spent locating by motion on the camera's thread, nanoseconds, and the
    /// frames it took (`bench pipeline`'s `cpu_ms_per_frame_locate`).
    pub locate_ns: AtomicU64,
    pub located: AtomicU64,
    /// The decoder element GStreamer chose (e.g. `avdec_h264`, `nvh264dec`).
    pub decoder: Mutex<Option<String>>,
    /// Whether only keyframes reach the decoder now: always with `decode = "keyframes"`;
    /// with `"auto"`, while the stream's keyframes come at least as often as frames are
    /// analysed (see [`pipeline::DecodeGate`]). The status topic says which.
    pub keyframes_only: AtomicBool,
    /// Whether frames no other frame refers to (B-frames) are left out of decoding
    /// unless one is due for analysis.
    pub references_only: AtomicBool,
    /// The last interval between two keyframes, milliseconds (0 until measured).
    pub keyframe_interval_ms: AtomicU64,
    pub state: Mutex<StateInfo>,
    /// State changes not yet published, oldest first: a state that lasts a millisecond
    /// (stalled, then backing off) still reaches the status topic.
    transitions: Mutex<Vec<StateInfo>>,
}

/// Most unpublished transitions kept per camera (a flapping camera keeps the newest).
const MAX_TRANSITIONS: usize = 64;

impl CameraShared {
    pub fn new(camera: Camera) -> Arc<CameraShared> {
        let state = if camera.enabled { State::Connecting } else { State::Disabled };
        let keyframes = camera.decode == DecodeMode::Keyframes;
        Arc::new(CameraShared {
            camera,
            frames_in: AtomicU64::new(0),
            analysed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            skipped_decode: AtomicU64::new(0),
            motion_skipped: AtomicU64::new(0),
            vehicles_skipped: AtomicU64::new(0),
            looks_skipped: AtomicU64::new(0),
            tracks_evicted: AtomicU64::new(0),
            locate_ns: AtomicU64::new(0),
            located: AtomicU64::new(0),
            decoder: Mutex::new(None),
            keyframes_only: AtomicBool::new(keyframes),
            references_only: AtomicBool::new(false),
            keyframe_interval_ms: AtomicU64::new(0),
            state: Mutex::new(StateInfo { state, since: SystemTime::now(), reason: None }),
            transitions: Mutex::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        self.camera.name.as_str()
    }

    /// What reaches the decoder now, as the status topic says it: `keyframes`,
    /// `reference frames` (and one frame per analysis period), or `every frame`.
    pub fn decoding(&self) -> &'static str {
        if self.keyframes_only.load(Ordering::Relaxed) {
            "keyframes"
        } else if self.references_only.load(Ordering::Relaxed) {
            "reference frames"
        } else {
            "every frame"
        }
    }

    /// The current state (a copy).
    pub fn state(&self) -> StateInfo {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Moves to `state`; returns whether it changed. Logs one line per change. The
    /// reason is scrubbed of the source's URI and credentials.
    pub fn set_state(&self, state: State, reason: Option<String>) -> bool {
        let reason = reason.map(|r| self.camera.source.scrub(&r));
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.state == state && guard.reason == reason {
            return false;
        }
        match &reason {
            Some(r) => {
                tracing::info!(camera = %self.camera.name, "camera {} is {}: {r}", self.camera.name, state.name())
            }
            None => tracing::info!(camera = %self.camera.name, "camera {} is {}", self.camera.name, state.name()),
        }
        *guard = StateInfo { state, since: SystemTime::now(), reason };
        let mut t = match self.transitions.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if t.len() >= MAX_TRANSITIONS {
            t.remove(0);
        }
        t.push(guard.clone());
        true
    }

    /// The decoder in use, if known yet.
    pub fn decoder(&self) -> Option<String> {
        self.decoder.lock().ok().and_then(|d| d.clone())
    }

    /// State changes since the last call, oldest first.
    pub fn take_transitions(&self) -> Vec<StateInfo> {
        match self.transitions.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// One decoded frame, in the format the pipeline gave (I420 from cameras).
pub struct Frame {
    pub camera: Arc<CameraShared>,
    /// Wall-clock time the frame left the pipeline (what hits report).
    pub captured_at: SystemTime,
    /// The same moment on the monotonic clock (what confirmation windows and cooldowns
    /// measure: the time of the evidence, not of its processing).
    pub seen: Instant,
    /// Stream time of the frame (buffer PTS), when the source gives one.
    pub pts: Option<Duration>,
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels,
    /// What the camera's motion locator proposed (largest first, inside the masks);
    /// `None` where the camera does not locate by motion.
    pub boxes: Option<Vec<Bounds>>,
}

impl Frame {
    /// The whole frame as tightly packed RGB: converted here for I420 frames, so only
    /// for what needs whole frames (snapshots, colour, detectors), not on the frame path.
    pub fn rgb(&self) -> Cow<'_, [u8]> {
        match &self.pixels {
            Pixels::Rgb(d) => Cow::Borrowed(d),
            Pixels::I420 { .. } => {
                let mut out = Vec::new();
                if let Ok(i) = self.i420() {
                    i.to_rgb((0, 0, self.width, self.height), &mut out);
                }
                Cow::Owned(out)
            }
        }
    }

    fn i420(&self) -> Result<I420<'_>, String> {
        match &self.pixels {
            Pixels::I420 { data, matrix } => I420::new(data, self.width, self.height, *matrix),
            Pixels::Rgb(_) => Err("an RGB frame".into()),
        }
    }

    /// The frame as the model's preprocessing reads it (no conversion, no copy).
    pub fn picture(&self) -> Result<Picture<'_>, String> {
        match &self.pixels {
            Pixels::Rgb(d) => RgbImage::new(d, self.width, self.height, self.width as usize * 3).map(Picture::Rgb),
            Pixels::I420 { .. } => self.i420().map(Picture::I420),
        }
    }

    /// Grey (0-255) at a pixel inside the frame: luma for I420.
    pub fn grey(&self, x: u32, y: u32) -> u8 {
        match &self.pixels {
            Pixels::Rgb(d) => {
                let i = (y as usize * self.width as usize + x as usize) * 3;
                ((d[i] as u32 * 77 + d[i + 1] as u32 * 150 + d[i + 2] as u32 * 29) >> 8) as u8
            }
            Pixels::I420 { .. } => self.i420().map_or(0, |i| i.grey(x, y)),
        }
    }

    /// Bytes the frame holds (what the frame queue's byte limit counts).
    pub fn bytes(&self) -> usize {
        self.pixels.len()
    }

    /// The colour of the vehicle in `bounds` (x, y, width, height; clipped to the
    /// frame), converting only those pixels.
    pub fn colour(&self, (x, y, w, h): (u32, u32, u32, u32)) -> crate::colour::Estimate {
        let (x, y) = (x.min(self.width), y.min(self.height));
        let (w, h) = (w.min(self.width - x), h.min(self.height - y));
        crate::colour::estimate(&self.rgb_of((x, y, w, h)), w, (0, 0, w, h))
    }

    /// Packed RGB of `bounds` only (colour estimates of a vehicle).
    pub fn rgb_of(&self, (x, y, w, h): (u32, u32, u32, u32)) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.pixels {
            Pixels::Rgb(d) => {
                for row in y..y + h {
                    let start = (row as usize * self.width as usize + x as usize) * 3;
                    out.extend_from_slice(&d[start..start + w as usize * 3]);
                }
            }
            Pixels::I420 { .. } => {
                if let Ok(i) = self.i420() {
                    i.to_rgb((x, y, w, h), &mut out);
                }
            }
        }
        out
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} {}x{} at {:?})", self.camera.name(), self.width, self.height, self.pts)
    }
}

/// The bounded frame channel as a camera sees it: pushing never blocks; when full (by
/// count or by bytes) the oldest queued frames are dropped (and counted against their
/// own cameras) to make room. Bounding bytes matters as much as count: 512 queued 4K
/// frames are 12 GB.
#[derive(Clone)]
pub struct FrameQueue {
    tx: Sender<Arc<Frame>>,
    /// Used only to take the oldest frame out when the queue is full.
    rx: Receiver<Arc<Frame>>,
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
}

/// The worker's end of the queue. Each frame taken must be reported with
/// [`Frames::taken`], which frees its bytes.
pub struct Frames {
    rx: Receiver<Arc<Frame>>,
    bytes: Arc<AtomicU64>,
}

impl Frames {
    pub fn receiver(&self) -> &Receiver<Arc<Frame>> {
        &self.rx
    }

    /// `frame` left the queue.
    pub fn taken(&self, frame: &Frame) {
        self.bytes.fetch_sub(frame.bytes() as u64, Ordering::Relaxed);
    }
}

impl FrameQueue {
    /// A queue holding at most `capacity` frames and `max_bytes` of pixels, and the
    /// receiving end for the worker.
    pub fn bounded(capacity: usize, max_bytes: u64) -> (FrameQueue, Frames) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let bytes = Arc::new(AtomicU64::new(0));
        let queue = FrameQueue { tx, rx: rx.clone(), bytes: Arc::clone(&bytes), max_bytes };
        (queue, Frames { rx, bytes })
    }

    /// Queues `frame`, evicting the oldest if needed. Never blocks. (The queue keeps a
    /// receiver of its own, so it never disconnects: cameras stop on their stop message.)
    pub fn push(&self, frame: Arc<Frame>) {
        let size = frame.bytes() as u64;
        while self.bytes.load(Ordering::Relaxed) + size > self.max_bytes && self.evict_oldest() {}
        let mut frame = frame;
        loop {
            match self.tx.try_send(frame) {
                Ok(()) => {
                    self.bytes.fetch_add(size, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(f)) => {
                    self.evict_oldest();
                    frame = f;
                }
            }
        }
    }

    /// Drops the oldest queued frame (counted against its camera); false if none.
    fn evict_oldest(&self) -> bool {
        match self.rx.try_recv() {
            Ok(old) => {
                self.bytes.fetch_sub(old.bytes() as u64, Ordering::Relaxed);
                old.camera.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// Cameras and frames for other modules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A camera named `name` on a URL nobody opens.
    pub fn camera(name: &str) -> Arc<CameraShared> {
        let cfg: CameraConfig = toml::from_str(&format!("name = \"{name}\"\nurl = \"rtsp://h/\"")).unwrap();
        CameraShared::new(Camera::from_config(&cfg).unwrap())
    }

    /// A black `width` x `height` frame of `camera`, captured now.
    pub fn frame(camera: &Arc<CameraShared>, width: u32, height: u32) -> Frame {
        Frame {
            camera: Arc::clone(camera),
            captured_at: SystemTime::now(),
            seen: Instant::now(),
            pts: None,
            width,
            height,
            pixels: Pixels::Rgb(vec![0; (width * height * 3) as usize]),
            boxes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> CameraConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn regions_take_pixels_or_fractions() {
        let c = config(
            "name = \"a\"\nurl = \"rtsp://h/s\"\nregions = [{ x = 0.5, y = 0, width = 0.5, height = 1.0 }, { name = \"lane\", x = 10, y = 20, width = 100, height = 50 }]",
        );
        let cam = Camera::from_config(&c).unwrap();
        assert_eq!(cam.regions[0].resolve(640, 360).unwrap(), Crop { x: 320, y: 0, width: 320, height: 360 });
        assert_eq!(cam.regions[1].resolve(640, 360).unwrap(), Crop { x: 10, y: 20, width: 100, height: 50 });
        assert!(cam.regions[1].resolve(64, 36).is_err());
        assert_eq!(cam.region_name(0), "region-0");
        assert_eq!(cam.region_name(1), "lane");
        let bad =
            config("name = \"a\"\nurl = \"rtsp://h/s\"\nregions = [{ x = 0.6, y = 0, width = 0.5, height = 1.0 }]");
        assert!(Camera::from_config(&bad).unwrap_err().contains("right edge"));
        assert!(
            toml::from_str::<CameraConfig>("name = \"a\"\nregions = [{ x = 1.5, y = 0, width = 1, height = 1 }]")
                .is_err()
        );
    }

    #[test]
    fn credentials_leave_the_url() {
        let c = config("name = \"a\"\nurl = \"rtsp://admin:p%40ss@10.0.0.5:554/stream?token=abc\"");
        let s = Source::from_config(&c).unwrap();
        assert_eq!(s.username.as_deref(), Some("admin"));
        assert_eq!(s.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(s.uri, "rtsp://10.0.0.5:554/stream?token=abc");
        assert_eq!(s.redacted, "rtsp://10.0.0.5:554/stream?...");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("p@ss") && !dbg.contains("abc"), "{dbg}");
        assert!(s.live);
        let msg = "Could not open resource for reading: rtsp://10.0.0.5:554/stream?token=abc (p@ss rejected)";
        assert_eq!(s.scrub(msg), "Could not open resource for reading: rtsp://10.0.0.5:554/stream?... (*** rejected)");
    }

    #[test]
    fn file_sources_become_file_urls() {
        let c = config("name = \"a\"\nfile = \"clip.mkv\"");
        let s = Source::from_config(&c).unwrap();
        assert!(s.uri.starts_with("file:///") && s.uri.ends_with("/clip.mkv"), "{}", s.uri);
        assert!(!s.live);
        assert!(Source::from_config(&config("name = \"a\"")).is_err());
        assert!(Source::from_config(&config("name = \"a\"\nfile = \"x\"\nurl = \"rtsp://h/\"")).is_err());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it_against_its_camera() {
        let cam = |n: &str| {
            CameraShared::new(Camera::from_config(&config(&format!("name = \"{n}\"\nurl = \"rtsp://h/\""))).unwrap())
        };
        let (a, b) = (cam("a"), cam("b"));
        let frame = |c: &Arc<CameraShared>, i: u64| {
            Arc::new(Frame {
                camera: c.clone(),
                captured_at: SystemTime::now(),
                seen: Instant::now(),
                pts: Some(Duration::from_secs(i)),
                width: 1,
                height: 1,
                pixels: Pixels::Rgb(vec![0; 3]),
                boxes: None,
            })
        };
        let (q, rx) = FrameQueue::bounded(2, u64::MAX);
        q.push(frame(&a, 1));
        q.push(frame(&b, 2));
        q.push(frame(&b, 3)); // evicts a's frame 1
        assert_eq!(a.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(b.dropped.load(Ordering::Relaxed), 0);
        let left: Vec<_> = rx.receiver().try_iter().map(|f| f.pts.unwrap().as_secs()).collect();
        assert_eq!(left, vec![2, 3]);
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_as_well_as_count() {
        let cam = testing::camera("a");
        let frame = || Arc::new(testing::frame(&cam, 10, 10));
        let (queue, frames) = FrameQueue::bounded(100, 1000);
        for _ in 0..5 {
            queue.push(frame());
        }
        assert_eq!(frames.receiver().len(), 3, "three 300-byte frames fit in 1000 bytes");
        assert_eq!(cam.dropped.load(Ordering::Relaxed), 2);
        let taken = frames.receiver().try_recv().unwrap();
        frames.taken(&taken);
        queue.push(frame());
        assert_eq!((frames.receiver().len(), cam.dropped.load(Ordering::Relaxed)), (3, 2), "room again after a take");
    }
}
