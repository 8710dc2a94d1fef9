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
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use jiff::Timestamp;

use crate::alerts::AlertSet;
use crate::batcher::{Batcher, Next};
use crate::camera::Frame;
use crate::matcher::{Matcher, RegionPrediction};
use crate::model::{Crop, ModelError, Placement, Recognizer, RgbImage};
use crate::publish::Event;

/// Consecutive failed batches after which the worker gives up (and carwatch exits
/// non-zero so the service manager restarts it).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// The worker's state.
pub struct Worker {
    recognizer: Recognizer,
    batcher: Batcher,
    matcher: Matcher,
    events: Sender<Event>,
    /// New alert sets from the reloader.
    alert_updates: Receiver<AlertSet>,
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
    pub fn load(
        models: &std::path::Path,
        placement: Placement,
        batcher: Batcher,
        matcher: Matcher,
        events: Sender<Event>,
        alert_updates: Receiver<AlertSet>,
    ) -> Result<Worker, WorkerError> {
        let recognizer = Recognizer::load(models, placement)?;
        if let Some(n) = recognizer.cascade.notice() {
            tracing::warn!("{n}");
        }
        tracing::info!("model loaded from {} on {}", models.display(), placement.describe());
        Ok(Worker { recognizer, batcher, matcher, events, alert_updates, misfit: HashSet::new(), active: Vec::new() })
    }

    /// Runs until the batcher says stop.
    pub fn run(mut self) -> Result<(), WorkerError> {
        self.announce_alerts(true)?;
        let mut failures = 0;
        loop {
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
        let predictions = self.recognizer.classify(&views)?;
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
        self.announce_alerts(false)
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
