//! Tracks: one camera's boxes across analysed frames become vehicles.
//!
//! Each track predicts where its vehicle is now from its last box and velocity
//! (constant velocity), and boxes are matched to predictions greedily, best overlap
//! (IoU) first, down to `min_iou`. A track seen only once has no velocity yet: when a
//! camera is analysed a few times a second or less, its vehicle's next box may not
//! overlap the first at all, so such a track also takes the nearest box within
//! `max_speed` of where it was (after every overlapping pair, which always wins). A
//! matched track takes the box and updates its
//! velocity; a box no track claims starts a new track, with an id unique over the
//! camera's life; a track with no box for `lost_after` ends. At most `max_tracks` live at
//! once: beyond it the track seen longest ago is ended early, and counted.
//!
//! [`Vehicles`] is what the inference worker keeps per `motion` or `detector` camera:
//! the tracker, and for every live track what it has been seen as (the mean of its
//! classified looks, [`Average`]) and its best look, the frame its snapshot shows.
//! [`Parked`] does the same for the fixed regions of `frame` and `regions` cameras, for
//! the sightings store only (their hits are decided per frame by the matcher).
//!
//! Time is passed in, so tests drive tracks without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::camera::Frame;
use crate::locate::Bounds;
use crate::model::{Average, Label, Prediction};

/// Whole looks after which a vehicle whose mean the model is sure of is settled: its
/// decision needs no more looks, only the occasional one ([`RELOOK`]). More when an
/// alert asks for more looks before it hits ([`Vehicles::settle_after`]).
pub const SETTLED_LOOKS: u32 = 2;
/// Confidence of a vehicle's mean (its most likely view, make and model together) that
/// counts as sure.
pub const SURE: f32 = 0.8;
/// How often a settled vehicle is looked at again, and a vehicle still cut by the
/// frame's edge (entering) at all.
pub const RELOOK: Duration = Duration::from_millis(1500);

/// How boxes become tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// A track ends when it has had no box for this long.
    pub lost_after: Duration,
    /// Most tracks alive at once.
    pub max_tracks: usize,
    /// Least overlap between a track's predicted box and a box for them to match.
    pub min_iou: f32,
    /// How fast a vehicle seen only once may have moved by its next box, in its own
    /// sizes (the longer side) per second: about a car's length a second crossing a
    /// street at walking pace up to a few at town speed.
    pub max_speed: f32,
}

