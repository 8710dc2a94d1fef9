//! `carwatch bench accuracy`: how well wide views are located, tracked and decided,
//! on generated streets whose truth (class and box of every vehicle in every frame) is
//! known.
//!
//! The frames of [`wide_view`] scenes go, in process and at the analysis rate, through
//! the stages `watch` runs for a `locate = "motion"` camera: the motion locator, the
//! camera's [`Vehicles`] (tracker and per-track averages), square crops classified by
//! the models, and the [`Matcher`]'s per-vehicle decision for one alert asking for the
//! wanted make and model. Decoding and the network are left out: `bench pipeline` times
//! those. Reported:
//!
//! - localisation recall and precision: located boxes against truth boxes, IoU >= 0.5;
//! - per-crop accuracy: the make and model of each crop that boxed a vehicle, against
//!   its truth;
//! - per-track accuracy: the make and model of each track's mean prediction;
//! - per passage of the wanted vehicle: hit, or missed; hits on any other vehicle (or
//!   on no vehicle) are counted as wrong.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::alerts::{AlertSet, Vocabulary};
use crate::camera::{Camera, CameraConfig, CameraShared, Frame};
use crate::locate::motion::{Motion, MotionLocator};
use crate::locate::{Bounds, LocateConfig, square_crop};
use crate::matcher::Matcher;
use crate::model::preprocess::Picture;
use crate::model::{Average, DeviceChoice, PrecisionChoice, Prediction, Recognizer};
use crate::pixels::{Pixels, YuvMatrix, rgb_to_i420};
use crate::rule::MatcherConfig;
use crate::synthetic::video::{Truth, wide_view};
use crate::track::Vehicles;
use crate::values::Name;

/// What `bench accuracy` runs on.
#[derive(Debug, Clone)]
pub struct AccuracyOptions {
    pub models: PathBuf,
    pub device: DeviceChoice,
    pub precision: PrecisionChoice,
    /// The wanted vehicle, `make/model` (any view), drawn from the synthetic catalogue.
    pub wanted: (String, String),
    pub passages: usize,
    pub width: u32,
    pub height: u32,
    /// Analysed frames per second (the camera's `fps`).
    pub fps: u32,
    pub seed: u64,
    /// Looks a track needs before it can be hit (the alert's `confirm_frames`).
    pub confirm_frames: u32,
    pub min_confidence: f32,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyResult {
    pub resolution: String,
    pub frames: usize,
    pub truth_boxes: usize,
    pub located_boxes: usize,
    pub locate_recall: f64,
    pub locate_precision: f64,
    /// Crops classified, and located boxes of tracked vehicles left out (settled
    /// vehicles between relooks, cut looks after whole ones: as `watch`).
    pub crops: usize,
    pub looks_skipped: usize,
    pub crop_accuracy: f64,
    pub tracks: usize,
    pub track_accuracy: f64,
    pub wanted: String,
    pub wanted_passages: usize,
    pub hit: usize,
    pub missed: usize,
    /// Hits on a vehicle that is not the wanted one, or on no vehicle.
    pub wrong: usize,
    /// Hits beyond the first on one wanted passage (a track broken in two).
    pub repeated: usize,
    pub cpu_ms_per_frame_locate: f64,
}

/// A vehicle of the scene: its segment and index there.
type VehicleKey = (usize, usize);

/// What one track was, as far as the truth tells.
#[derive(Default)]
struct TrackTruth {
    /// Frames in which its box boxed each truth vehicle.
    votes: HashMap<VehicleKey, u32>,
    average: Option<Average>,
}

impl TrackTruth {
    fn vehicle(&self) -> Option<VehicleKey> {
        self.votes.iter().max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k))).map(|(k, _)| *k)
    }
}

