//! The inference worker: the one thread that owns the model.
//!
//! It loads the [`Recognizer`] (and the [`Detector`], when a camera locates with one)
//! itself (tch tensors are `Send` but not `Sync`; keeping them on one thread keeps that
//! simple), then loops: take a batch of frames from the [`Batcher`], turn every frame
//! into crops (its regions, the whole frame, or one square per located vehicle, the
//! vehicles tracked per camera), classify all crops in one backbone call, show the
//! predictions to the [`Matcher`] (per frame, or per tracked vehicle), and hand hits to
//! the publisher. Between batches it notices alerts expiring and announces the active
//! set.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use jiff::Timestamp;

use crate::alerts::AlertSet;
use crate::batcher::{Batcher, Next};
use crate::camera::Frame;
use crate::locate::detector::{Detector, DetectorConfig, DetectorError};
use crate::locate::{Bounds, LocateConfig, Method, square_crop};
use crate::matcher::{Hit, Matcher, RegionPrediction};
use crate::metrics::{Metrics, Stage};
use crate::model::feed::{Feeder, Staged};
use crate::model::sizing;
use crate::model::{Crop, DeviceChoice, ModelError, Picture, PrecisionChoice, Prediction, Recognizer};
use crate::publish::Event;
use crate::sightings::{Ended, Recorder};
use crate::track::{Parked, TrackerConfig, Vehicles};

/// A 32x32 grey sample of a region, for motion gating: cheap to take and to compare,
/// coarse enough that sensor noise and compression do not count as motion.
#[derive(Debug, Clone)]
pub struct Thumbnail(Vec<u8>);

const THUMB: u32 = 32;

impl Thumbnail {
    pub fn of(frame: &Frame, crop: Crop) -> Thumbnail {
        let mut out = Vec::with_capacity((THUMB * THUMB) as usize);
        for ty in 0..THUMB {
            let y = crop.y + (ty * crop.height + crop.height / 2) / THUMB;
            for tx in 0..THUMB {
                let x = crop.x + (tx * crop.width + crop.width / 2) / THUMB;
                out.push(frame.grey(x, y));
            }
        }
        Thumbnail(out)
    }

    /// Whether at least `min_area` of the pixels moved by more than `threshold`.
    pub fn changed_from(&self, other: &Thumbnail, threshold: u8, min_area: f32) -> bool {
        let moved = self.0.iter().zip(&other.0).filter(|(a, b)| a.abs_diff(**b) > threshold).count();
        moved as f32 >= min_area * self.0.len() as f32
    }
}

/// How long after a track's last box (beyond `track_lost_s`) it is ended without a
/// frame of its camera to end it.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// Consecutive failed batches after which the worker gives up (and carwatch exits
/// non-zero so the service manager restarts it).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// What the worker is connected to.
pub struct Links {
    pub batcher: Batcher,
    pub matcher: Matcher,
    /// New alert sets from the reloader.
    pub alert_updates: Receiver<AlertSet>,
    pub metrics: Arc<Metrics>,
    /// Test-only fault: stop going round after start-up (the watchdog test).
    pub hang: bool,
    /// `batch.max_size = "auto"`: measure batch sizes up to this one at start-up and
    /// use the best.
    pub auto_batch: Option<usize>,
    /// Tracks and crops of located vehicles.
    pub locate: LocateConfig,
    /// Loaded with the model when some camera has `locate = "detector"`.
    pub detector: Option<DetectorConfig>,
}

/// What a loaded worker sends to, given to [`Worker::run`] rather than held while the
/// model loads: a daemon stopped during a load (which cannot be interrupted) must not
/// have the publisher and the sightings store waiting on it.
pub struct Wiring {
    /// Hits and alert announcements, to the publisher.
    pub events: Sender<Event>,
    /// Where vehicles whose tracks ended go to be remembered.
    pub sightings: Option<Recorder>,
}