impl From<&crate::locate::LocateConfig> for TrackerConfig {
    fn from(c: &crate::locate::LocateConfig) -> Self {
        TrackerConfig { lost_after: c.track_lost, max_tracks: c.max_tracks as usize, ..TrackerConfig::default() }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { lost_after: Duration::from_secs(3), max_tracks: 32, min_iou: 0.1, max_speed: 2.0 }
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
        // Scored so that every overlapping pair (1 + IoU) comes before every pair
        // matched by distance alone (1 - distance / reach, below 1).
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            let p = t.predicted(now);
            let dt = now.saturating_duration_since(t.last_seen).as_secs_f32();
            for (bi, b) in boxes.iter().enumerate() {
                let iou = overlap(p, b);
                if iou >= self.config.min_iou {
                    pairs.push((1.0 + iou, ti, bi));
                } else if t.observations == 1 {
                    let size = t.bounds.width.max(t.bounds.height).max(b.width).max(b.height) as f32;
                    let reach = self.config.max_speed * size * dt;
                    let (c0, c1) = (Track::centre(&t.bounds), Track::centre(b));
                    let distance = (c1.0 - c0.0).hypot(c1.1 - c0.1);
                    if distance < reach {
                        pairs.push((1.0 - distance / reach, ti, bi));
                    }
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
    /// When it was last handed to the sightings store while alive (long tracks are
    /// remembered every [`Vehicles::refresh_due`] period, not only when they end).
    recorded: Option<SystemTime>,
    /// When its latest look was sent to the model (the seen time of that frame).
    looked: Option<Instant>,
    /// Settled: enough whole looks ([`SETTLED_LOOKS`]) whose mean is [`SURE`] (kept up to date
    /// per classified look, so that deciding per frame costs nothing).
    settled: bool,
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
    /// Whole looks before a sure vehicle is settled.
    settle_looks: u32,
}

impl Vehicles {
    pub fn new(config: TrackerConfig) -> Vehicles {
        Vehicles { tracker: Tracker::new(config), vehicles: HashMap::new(), settle_looks: SETTLED_LOOKS }
    }

    /// Settles vehicles only after `looks` whole looks (at least [`SETTLED_LOOKS`]): an
    /// alert with `confirm_frames = 4` must get its four looks without waiting for
    /// relooks.
    pub fn settle_after(&mut self, looks: u32) {
        self.settle_looks = looks.max(SETTLED_LOOKS);
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
                recorded: None,
                looked: None,
                settled: false,
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
        v.settled = v.whole
            && v.looks() >= self.settle_looks
            && v.average.as_ref().is_some_and(|a| a.prediction().confidence() >= SURE);
        Some(v)
    }

    /// Whether vehicle `id`'s box in the frame just located (seen at `now`) should go
    /// through the model; if so it is noted as looked at. Not when the look would be
    /// thrown away (a cut look of a vehicle already seen whole, see
    /// [`Vehicles::classified`]), nor when the vehicle is settled ([`SETTLED_LOOKS`]
    /// whole looks whose mean is [`SURE`]) and was looked at less than [`RELOOK`] ago:
    /// one decision per vehicle needs a few good looks, not every frame, and a look not
    /// taken is inference another camera can use. A vehicle not yet seen whole (one
    /// entering at the edge) is looked at once, then again only every [`RELOOK`] while
    /// it stays cut: its first whole look throws the cut ones away, and one that stays
    /// cut for its whole passage still gets looks to be decided on.
    pub fn wants_look(&mut self, id: u64, now: Instant) -> bool {
        let Some(v) = self.vehicles.get_mut(&id) else { return true };
        if v.whole && v.cut {
            return false;
        }
        let recently = v.looked.is_some_and(|t| now.saturating_duration_since(t) < RELOOK);
        if recently && (v.settled || (v.cut && !v.whole)) {
            return false;
        }
        v.looked = Some(now);
        true
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

    /// Copies of the classified vehicles alive for `every` since they were first seen or
    /// last returned here (by `now`): a car parked in view for an hour is in the
    /// sightings within `every`, not only when it leaves.
    pub fn refresh_due(&mut self, every: Duration, now: SystemTime) -> Vec<Vehicle> {
        let mut due = Vec::new();
        for v in self.vehicles.values_mut() {
            let since = v.recorded.unwrap_or(v.first_seen);
            if v.average.is_some() && now.duration_since(since).is_ok_and(|d| d >= every) {
                v.recorded = Some(now);
                due.push(v.clone());
            }
        }
        due
    }
}

/// What stands in the fixed regions of a `frame` or `regions` camera, for the sightings
/// store: each run of confident looks at one region with the same make and model is one
/// vehicle (a car parked in a bay is one row, not one per analysed frame).
#[derive(Default)]
pub struct Parked {
    runs: HashMap<usize, Run>,
    next_id: u64,
}

struct Run {
    make_model: (Label, Label),
    vehicle: Vehicle,
    last: Instant,
}

/// Least probability of the most likely (make, model) for a region's look to count.
pub const PARKED_CONFIDENCE: f32 = 0.5;

impl Parked {
    /// A classified look at region `index` (its box `bounds`): the vehicle whose run
    /// it ends (the region now shows another, or nothing sure), if any.
    pub fn look(&mut self, index: usize, frame: &Arc<Frame>, bounds: Bounds, p: &Prediction) -> Option<Vehicle> {
        let top = p.make_models().into_iter().next().filter(|(_, q)| *q >= PARKED_CONFIDENCE).map(|(mm, _)| mm);
        if let (Some(run), Some(mm)) = (self.runs.get_mut(&index), top.as_ref())
            && run.make_model == *mm
        {
            let v = &mut run.vehicle;
            if let Some(a) = v.average.as_mut() {
                a.add(p);
            }
            v.last_seen = frame.captured_at;
            v.bounds = bounds;
            run.last = frame.seen;
            return None;
        }
        let ended = self.runs.remove(&index).map(|r| r.vehicle);
        if let Some(make_model) = top {
            self.next_id += 1;
            let vehicle = Vehicle {
                track: self.next_id,
                first_seen: frame.captured_at,
                last_seen: frame.captured_at,
                bounds,
                average: Some(Average::new(p)),
                whole: true,
                cut: false,
                best: Some(Look { frame: Arc::clone(frame), bounds, score: bounds.area() }),
                recorded: None,
                looked: Some(frame.seen),
                settled: false,
            };
            self.runs.insert(index, Run { make_model, vehicle, last: frame.seen });
        }
        ended
    }

    /// Runs with no look since `before` (the camera stopped), taken out.
    pub fn expire(&mut self, before: Instant) -> Vec<Vehicle> {
        let gone: Vec<usize> = self.runs.iter().filter(|(_, r)| r.last < before).map(|(&i, _)| i).collect();
        gone.into_iter().filter_map(|i| self.runs.remove(&i)).map(|r| r.vehicle).collect()
    }

    /// As [`Vehicles::refresh_due`].
    pub fn refresh_due(&mut self, every: Duration, now: SystemTime) -> Vec<Vehicle> {
        let mut due = Vec::new();
        for r in self.runs.values_mut() {
            let v = &mut r.vehicle;
            if now.duration_since(v.recorded.unwrap_or(v.first_seen)).is_ok_and(|d| d >= every) {
                v.recorded = Some(now);
                due.push(v.clone());
            }
        }
        due
    }

    /// Every run, taken out (at shutdown).
    pub fn drain(&mut self) -> Vec<Vehicle> {
        self.runs.drain().map(|(_, r)| r.vehicle).collect()
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
    fn a_vehicle_analysed_once_a_second_keeps_one_track_though_its_boxes_never_overlap() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let t0 = Instant::now();
        // 300 px wide, moving 320 px a second (a car crossing a 720p street in 5 s), one
        // box a second: consecutive boxes are 20 px apart.
        let mut ids = Vec::new();
        for i in 0..4u32 {
            let b = Bounds { x: 10 + 320 * i, y: 300, width: 300, height: 150 };
            let (id, _) = tracker.update(&[b], t0 + Duration::from_secs(i as u64));
            ids.push(id[0]);
        }
        assert_eq!(ids, vec![ids[0]; 4], "one vehicle, one track");
        // A box farther than max_speed allows for the time passed is another vehicle:
        // 2 sizes a second, 300 px, over 0.5 s is 300 px; this one is 400 px off.
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (first, _) = tracker.update(&[Bounds { x: 10, y: 300, width: 300, height: 150 }], t0);
        let (next, _) =
            tracker.update(&[Bounds { x: 410, y: 300, width: 300, height: 150 }], t0 + Duration::from_millis(500));
        assert_ne!(next, first);
    }

    #[test]
    fn an_overlapping_box_wins_over_a_nearer_one_matched_by_distance() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let t0 = Instant::now();
        // A parked car (seen once so far) and, a second later, a car passing near it:
        // the parked car keeps its track and the passing one starts its own.
        let (parked, _) = tracker.update(&[at(500, 300)], t0);
        let later = t0 + Duration::from_secs(1);
        let (ids, _) = tracker.update(&[at(650, 300), at(505, 300)], later);
        assert_eq!(ids[1], parked[0]);
        assert_ne!(ids[0], parked[0]);
        // Two vehicles seen once each keep their own tracks when both move: each box goes
        // to the nearer track.
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (a, _) = tracker.update(&[at(100, 100), at(700, 400)], t0);
        let (b, _) = tracker.update(&[at(800, 400), at(200, 100)], later);
        assert_eq!((b[1], b[0]), (a[0], a[1]));
    }

    #[test]
    fn a_settled_vehicle_is_looked_at_again_only_every_relook_and_cut_looks_now_and_then_before_whole_ones_and_not_after()
     {
        let cam = crate::camera::testing::camera("street");
        let frame = |seen: Instant| {
            let mut f = crate::camera::testing::frame(&cam, 1280, 720);
            f.seen = seen;
            Arc::new(f)
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let b = |x: u32| Bounds { x, y: 300, width: 200, height: 150 };
        for (p, settles) in [(0.95, true), (0.6, false)] {
            let mut vehicles = Vehicles::new(TrackerConfig::default());
            let mut wanted = Vec::new();
            // A look every 250 ms, whole from the start: two looks, then settled
            // (when the model is sure) until 1.5 s after the third.
            for i in 0..10u64 {
                let (ids, _) = vehicles.locate(&frame(at(250 * i)), &[b(100 + 20 * i as u32)]);
                let want = vehicles.wants_look(ids[0], at(250 * i));
                if want {
                    vehicles.classified(ids[0], &look("bmw", p));
                }
                wanted.push(want);
            }
            let expected: Vec<bool> = if settles {
                // Looked at 0, 250 (settled), then again at 1750.
                (0..10).map(|i| i < 2 || i == 7).collect()
            } else {
                vec![true; 10]
            };
            assert_eq!(wanted, expected, "p = {p}");
        }
        // An alert that wants four looks before it hits gets them at once.
        let mut vehicles = Vehicles::new(TrackerConfig::default());
        vehicles.settle_after(4);
        let wanted: Vec<bool> = (0..10u64)
            .map(|i| {
                let (ids, _) = vehicles.locate(&frame(at(250 * i)), &[b(100 + 20 * i as u32)]);
                let want = vehicles.wants_look(ids[0], at(250 * i));
                if want {
                    vehicles.classified(ids[0], &look("bmw", 0.95));
                }
                want
            })
            .collect();
        assert_eq!(wanted, (0..10).map(|i| i < 4 || i == 9).collect::<Vec<_>>());
        // Seen whole, then cut by the frame's edge: the cut look would be dropped.
        let mut vehicles = Vehicles::new(TrackerConfig::default());
        let (first, _) = vehicles.locate(&frame(at(0)), &[b(1000)]);
        assert!(vehicles.wants_look(first[0], at(0)));
        vehicles.classified(first[0], &look("bmw", 0.6));
        let (ids, _) = vehicles.locate(&frame(at(250)), &[Bounds { x: 1100, y: 300, width: 180, height: 150 }]);
        assert_eq!(ids, first);
        assert!(!vehicles.wants_look(ids[0], at(250)));
        // Entering at the left edge: one cut look, then none until it is whole (at
        // 750 ms) or has stayed cut for 1.5 s.
        for (cut_for, expected) in [
            (3, vec![true, false, false, true, true]),
            (8, vec![true, false, false, false, false, false, true, false, true]),
        ] {
            let mut vehicles = Vehicles::new(TrackerConfig::default());
            let mut wanted = Vec::new();
            for i in 0..expected.len() as u64 {
                let x = if i < cut_for { 0 } else { 2 + 20 * (i + 1 - cut_for) as u32 };
                let (ids, _) = vehicles.locate(&frame(at(250 * i)), &[b(x)]);
                let want = vehicles.wants_look(ids[0], at(250 * i));
                if want {
                    vehicles.classified(ids[0], &look("bmw", 0.6));
                }
                wanted.push(want);
            }
            assert_eq!(wanted, expected, "cut for {cut_for} looks");
        }
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

    fn look(make: &str, p: f32) -> Prediction {
        crate::model::cascade::testing::prediction(&[(("front", make, "m"), p), (("front", "other", "m"), 1.0 - p)])
    }

    #[test]
    fn a_parked_vehicle_is_one_run_until_the_region_shows_another() {
        let cam = crate::camera::testing::camera("bay");
        let frame = Arc::new(crate::camera::testing::frame(&cam, 64, 48));
        let b = Bounds { x: 0, y: 0, width: 64, height: 48 };
        let mut parked = Parked::default();
        assert!(parked.look(0, &frame, b, &look("bmw", 0.9)).is_none());
        assert!(parked.look(0, &frame, b, &look("bmw", 0.8)).is_none(), "the same car again");
        assert!(parked.look(1, &frame, b, &look("audi", 0.9)).is_none(), "another region, its own run");
        let gone = parked.look(0, &frame, b, &look("volvo", 0.9)).expect("the BMW's run ends");
        assert_eq!(gone.looks(), 2);
        let p = gone.average.as_ref().unwrap().prediction();
        assert!((p.probability(None, "bmw", None) - 0.85).abs() < 1e-5);
        // An unsure look (no make and model at 0.5) ends the Volvo's run and starts none.
        let unsure = crate::model::cascade::testing::prediction(&[
            (("front", "volvo", "m"), 0.3),
            (("front", "audi", "m"), 0.35),
            (("front", "bmw", "m"), 0.35),
        ]);
        assert!(parked.look(0, &frame, b, &unsure).is_some());
        assert!(parked.look(0, &frame, b, &unsure).is_none());
        // Refreshes come every period, for live runs only; the camera stopping ends them.
        let later = frame.captured_at + Duration::from_secs(61);
        let due = parked.refresh_due(Duration::from_secs(60), later);
        assert_eq!(due.len(), 1, "the Audi, still there");
        assert!(parked.refresh_due(Duration::from_secs(60), later + Duration::from_secs(30)).is_empty());
        assert_eq!(parked.refresh_due(Duration::from_secs(60), later + Duration::from_secs(61)).len(), 1);
        assert_eq!(parked.expire(frame.seen + Duration::from_secs(1)).len(), 1);
        assert!(parked.drain().is_empty());
    }

    #[test]
    fn a_long_track_is_due_for_refresh_every_period() {
        let cam = crate::camera::testing::camera("gate");
        let frame = Arc::new(crate::camera::testing::frame(&cam, 640, 480));
        let mut vehicles = Vehicles::new(TrackerConfig::default());
        let (ids, _) = vehicles.locate(&frame, &[at(100, 100)]);
        let every = Duration::from_secs(60);
        let t = frame.captured_at;
        assert!(vehicles.refresh_due(every, t + Duration::from_secs(90)).is_empty(), "not classified yet");
        vehicles.classified(ids[0], &look("bmw", 0.9));
        assert!(vehicles.refresh_due(every, t + Duration::from_secs(59)).is_empty());
        assert_eq!(vehicles.refresh_due(every, t + Duration::from_secs(60)).len(), 1);
        assert!(vehicles.refresh_due(every, t + Duration::from_secs(100)).is_empty());
        assert_eq!(vehicles.refresh_due(every, t + Duration::from_secs(121)).len(), 1);
    }
}
