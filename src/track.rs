//! Tracks: one camera's boxes across analysed frames become vehicles.
//!
//! Each track predicts where its vehicle is now from its last box and velocity
//! (constant velocity), and boxes are matched to predictions greedily, best overlap
//! (IoU) first, down to `min_iou`. A matched track takes the box and updates its
//! velocity; a box no track claims starts a new track, with an id unique over the
//! camera's life; a track with no box for `lost_after` ends. At most `max_tracks` live at
//! once: beyond it the track seen longest ago is ended early, and counted.
//!
//! [`Vehicles`] is what the inference worker keeps per `motion` or `detector` camera:
//! the tracker, and for every live track what it has been seen as (the mean of its
//! classified looks, [`Average`]) and its best look, the frame its snapshot shows.
//!
//! Time is passed in, so tests drive tracks without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::camera::Frame;
use crate::locate::Bounds;
use crate::model::{Average, Prediction};

/// How boxes become tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// A track ends when it has had no box for this long.
    pub lost_after: Duration,
    /// Most tracks alive at once.
    pub max_tracks: usize,
    /// Least overlap between a track's predicted box and a box for them to match.
    pub min_iou: f32,
}

impl From<&crate::locate::LocateConfig> for TrackerConfig {
    fn from(c: &crate::locate::LocateConfig) -> Self {
        TrackerConfig { lost_after: c.track_lost, max_tracks: c.max_tracks as usize, ..TrackerConfig::default() }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { lost_after: Duration::from_secs(3), max_tracks: 32, min_iou: 0.1 }
    }
}

/// One vehicle followed across frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub bounds: Bounds,
    pub first_seen: Instant,
    pub last_seen: Instant,
    /// Frames that gave this track a box.
    pub observations: u32,
    /// Centre velocity, pixels per second.
    velocity: (f32, f32),
}

impl Track {
    fn centre(b: &Bounds) -> (f32, f32) {
        (b.x as f32 + b.width as f32 / 2.0, b.y as f32 + b.height as f32 / 2.0)
    }

    /// Where the box should be at `now`, moving as it did: `[x0, y0, x1, y1]`, not cut
    /// to the frame, so a track leaving the frame does not linger at its edge and take
    /// the next vehicle coming in there.
    fn predicted(&self, now: Instant) -> [f32; 4] {
        let dt = now.saturating_duration_since(self.last_seen).as_secs_f32();
        let x = self.bounds.x as f32 + self.velocity.0 * dt;
        let y = self.bounds.y as f32 + self.velocity.1 * dt;
        [x, y, x + self.bounds.width as f32, y + self.bounds.height as f32]
    }
}