/// Runs `bench accuracy`.
pub fn accuracy(opts: &AccuracyOptions) -> Result<AccuracyResult, String> {
    let recognizer = Recognizer::load_choosing(&opts.models, opts.device, opts.precision).map_err(|e| e.to_string())?;
    let wanted = crate::synthetic::catalogue()
        .into_iter()
        .find(|c| c.make == opts.wanted.0 && c.model == opts.wanted.1)
        .ok_or_else(|| format!("{}/{} is not a synthetic make/model", opts.wanted.0, opts.wanted.1))?;
    let scene_fps = opts.fps.max(1) * 2;
    let scene = wide_view(&wanted, opts.passages, 5.0, (opts.width, opts.height), scene_fps, opts.seed);
    let camera = bench_camera()?;
    let mut matcher = Matcher::new(alert(&recognizer, &opts.wanted, opts.confirm_frames, opts.min_confidence)?);
    let locate = LocateConfig::default();
    let mut locator = MotionLocator::new(locate.motion);
    let mut vehicles = Vehicles::new(crate::track::TrackerConfig::from(&locate));
    vehicles.settle_after(opts.confirm_frames);
    let mut tracks: HashMap<u64, TrackTruth> = HashMap::new();
    let mut hits: Vec<u64> = Vec::new();
    let (mut truth_boxes, mut located, mut matched_truth, mut matched_boxes) = (0usize, 0usize, 0usize, 0usize);
    let (mut crops, mut crops_right, mut skipped) = (0usize, 0usize, 0usize);
    let mut locate_time = Duration::ZERO;
    let t0 = Instant::now();
    let step = (scene_fps / opts.fps.max(1)).max(1) as u64;
    let frames: Vec<u64> = (0..scene.frames()).step_by(step as usize).collect();
    let painter = crate::synthetic::video::Painter::new(&scene);
    for (i, &n) in frames.iter().enumerate() {
        let (image, truth) = painter.frame(n);
        let (w, h) = (opts.width, opts.height);
        let seen = t0 + Duration::from_millis(1000 * i as u64 / opts.fps.max(1) as u64);
        let frame = Arc::new(Frame {
            camera: Arc::clone(&camera),
            captured_at: SystemTime::now(),
            seen,
            pts: None,
            width: w,
            height: h,
            // As a camera sends it: the locator and the model read I420, as in `watch`.
            pixels: Pixels::I420 {
                data: rgb_to_i420(image.as_raw(), w, h, YuvMatrix::BT709).into(),
                matrix: YuvMatrix::BT709,
            },
            boxes: None,
        });
        let t = Instant::now();
        let mut boxes = match locator.observe_pixels(&frame.pixels, w, h) {
            Motion::Boxes(b) => b,
            _ => Vec::new(),
        };
        locate_time += t.elapsed();
        boxes.truncate(locate.max_vehicles_per_frame as usize);
        // Vehicles mostly out of the frame are not expected to be found.
        let visible: Vec<&Truth> = truth.iter().filter(|t| fully_enough(t)).collect();
        truth_boxes += visible.len();
        located += boxes.len();
        let owner = assign(&boxes, &visible);
        matched_boxes += owner.iter().filter(|o| o.is_some()).count();
        matched_truth += visible.iter().filter(|t| owner.iter().flatten().any(|o| o == &(t.vehicle))).count();
        let (ids, gone) = vehicles.locate(&frame, &boxes);
        for v in &gone {
            hits.extend(matcher.vehicle_gone(&frame, v, jiff::Timestamp::now()).iter().map(|_| v.track));
        }
        let segment = scene.position(n).0;
        // The looks `watch` takes: not those of settled vehicles between relooks.
        let looked: Vec<usize> = (0..boxes.len()).filter(|&i| vehicles.wants_look(ids[i], frame.seen)).collect();
        skipped += boxes.len() - looked.len();
        let views: Vec<(Picture, crate::model::Crop)> = looked
            .iter()
            .map(|&i| {
                let image = frame.picture()?;
                let c = square_crop(boxes[i], w, h, locate.crop_margin);
                Ok((image, crate::model::Crop { x: c.x, y: c.y, width: c.width, height: c.height }))
            })
            .collect::<Result<_, String>>()?;
        let predictions = recognizer.classify(&views).map_err(|e| e.to_string())?;
        for (&id, o) in ids.iter().zip(&owner) {
            if let Some(vi) = o {
                *tracks.entry(id).or_default().votes.entry((segment, *vi)).or_default() += 1;
            }
        }
        for (&i, p) in looked.iter().zip(&predictions) {
            let id = ids[i];
            let entry = tracks.entry(id).or_default();
            match entry.average.as_mut() {
                Some(a) => a.add(p),
                None => entry.average = Some(Average::new(p)),
            }
            if let Some(vi) = owner[i] {
                let truth = &scene.segments[segment].vehicles[vi].class;
                crops += 1;
                crops_right += usize::from(same_make_model(p, truth.make, truth.model));
            }
            if let Some(v) = vehicles.classified(id, p) {
                hits.extend(matcher.observe_vehicle(&frame, v, jiff::Timestamp::now()).iter().map(|_| id));
            }
        }
    }
    // Tracks against the truth.
    let (mut judged, mut right) = (0usize, 0usize);
    for t in tracks.values() {
        let (Some((seg, vi)), Some(avg)) = (t.vehicle(), t.average.as_ref()) else { continue };
        let truth = &scene.segments[seg].vehicles[vi].class;
        judged += 1;
        right += usize::from(same_make_model(&avg.prediction(), truth.make, truth.model));
    }
    let mut per_passage: HashMap<VehicleKey, usize> = HashMap::new();
    let mut wrong = 0;
    for id in &hits {
        match tracks.get(id).and_then(TrackTruth::vehicle) {
            Some((seg, vi)) if scene.segments[seg].vehicles[vi].class == wanted => {
                *per_passage.entry((seg, vi)).or_default() += 1
            }
            _ => wrong += 1,
        }
    }
    let wanted_passages: Vec<VehicleKey> = scene
        .segments
        .iter()
        .enumerate()
        .flat_map(|(s, seg)| {
            seg.vehicles.iter().enumerate().filter(|(_, v)| v.class == wanted).map(move |(i, _)| (s, i))
        })
        .collect();
    let hit = wanted_passages.iter().filter(|k| per_passage.contains_key(k)).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(AccuracyResult {
        resolution: format!("{}x{}", opts.width, opts.height),
        frames: frames.len(),
        truth_boxes,
        located_boxes: located,
        locate_recall: ratio(matched_truth, truth_boxes),
        locate_precision: ratio(matched_boxes, located),
        crops,
        looks_skipped: skipped,
        crop_accuracy: ratio(crops_right, crops),
        tracks: judged,
        track_accuracy: ratio(right, judged),
        wanted: format!("{}/{}", opts.wanted.0, opts.wanted.1),
        wanted_passages: wanted_passages.len(),
        hit,
        missed: wanted_passages.len() - hit,
        wrong,
        repeated: per_passage.values().map(|n| n - 1).sum(),
        cpu_ms_per_frame_locate: 1000.0 * locate_time.as_secs_f64() / frames.len().max(1) as f64,
    })
}