/// The worker's state.
pub struct Worker {
    recognizer: Recognizer,
    /// Gets batches to the model's device (pinned side-stream uploads on CUDA).
    feeder: Feeder,
    batcher: Batcher,
    matcher: Matcher,
    /// Hits and alert announcements, to the publisher (from [`Wiring`]; a sender to
    /// nowhere until [`Worker::run`]).
    events: Sender<Event>,
    /// New alert sets from the reloader.
    alert_updates: Receiver<AlertSet>,
    metrics: Arc<Metrics>,
    /// Test-only fault: stop going round after start-up (the watchdog test).
    hang: bool,
    /// Cameras whose regions did not fit their frames (warned once each).
    misfit: HashSet<String>,
    /// Per (camera, region): the thumbnail last analysed and its prediction.
    still: HashMap<(String, usize), (Thumbnail, Prediction)>,
    active: Vec<String>,
    locate: LocateConfig,
    detector: Option<Detector>,
    /// Per tracking camera: its vehicles.
    vehicles: HashMap<String, Vehicles>,
    /// Per `frame` or `regions` camera: what stands in its regions (for the sightings).
    parked: HashMap<String, Parked>,
    sightings: Option<Recorder>,
}

/// What a crop shows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// Region `i` of the camera (0: the whole frame, when it has none).
    Region(usize),
    /// A located vehicle, on its track.
    Vehicle { track: u64 },
}

/// One crop of one frame of a batch.
#[derive(Debug, Clone, Copy)]
struct Item {
    frame: usize,
    target: Target,
    crop: Crop,
}