/// Intersection over union of a predicted box and a found one.
fn overlap(p: [f32; 4], b: &Bounds) -> f32 {
    let q = [b.x as f32, b.y as f32, (b.x + b.width) as f32, (b.y + b.height) as f32];
    let w = (p[2].min(q[2]) - p[0].max(q[0])).max(0.0);
    let h = (p[3].min(q[3]) - p[1].max(q[1])).max(0.0);
    let inter = w * h;
    let union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// One camera's tracks.
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    /// Tracks ended early because `max_tracks` were alive (since start).
    pub evicted: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker { config, tracks: Vec::new(), next_id: 1, evicted: 0 }
    }

    /// The live tracks.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Takes one analysed frame's boxes, seen at `now`; returns the track id of each box
    /// (same order) and the tracks that ended (lost, or evicted to make room).
    pub fn update(&mut self, boxes: &[Bounds], now: Instant) -> (Vec<u64>, Vec<Track>) {
        let mut ended = Vec::new();
        let lost_after = self.config.lost_after;
        self.tracks.retain(|t| {
            let keep = now.saturating_duration_since(t.last_seen) <= lost_after;
            if !keep {
                ended.push(t.clone());
            }
            keep
        });
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            let p = t.predicted(now);
            for (bi, b) in boxes.iter().enumerate() {
                let iou = overlap(p, b);
                if iou >= self.config.min_iou {
                    pairs.push((iou, ti, bi));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ids = vec![0u64; boxes.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        for (_, ti, bi) in pairs {
            if track_taken[ti] || ids[bi] != 0 {
                continue;
            }
            track_taken[ti] = true;
            let t = &mut self.tracks[ti];
            let dt = now.saturating_duration_since(t.last_seen).as_secs_f32();
            if dt > 0.0 {
                let (c0, c1) = (Track::centre(&t.bounds), Track::centre(&boxes[bi]));
                let v = ((c1.0 - c0.0) / dt, (c1.1 - c0.1) / dt);
                // Half the old estimate, half the new: steady through one noisy box.
                t.velocity =
                    if t.observations > 1 { ((t.velocity.0 + v.0) / 2.0, (t.velocity.1 + v.1) / 2.0) } else { v };
            }
            t.bounds = boxes[bi];
            t.last_seen = now;
            t.observations += 1;
            ids[bi] = t.id;
        }
        for (bi, b) in boxes.iter().enumerate() {
            if ids[bi] != 0 {
                continue;
            }
            if self.tracks.len() >= self.config.max_tracks.max(1) {
                let oldest = (0..self.tracks.len()).min_by_key(|&i| self.tracks[i].last_seen).unwrap_or(0);
                ended.push(self.tracks.swap_remove(oldest));
                self.evicted += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.tracks.push(Track {
                id,
                bounds: *b,
                first_seen: now,
                last_seen: now,
                observations: 1,
                velocity: (0.0, 0.0),
            });
            ids[bi] = id;
        }
        (ids, ended)
    }
}

/// A tracked vehicle as the matcher sees it.
#[derive(Debug, Clone)]
pub struct Vehicle {
    pub track: u64,
    /// When its first and its latest box were captured.
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Its box in the latest located frame.
    pub bounds: Bounds,
    /// The mean of its classified looks (none until the first is classified): of its
    /// whole looks once it has one, of its cut ones (box at the frame's edge) until then.
    pub average: Option<Average>,
    /// Whether `average` is of whole looks.
    whole: bool,
    /// Whether the latest located box touches the frame's edge.
    cut: bool,
    /// The look its snapshot shows.
    pub best: Option<Look>,
}

/// One frame of a vehicle.
#[derive(Debug, Clone)]
pub struct Look {
    pub frame: Arc<Frame>,
    pub bounds: Bounds,
    /// Larger is better: the box's area, halved when it touches the frame's edge (the
    /// vehicle is probably cut).
    score: u64,
}

/// Whether `b` touches the edge of a `width` x `height` frame: the vehicle in it is
/// probably cut, and a cut vehicle is often taken for another model.
pub fn at_edge(b: &Bounds, width: u32, height: u32) -> bool {
    b.x <= 1 || b.y <= 1 || b.x + b.width + 1 >= width || b.y + b.height + 1 >= height
}

impl Vehicle {
    /// Classified looks so far (of those the average is of).
    pub fn looks(&self) -> u32 {
        self.average.as_ref().map_or(0, Average::looks)
    }

    /// Whether it has been seen whole (its box clear of the frame's edge) at least once:
    /// only then is it decided while its track lives; a vehicle cut by the edge for its
    /// whole passage is decided when its track ends.
    pub fn seen_whole(&self) -> bool {
        self.whole
    }
}

/// One camera's vehicles: boxes become tracks, classified looks accumulate on them.
pub struct Vehicles {
    tracker: Tracker,
    vehicles: HashMap<u64, Vehicle>,
}

impl Vehicles {
    pub fn new(config: TrackerConfig) -> Vehicles {
        Vehicles { tracker: Tracker::new(config), vehicles: HashMap::new() }
    }

    /// Takes the boxes of one located frame: the track of each box (same order), and the
    /// vehicles whose tracks ended.
    pub fn locate(&mut self, frame: &Arc<Frame>, boxes: &[Bounds]) -> (Vec<u64>, Vec<Vehicle>) {
        let (ids, ended) = self.tracker.update(boxes, frame.seen);
        let ended: Vec<Vehicle> = ended.into_iter().filter_map(|t| self.vehicles.remove(&t.id)).collect();
        for (&id, &b) in ids.iter().zip(boxes) {
            let v = self.vehicles.entry(id).or_insert_with(|| Vehicle {
                track: id,
                first_seen: frame.captured_at,
                last_seen: frame.captured_at,
                bounds: b,
                average: None,
                whole: false,
                cut: false,
                best: None,
            });
            v.bounds = b;
            v.last_seen = frame.captured_at;
            let edge = at_edge(&b, frame.width, frame.height);
            v.cut = edge;
            let score = if edge { b.area() / 2 } else { b.area() };
            if v.best.as_ref().is_none_or(|l| score > l.score) {
                v.best = Some(Look { frame: Arc::clone(frame), bounds: b, score });
            }
        }
        (ids, ended)
    }

    /// Adds a classified look (of its latest located box) to track `id`; the vehicle,
    /// unless its track has ended since it was located. Looks of a cut vehicle count
    /// only until the first whole look, which starts the average afresh.
    pub fn classified(&mut self, id: u64, p: &Prediction) -> Option<&Vehicle> {
        let v = self.vehicles.get_mut(&id)?;
        match (v.average.as_mut(), v.whole, v.cut) {
            (Some(_), true, true) => {}
            (Some(a), whole, cut) if whole || cut => a.add(p),
            _ => {
                v.average = Some(Average::new(p));
                v.whole = !v.cut;
            }
        }
        Some(v)
    }

    /// Tracks ended early because `max_tracks` were alive (since start).
    pub fn evicted(&self) -> u64 {
        self.tracker.evicted
    }

    /// The vehicles whose tracks have had no box for `lost_after` by `now`, taken out
    /// (when no frame of the camera comes to end them).
    pub fn expire(&mut self, now: Instant) -> Vec<Vehicle> {
        let (_, ended) = self.tracker.update(&[], now);
        ended.into_iter().filter_map(|t| self.vehicles.remove(&t.id)).collect()
    }

    /// Every live vehicle, taken out (at shutdown).
    pub fn drain(&mut self) -> Vec<Vehicle> {
        self.vehicles.drain().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: u32, y: u32) -> Bounds {
        Bounds { x, y, width: 120, height: 60 }
    }

    #[test]
    fn two_vehicles_whose_paths_cross_keep_their_ids() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let t0 = Instant::now();
        let mut first = None;
        for i in 0..30u32 {
            let now = t0 + Duration::from_millis(500 * i as u64);
            // One drives right, one left, on nearly the same line: they overlap in the middle.
            let right = at(40 + i * 30, 300);
            let left = at(40 + (29 - i) * 30 + 7, 310);
            let (ids, ended) = tracker.update(&[right, left], now);
            assert!(ended.is_empty());
            match first {
                None => first = Some((ids[0], ids[1])),
                Some(f) => assert_eq!((ids[0], ids[1]), f, "frame {i}: identities swapped or lost"),
            }
        }
        assert_eq!(tracker.tracks().len(), 2);
    }

    #[test]
    fn a_vehicle_entering_where_another_left_is_a_new_track() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let t0 = Instant::now();
        let step = |i: u64| t0 + Duration::from_millis(250 * i);
        // One leaves at the left edge, moving left 80 px a frame...
        let (leaving, _) = tracker.update(&[Bounds { x: 160, y: 300, width: 200, height: 100 }], step(0));
        tracker.update(&[Bounds { x: 80, y: 300, width: 200, height: 100 }], step(1));
        tracker.update(&[Bounds { x: 0, y: 300, width: 200, height: 100 }], step(2));
        tracker.update(&[Bounds { x: 0, y: 300, width: 120, height: 100 }], step(3));
        // ...and a frame later another comes in there, moving right.
        let (entering, _) = tracker.update(&[Bounds { x: 0, y: 320, width: 60, height: 100 }], step(5));
        assert_ne!(entering, leaving);
    }

    #[test]
    fn a_track_ends_after_lost_after_without_boxes() {
        let config = TrackerConfig { lost_after: Duration::from_secs(2), ..TrackerConfig::default() };
        let mut tracker = Tracker::new(config);
        let t0 = Instant::now();
        let (ids, _) = tracker.update(&[at(10, 10)], t0);
        let (_, ended) = tracker.update(&[], t0 + Duration::from_secs(2));
        assert!(ended.is_empty(), "not yet lost at exactly lost_after");
        let (_, ended) = tracker.update(&[], t0 + Duration::from_millis(2100));
        assert_eq!(ended.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
        // A vehicle there later is a new track, with a new id.
        let (again, _) = tracker.update(&[at(10, 10)], t0 + Duration::from_secs(3));
        assert_ne!(again, ids);
    }

    #[test]
    fn beyond_max_tracks_the_longest_unseen_track_is_ended_and_counted() {
        let config = TrackerConfig { max_tracks: 2, ..TrackerConfig::default() };
        let mut tracker = Tracker::new(config);
        let t0 = Instant::now();
        let (a, _) = tracker.update(&[at(0, 0)], t0);
        let (b, _) = tracker.update(&[at(400, 0)], t0 + Duration::from_millis(100));
        let (c, ended) = tracker.update(&[at(400, 0), at(800, 0)], t0 + Duration::from_millis(200));
        assert_eq!(tracker.evicted, 1);
        assert_eq!(ended.iter().map(|t| t.id).collect::<Vec<_>>(), a, "the track seen longest ago goes");
        assert_eq!(c[0], b[0]);
        assert_eq!(tracker.tracks().len(), 2);
    }

    #[test]
    fn vehicles_expire_without_frames_and_drain_at_shutdown() {
        let cam = crate::camera::testing::camera("gate");
        let frame = Arc::new(crate::camera::testing::frame(&cam, 640, 480));
        let config = TrackerConfig { lost_after: Duration::from_secs(2), ..TrackerConfig::default() };
        let mut vehicles = Vehicles::new(config);
        let (ids, _) = vehicles.locate(&frame, &[at(10, 10), at(300, 200)]);
        assert!(vehicles.expire(frame.seen + Duration::from_secs(2)).is_empty());
        let gone = vehicles.expire(frame.seen + Duration::from_millis(2100));
        let mut gone_ids: Vec<u64> = gone.iter().map(|v| v.track).collect();
        gone_ids.sort();
        assert_eq!(gone_ids, ids);
        vehicles.locate(&frame, &[at(10, 10)]);
        assert_eq!(vehicles.drain().len(), 1);
    }
}