/// Whether most of the vehicle is in the frame: a sliver at the edge is not expected to
/// be found.
fn fully_enough(t: &Truth) -> bool {
    t.visible >= 0.6
}

/// For each box, the truth vehicle it boxes (IoU >= 0.5, best first, one box each).
fn assign(boxes: &[Bounds], truth: &[&Truth]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (bi, b) in boxes.iter().enumerate() {
        for (ti, t) in truth.iter().enumerate() {
            let iou = b.iou(&t.bounds);
            if iou >= 0.5 {
                pairs.push((iou, bi, ti));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut owner = vec![None; boxes.len()];
    let mut taken = vec![false; truth.len()];
    for (_, bi, ti) in pairs {
        if owner[bi].is_none() && !taken[ti] {
            owner[bi] = Some(truth[ti].vehicle);
            taken[ti] = true;
        }
    }
    owner
}

fn same_make_model(p: &Prediction, make: &str, model: &str) -> bool {
    p.make_models().first().is_some_and(|((m, o), _)| *m == make && *o == model)
}

fn bench_camera() -> Result<Arc<CameraShared>, String> {
    let cfg: CameraConfig = toml::from_str("name = \"street\"\nurl = \"rtsp://127.0.0.1/street\"\nlocate = \"motion\"")
        .map_err(|e| e.to_string())?;
    Ok(CameraShared::new(Camera::from_config(&cfg)?))
}

/// The one alert: the wanted make and model, from any view.
fn alert(recognizer: &Recognizer, wanted: &(String, String), confirm: u32, min: f32) -> Result<AlertSet, String> {
    let vocab = Vocabulary {
        leaves: recognizer.cascade.leaves().to_vec(),
        cameras: vec![Name::new("street").map_err(|e| e.to_string())?],
    };
    let text = format!(
        "[[alert]]\nid = \"wanted\"\nmake = \"{}\"\nmodel = \"{}\"\nconfirm_frames = {confirm}\nmin_confidence = {min}\n",
        wanted.0, wanted.1
    );
    AlertSet::parse(std::path::Path::new("bench"), &text, &vocab, &MatcherConfig::default()).map_err(|e| e.to_string())
}