/// A batch from staging to predictions.
struct InFlight {
    frames: Vec<Arc<Frame>>,
    /// Every crop to classify (or known by motion gating).
    items: Vec<Item>,
    /// Per item: known already (motion gating) or filled in by `complete`.
    predictions: Vec<Option<Prediction>>,
    /// Per item that goes through the model with motion gating on: its thumbnail.
    thumbs: Vec<Option<Thumbnail>>,
    /// Items that go through the model, in batch order.
    todo: Vec<usize>,
    staged: Option<Staged>,
    /// Backbone output, once launched.
    features: Option<tch::Tensor>,
    /// Time spent staging, reported with the rest of preprocessing.
    preprocess: Duration,
    /// Hits on vehicles whose tracks ended while the batch was prepared.
    gone: Vec<Hit>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("loading the model: {0}")]
    Load(#[from] ModelError),
    #[error("inference failed {MAX_CONSECUTIVE_FAILURES} times in a row; last error: {0}")]
    Failing(String),
    #[error("the publisher has stopped")]
    PublisherGone,
    #[error("{0}")]
    Detector(#[from] DetectorError),
}

impl Worker {
    /// Loads the model from `models` on `device` in `precision` (as `[model]` resolves
    /// them), then runs one test batch through the whole path.
    pub fn load(
        models: &std::path::Path,
        device: DeviceChoice,
        precision: PrecisionChoice,
        links: Links,
    ) -> Result<Worker, WorkerError> {
        let Links { mut batcher, matcher, alert_updates, metrics, hang, auto_batch, locate, detector } = links;
        let recognizer = Recognizer::load_choosing(models, device, precision)?;
        let placement = recognizer.backbone.placement();
        let detector = match detector {
            Some(c) => {
                let d = Detector::load(&c, placement.device)?;
                tracing::info!("detector {} loaded on {}", c.file.display(), placement.describe());
                Some(d)
            }
            None => None,
        };
        let mut feeder = Feeder::new(placement)?;
        // One test batch, through the same path as camera frames, before anyone relies
        // on the model: shapes, device and kernels fail here, at start-up, rather than
        // on the first car.
        let blank = vec![128u8; crate::pixels::i420_len(64, 48)];
        let view = Picture::I420(
            crate::pixels::I420::new(&blank, 64, 48, crate::pixels::YuvMatrix::BT709).map_err(ModelError::Device)?,
        );
        recognizer.classify_fed(&mut feeder, &[(view, view.full())])?;
        metrics.heartbeat.beat();
        if let Some(cap) = auto_batch {
            let min_time =
                if placement.device.is_cuda() { Duration::from_millis(100) } else { Duration::from_millis(250) };
            let measured = sizing::measure(&recognizer, &mut feeder, &sizing::candidates(cap), min_time)?;
            let chosen = sizing::choose(&measured).unwrap_or(1);
            let table: Vec<String> = measured.iter().map(|m| format!("{}: {:.1}", m.batch, m.img_per_s)).collect();
            tracing::info!(
                "batch size {chosen}: the smallest within {:.0}% of the best throughput measured (img/s by batch: {})",
                100.0 * (1.0 - sizing::WITHIN),
                table.join(", ")
            );
            batcher.set_max_size(chosen);
            metrics.heartbeat.beat();
        }
        metrics.batch_max.set(batcher.max_size() as i64);
        if let Some(n) = recognizer.cascade.notice() {
            tracing::warn!("{n}");
        }
        tracing::info!("model loaded from {} on {}", models.display(), placement.describe());
        if let Ok(mut m) = metrics.model.lock() {
            *m = Some(placement.describe());
        }
        Ok(Worker {
            recognizer,
            feeder,
            batcher,
            matcher,
            events: crossbeam_channel::bounded(0).0,
            alert_updates,
            metrics,
            hang,
            misfit: HashSet::new(),
            still: HashMap::new(),
            active: Vec::new(),
            locate,
            detector,
            vehicles: HashMap::new(),
            parked: HashMap::new(),
            sightings: None,
        })
    }

    /// Runs until the batcher says stop.
    ///
    /// On CUDA one batch is kept in flight: the next batch is staged (packed and
    /// uploaded on a side stream) while the GPU still runs the backbone on the previous
    /// one, and only then are the previous one's predictions read. Without a GPU each
    /// batch is finished before the next is taken, as pipelining would gain nothing.
    pub fn run(mut self, wiring: Wiring) -> Result<(), WorkerError> {
        (self.events, self.sightings) = (wiring.events, wiring.sightings);
        let initial = self.matcher.alerts().clone();
        self.apply_alerts(initial, &AlertSet::default())?;
        let mut failures = 0;
        if self.hang {
            tracing::warn!("test fault: the inference loop stops here");
            loop {
                std::thread::park();
            }
        }
        let mut flight: Option<InFlight> = None;
        let mut last_expiry = Instant::now();
        loop {
            self.metrics.heartbeat.beat();
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                self.expire_tracks()?;
            }
            while let Ok(set) = self.alert_updates.try_recv() {
                let previous = self.matcher.alerts().clone();
                self.apply_alerts(set, &previous)?;
            }
            // With a batch in flight, take only what is queued now: its predictions
            // should not wait for a batch deadline.
            let next = match flight {
                Some(_) => self.batcher.queued(),
                None => self.batcher.next(Duration::from_millis(500)),
            };
            match next {
                Next::Stop => {
                    if let Some(f) = flight.take() {
                        self.finish(f, &mut failures)?;
                    }
                    self.remember_all();
                    return Ok(());
                }
                Next::Idle => match flight.take() {
                    Some(f) => self.finish(f, &mut failures)?,
                    None => self.announce_alerts(false)?,
                },
                Next::Batch(frames) => {
                    let n = frames.len();
                    let prepared = self.prepare(frames);
                    if let Some(f) = flight.take() {
                        self.finish(f, &mut failures)?;
                    }
                    match prepared.and_then(|p| self.launch(p)) {
                        Ok(f) if self.feeder.overlaps() => flight = Some(f),
                        Ok(f) => self.finish(f, &mut failures)?,
                        Err(e) => self.settle(Err(e), n, &mut failures)?,
                    }
                }
            }
        }
    }

    /// Completes a launched batch and counts the outcome.
    fn finish(&mut self, flight: InFlight, failures: &mut u32) -> Result<(), WorkerError> {
        let n = flight.frames.len();
        let result = self.complete(flight);
        self.settle(result, n, failures)
    }

    /// Counts a failed batch; gives up after [`MAX_CONSECUTIVE_FAILURES`] in a row.
    fn settle(&self, result: Result<(), WorkerError>, frames: usize, failures: &mut u32) -> Result<(), WorkerError> {
        match result {
            Ok(()) => *failures = 0,
            Err(WorkerError::PublisherGone) => return Err(WorkerError::PublisherGone),
            Err(e) => {
                *failures += 1;
                self.metrics.inference_errors.inc();
                tracing::error!("dropped a batch of {frames} frame(s): {e}");
                if *failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(WorkerError::Failing(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Crops of every frame (regions, whole frames, located vehicles), motion gating,
    /// and staging of the crops that need the model.
    fn prepare(&mut self, frames: Vec<Arc<Frame>>) -> Result<InFlight, WorkerError> {
        let detected = self.detect_all(&frames)?;
        let mut items: Vec<Item> = Vec::new();
        // Hits on vehicles whose tracks ended, decided as they go.
        let mut gone = Vec::new();
        for (fi, frame) in frames.iter().enumerate() {
            let cam = &frame.camera.camera;
            match cam.locate {
                Method::Frame => {
                    let crop = Crop { x: 0, y: 0, width: frame.width, height: frame.height };
                    items.push(Item { frame: fi, target: Target::Region(0), crop });
                }
                Method::Regions => {
                    for (ri, region) in cam.regions.iter().enumerate() {
                        match region.resolve(frame.width, frame.height) {
                            Ok(crop) => items.push(Item { frame: fi, target: Target::Region(ri), crop }),
                            Err(e) => {
                                if self.misfit.insert(format!("{}#{ri}", cam.name)) {
                                    tracing::error!(camera = %cam.name, "regions[{ri}]: {e}; skipping this region");
                                }
                            }
                        }
                    }
                }
                Method::Motion | Method::Detector => {
                    let boxes = detected[fi].as_deref().or(frame.boxes.as_deref()).unwrap_or_default();
                    self.track(fi, frame, boxes, &mut items, &mut gone);
                }
            }
        }
        // Motion gating: a region that has not changed since it was last analysed keeps
        // that prediction; only the others go through the model.
        let mut predictions: Vec<Option<Prediction>> = vec![None; items.len()];
        let mut thumbs: Vec<Option<Thumbnail>> = vec![None; items.len()];
        for (k, item) in items.iter().enumerate() {
            let Target::Region(ri) = item.target else { continue };
            let f = &frames[item.frame];
            let motion = f.camera.camera.motion;
            if !motion.enabled {
                continue;
            }
            let thumb = Thumbnail::of(f, item.crop);
            let key = (f.camera.name().to_string(), ri);
            match self.still.get(&key) {
                Some((reference, cached)) if !thumb.changed_from(reference, motion.threshold, motion.min_area) => {
                    predictions[k] = Some(cached.clone());
                    f.camera.motion_skipped.fetch_add(1, Ordering::Relaxed);
                }
                _ => thumbs[k] = Some(thumb),
            }
        }
        let todo: Vec<usize> = (0..items.len()).filter(|&k| predictions[k].is_none()).collect();
        let t = Instant::now();
        let staged = if todo.is_empty() {
            None
        } else {
            let mut views = Vec::with_capacity(todo.len());
            for &k in &todo {
                let f = &frames[items[k].frame];
                views.push((f.picture().map_err(ModelError::Device)?, items[k].crop));
            }
            Some(self.feeder.stage(&views)?)
        };
        Ok(InFlight { frames, items, predictions, thumbs, todo, staged, features: None, preprocess: t.elapsed(), gone })
    }

    /// The detector's boxes for the frames of detector cameras (`None` for the others:
    /// motion boxes came with the frame), all detector frames of the batch at once.
    fn detect_all(&mut self, frames: &[Arc<Frame>]) -> Result<Vec<Option<Vec<Bounds>>>, WorkerError> {
        let mut located: Vec<Option<Vec<Bounds>>> = vec![None; frames.len()];
        let wanted: Vec<usize> =
            (0..frames.len()).filter(|&i| frames[i].camera.camera.locate == Method::Detector).collect();
        if wanted.is_empty() {
            return Ok(located);
        }
        let Some(detector) = &self.detector else { return Ok(located) };
        let t = Instant::now();
        // The detector reads whole RGB frames: converted here, for its cameras only.
        let rgb: Vec<_> = wanted.iter().map(|&i| frames[i].rgb()).collect();
        let inputs: Vec<(&[u8], u32, u32)> =
            wanted.iter().zip(&rgb).map(|(&i, rgb)| (rgb.as_ref(), frames[i].width, frames[i].height)).collect();
        let found = detector.detect(&inputs)?;
        for (&i, detections) in wanted.iter().zip(found) {
            let cam = &frames[i].camera.camera;
            let (w, h) = (frames[i].width, frames[i].height);
            let mut boxes: Vec<Bounds> = detections
                .into_iter()
                .map(|d| d.bounds)
                .filter(|b| cam.admits(b.x + b.width / 2, b.y + b.height / 2, w, h))
                .collect();
            boxes.sort_by_key(|b| std::cmp::Reverse(b.area()));
            located[i] = Some(boxes);
        }
        self.metrics.observe_stage(Stage::locate, t.elapsed());
        Ok(located)
    }

    /// The boxes of one frame of a tracking camera become tracks and crops: the largest
    /// `max_vehicles_per_frame`, the rest counted.
    fn track(&mut self, fi: usize, frame: &Arc<Frame>, boxes: &[Bounds], items: &mut Vec<Item>, hits: &mut Vec<Hit>) {
        let cam = &frame.camera;
        let max = self.locate.max_vehicles_per_frame as usize;
        if boxes.len() > max {
            cam.vehicles_skipped.fetch_add((boxes.len() - max) as u64, Ordering::Relaxed);
        }
        let boxes = &boxes[..boxes.len().min(max)];
        if boxes.is_empty() && cam.camera.locate == Method::Motion {
            cam.motion_skipped.fetch_add(1, Ordering::Relaxed);
        }
        let config = TrackerConfig::from(&self.locate);
        // Looked up by name first: the key is allocated once per camera, not per frame.
        if !self.vehicles.contains_key(cam.name()) {
            let mut vehicles = Vehicles::new(config);
            vehicles.settle_after(self.confirm_looks());
            self.vehicles.insert(cam.name().to_string(), vehicles);
        }
        let Some(vehicles) = self.vehicles.get_mut(cam.name()) else { return };
        let before = vehicles.evicted();
        let (ids, ended) = vehicles.locate(frame, boxes);
        cam.tracks_evicted.fetch_add(vehicles.evicted() - before, Ordering::Relaxed);
        let wall = Timestamp::now();
        for gone in ended {
            hits.extend(self.matcher.vehicle_gone(frame, &gone, wall));
            if let Some(r) = &self.sightings {
                r.record(Ended { camera: cam.name().to_string(), vehicle: gone, live: false });
            }
        }
        for (&track, &b) in ids.iter().zip(boxes) {
            if !vehicles.wants_look(track, frame.seen) {
                cam.looks_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let c = square_crop(b, frame.width, frame.height, self.locate.crop_margin);
            let crop = Crop { x: c.x, y: c.y, width: c.width, height: c.height };
            items.push(Item { frame: fi, target: Target::Vehicle { track }, crop });
        }
    }

    /// The backbone on a staged batch: queued on CUDA, done when this returns on CPU.
    fn launch(&mut self, mut flight: InFlight) -> Result<InFlight, WorkerError> {
        let Some(staged) = flight.staged.take() else { return Ok(flight) };
        let t = Instant::now();
        let input = self.feeder.input(staged)?;
        self.metrics.observe_stage(Stage::preprocess, flight.preprocess + t.elapsed());
        let t = Instant::now();
        flight.features = Some(self.recognizer.backbone.features(&input)?);
        self.metrics.observe_stage(Stage::backbone, t.elapsed());
        Ok(flight)
    }

    /// The heads on a launched batch (on CUDA this waits for its backbone), then the
    /// matcher and the hits.
    fn complete(&mut self, flight: InFlight) -> Result<(), WorkerError> {
        let InFlight { frames, items, mut predictions, mut thumbs, todo, features, gone, .. } = flight;
        if let Some(features) = features {
            let t = Instant::now();
            let computed = crate::model::with_embeddings(self.recognizer.cascade.run(&features)?, &features)?;
            self.metrics.observe_stage(Stage::heads, t.elapsed());
            for (&k, p) in todo.iter().zip(computed) {
                if let (Some(thumb), Target::Region(ri)) = (thumbs[k].take(), items[k].target) {
                    self.still.insert((frames[items[k].frame].camera.name().to_string(), ri), (thumb, p.clone()));
                }
                predictions[k] = Some(p);
            }
        }
        let matching = Instant::now();
        let wall = Timestamp::now();
        let mut per_frame: Vec<Vec<RegionPrediction>> = vec![Vec::new(); frames.len()];
        let mut hits = gone;
        for (item, prediction) in items.iter().zip(predictions) {
            let Some(prediction) = prediction else { continue };
            let frame = &frames[item.frame];
            match item.target {
                Target::Region(ri) => {
                    if let Some(r) = &self.sightings {
                        let parked = self.parked.entry(frame.camera.name().to_string()).or_default();
                        let c = item.crop;
                        let b = Bounds { x: c.x, y: c.y, width: c.width, height: c.height };
                        if let Some(gone) = parked.look(ri, frame, b, &prediction) {
                            r.record(Ended { camera: frame.camera.name().to_string(), vehicle: gone, live: false });
                        }
                    }
                    let name = frame.camera.camera.region_name(ri);
                    per_frame[item.frame].push(RegionPrediction { index: ri, name, crop: item.crop, prediction });
                }
                Target::Vehicle { track } => {
                    let vehicle =
                        self.vehicles.get_mut(frame.camera.name()).and_then(|v| v.classified(track, &prediction));
                    if let Some(vehicle) = vehicle {
                        hits.extend(self.matcher.observe_vehicle(frame, vehicle, wall));
                    }
                }
            }
        }
        for (frame, regions) in frames.iter().zip(per_frame) {
            frame.camera.analysed.fetch_add(1, Ordering::Relaxed);
            if frame.camera.camera.locate.tracks() {
                continue;
            }
            hits.extend(self.matcher.observe(frame, &regions, frame.seen, wall));
        }
        for hit in hits {
            self.events.send(Event::Hit(Box::new(hit))).map_err(|_| WorkerError::PublisherGone)?;
        }
        self.metrics.observe_stage(Stage::matcher, matching.elapsed());
        self.metrics.batch_size.observe(frames.len() as f64);
        self.announce_alerts(false)
    }

    /// With no frames coming (a camera gone, all quiet), tracks still end on time: their
    /// vehicles are decided if they must be, and remembered.
    fn expire_tracks(&mut self) -> Result<(), WorkerError> {
        // Frames still queued may carry boxes for a track: only tracks lost well before
        // the oldest frame the queue could hold are ended here.
        let now = Instant::now().checked_sub(EXPIRY_GRACE).unwrap_or_else(Instant::now);
        let wall = Timestamp::now();
        let clock = std::time::SystemTime::now();
        let mut hits = Vec::new();
        for (camera, vehicles) in &mut self.vehicles {
            for gone in vehicles.expire(now) {
                if let Some(frame) = gone.best.as_ref().map(|b| Arc::clone(&b.frame)) {
                    hits.extend(self.matcher.vehicle_gone(&frame, &gone, wall));
                }
                if let Some(r) = &self.sightings {
                    r.record(Ended { camera: camera.clone(), vehicle: gone, live: false });
                }
            }
            if let Some(r) = &self.sightings {
                for vehicle in vehicles.refresh_due(r.refresh, clock) {
                    r.record(Ended { camera: camera.clone(), vehicle, live: true });
                }
            }
        }
        if let Some(r) = &self.sightings {
            let quiet = now.checked_sub(self.locate.track_lost).unwrap_or(now);
            for (camera, parked) in &mut self.parked {
                for vehicle in parked.expire(quiet) {
                    r.record(Ended { camera: camera.clone(), vehicle, live: false });
                }
                for vehicle in parked.refresh_due(r.refresh, clock) {
                    r.record(Ended { camera: camera.clone(), vehicle, live: true });
                }
            }
        }
        for hit in hits {
            self.events.send(Event::Hit(Box::new(hit))).map_err(|_| WorkerError::PublisherGone)?;
        }
        Ok(())
    }

    /// At shutdown: every live vehicle goes to the sightings store, as if its track ended.
    fn remember_all(&mut self) {
        let Some(r) = &self.sightings else { return };
        for (camera, vehicles) in &mut self.vehicles {
            for vehicle in vehicles.drain() {
                r.record(Ended { camera: camera.clone(), vehicle, live: false });
            }
        }
        for (camera, parked) in &mut self.parked {
            for vehicle in parked.drain() {
                r.record(Ended { camera: camera.clone(), vehicle, live: false });
            }
        }
    }

    /// Puts `set` in force: example photos derived ([`crate::example`]; an alert whose
    /// photos fail is left out and reported), then matcher, sightings and announcement.
    fn apply_alerts(&mut self, set: AlertSet, previous: &AlertSet) -> Result<(), WorkerError> {
        let (set, problems) = crate::example::derive(set, previous, &self.recognizer);
        if !problems.is_empty() {
            let problems = crate::document::Problems(problems);
            let error = Event::Error { source: "alerts", severity: crate::alerts::Severity::Error, problems };
            self.events.send(error).map_err(|_| WorkerError::PublisherGone)?;
        }
        if let Some(r) = &self.sightings {
            r.alerts(&set);
        }
        self.matcher.set_alerts(set);
        let looks = self.confirm_looks();
        for vehicles in self.vehicles.values_mut() {
            vehicles.settle_after(looks);
        }
        self.announce_alerts(true)
    }

    /// The most looks any alert wants before it hits a vehicle (`confirm_frames`).
    fn confirm_looks(&self) -> u32 {
        self.matcher.alerts().alerts.iter().map(|a| a.rule.confirm_frames).max().unwrap_or(0)
    }

    /// Sends the active alert list when it changed (or always, with `force`).
    fn announce_alerts(&mut self, force: bool) -> Result<(), WorkerError> {
        let active = self.matcher.alerts().active(Timestamp::now());
        let ids: Vec<String> = active.iter().map(|a| a.id.to_string()).collect();
        if force || ids != self.active {
            if !force {
                let gone: Vec<&String> = self.active.iter().filter(|i| !ids.contains(i)).collect();
                for g in gone {
                    tracing::info!(alert = %g, "alert {g} expired");
                }
            }
            self.metrics.alerts_active(&ids);
            self.active = ids;
            let list = active.iter().map(|a| a.summary()).collect();
            self.events.send(Event::AlertsActive(list)).map_err(|_| WorkerError::PublisherGone)?;
        }
        Ok(())
    }
}
