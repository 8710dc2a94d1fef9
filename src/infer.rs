//! The inference worker: the one thread that owns the model.
//!
//! It loads the [`Recognizer`] itself (tch tensors are `Send` but not `Sync`; keeping
//! them on one thread keeps that simple), then loops: take a batch from the
//! [`Batcher`], crop every frame's regions, classify them in one backbone call, show the
//! predictions to the [`Matcher`], and hand hits to the publisher. Between batches it
//! notices alerts expiring and announces the active set.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use jiff::Timestamp;

use crate::alerts::AlertSet;
use crate::batcher::{Batcher, Next};
use crate::camera::Frame;
use crate::matcher::{Matcher, RegionPrediction};
use crate::metrics::{Metrics, Stage};
use crate::model::{Crop, ModelError, Placement, Recognizer, RgbImage, preprocess};
use crate::publish::Event;

/// Consecutive failed batches after which the worker gives up (and carwatch exits
/// non-zero so the service manager restarts it).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// What the worker is connected to.
pub struct Links {
    pub batcher: Batcher,
    pub matcher: Matcher,
    /// Hits and alert announcements, to the publisher.
    pub events: Sender<Event>,
    /// New alert sets from the reloader.
    pub alert_updates: Receiver<AlertSet>,
    pub metrics: Arc<Metrics>,
    /// Test-only fault: stop going round after start-up (the watchdog test).
    pub hang: bool,
}

/// The worker's state.
pub struct Worker {
    recognizer: Recognizer,
    batcher: Batcher,
    matcher: Matcher,
    events: Sender<Event>,
    /// New alert sets from the reloader.
    alert_updates: Receiver<AlertSet>,
    metrics: Arc<Metrics>,
    /// Test-only fault: stop going round after start-up (the watchdog test).
    hang: bool,
    /// Cameras whose regions did not fit their frames (warned once each).
    misfit: HashSet<String>,
    active: Vec<String>,
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
}

impl Worker {
    /// Loads the model from `models` on `placement`.
    pub fn load(models: &std::path::Path, placement: Placement, links: Links) -> Result<Worker, WorkerError> {
        let Links { batcher, matcher, events, alert_updates, metrics, hang } = links;
        let recognizer = Recognizer::load(models, placement)?;
        // One test batch before anyone relies on the model: shapes, device and kernels
        // fail here, at start-up, rather than on the first car.
        let blank = image::RgbImage::new(64, 48);
        let view = RgbImage::from_image(&blank);
        recognizer.classify(&[(view, view.full())])?;
        metrics.heartbeat.beat();
        if let Some(n) = recognizer.cascade.notice() {
            tracing::warn!("{n}");
        }
        tracing::info!("model loaded from {} on {}", models.display(), placement.describe());
        Ok(Worker {
            recognizer,
            batcher,
            matcher,
            events,
            alert_updates,
            metrics,
            hang,
            misfit: HashSet::new(),
            active: Vec::new(),
        })
    }

    /// Runs until the batcher says stop.
    pub fn run(mut self) -> Result<(), WorkerError> {
        self.announce_alerts(true)?;
        let mut failures = 0;
        if self.hang {
            tracing::warn!("test fault: the inference loop stops here");
            loop {
                std::thread::park();
            }
        }
        loop {
            self.metrics.heartbeat.beat();
            while let Ok(set) = self.alert_updates.try_recv() {
                self.matcher.set_alerts(set);
                self.announce_alerts(true)?;
            }
            match self.batcher.next(Duration::from_millis(500)) {
                Next::Stop => return Ok(()),
                Next::Idle => self.announce_alerts(false)?,
                Next::Batch(frames) => match self.process(&frames) {
                    Ok(()) => failures = 0,
                    Err(WorkerError::PublisherGone) => return Err(WorkerError::PublisherGone),
                    Err(e) => {
                        failures += 1;
                        self.metrics.inference_errors.inc();
                        tracing::error!("dropped a batch of {} frame(s): {e}", frames.len());
                        if failures >= MAX_CONSECUTIVE_FAILURES {
                            return Err(WorkerError::Failing(e.to_string()));
                        }
                    }
                },
            }
        }
    }

    fn process(&mut self, frames: &[Arc<Frame>]) -> Result<(), WorkerError> {
        // (frame index, region index, crop) for every region of every frame.
        let mut items: Vec<(usize, usize, Crop)> = Vec::new();
        for (fi, frame) in frames.iter().enumerate() {
            let cam = &frame.camera.camera;
            if cam.regions.is_empty() {
                items.push((fi, 0, Crop { x: 0, y: 0, width: frame.width, height: frame.height }));
                continue;
            }
            for (ri, region) in cam.regions.iter().enumerate() {
                match region.resolve(frame.width, frame.height) {
                    Ok(crop) => items.push((fi, ri, crop)),
                    Err(e) => {
                        if self.misfit.insert(format!("{}#{ri}", cam.name)) {
                            tracing::error!(camera = %cam.name, "regions[{ri}]: {e}; skipping this region");
                        }
                    }
                }
            }
        }
        let mut views = Vec::with_capacity(items.len());
        for &(fi, _, crop) in &items {
            let f = &frames[fi];
            let image = RgbImage::new(&f.rgb, f.width, f.height, f.width as usize * 3).map_err(ModelError::Device)?;
            views.push((image, crop));
        }
        let predictions = self.classify(&views)?;
        let matching = Instant::now();
        let wall = Timestamp::now();
        let mut per_frame: Vec<Vec<RegionPrediction>> = vec![Vec::new(); frames.len()];
        for (&(fi, ri, crop), prediction) in items.iter().zip(predictions) {
            let name = frames[fi].camera.camera.region_name(ri);
            per_frame[fi].push(RegionPrediction { index: ri, name, crop, prediction });
        }
        for (frame, regions) in frames.iter().zip(per_frame) {
            frame.camera.analysed.fetch_add(1, Ordering::Relaxed);
            for hit in self.matcher.observe(frame, &regions, frame.seen, wall) {
                self.events.send(Event::Hit(Box::new(hit))).map_err(|_| WorkerError::PublisherGone)?;
            }
        }
        self.metrics.observe_stage(Stage::matcher, matching.elapsed());
        self.metrics.batch_size.observe(frames.len() as f64);
        self.announce_alerts(false)
    }

    /// Preprocess, backbone and heads, each timed (on CUDA the device is synchronised
    /// after the backbone so that its time is its own).
    fn classify(&self, views: &[(RgbImage<'_>, Crop)]) -> Result<Vec<crate::model::Prediction>, ModelError> {
        let r = &self.recognizer;
        let t = Instant::now();
        let batch = preprocess::batch(views, r.backbone.placement())?;
        self.metrics.observe_stage(Stage::preprocess, t.elapsed());
        let t = Instant::now();
        let features = r.backbone.features(&batch)?;
        if let tch::Device::Cuda(n) = r.backbone.placement().device {
            tch::Cuda::synchronize(n as i64);
        }
        self.metrics.observe_stage(Stage::backbone, t.elapsed());
        let t = Instant::now();
        let predictions = r.cascade.run(&features)?;
        self.metrics.observe_stage(Stage::heads, t.elapsed());
        Ok(predictions)
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
            self.active = ids;
            let list = active.iter().map(|a| a.summary()).collect();
            self.events.send(Event::AlertsActive(list)).map_err(|_| WorkerError::PublisherGone)?;
        }
        Ok(())
    }
}
