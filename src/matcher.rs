//! Deciding hits: predictions against active alerts, confirmation, cooldown.
//!
//! Two kinds of camera, two rules:
//!
//! - **Tracked vehicles** (`locate = "motion"` or `"detector"`): a track's mean
//!   prediction over its classified looks ([`crate::model::Average`]) is tested. An
//!   alert hits a track once the mean probability of its description reaches
//!   `min_confidence` after at least `confirm_frames` looks, and never again for that
//!   track: exactly one hit per (alert, vehicle). Only looks of the vehicle whole (clear
//!   of the frame's edge) count while it is in view; a vehicle cut by the edge for its
//!   whole passage is decided on its cut looks when its track ends. Cooldown and the
//!   confirmation window do not apply; a vehicle that comes back later is a new track.
//! - **Frames and regions** (below).
//!
//! A frame matches an alert when, in one of its regions, the marginal probability of
//! the alert's description (make; make and model; and view, when given) reaches the
//! alert's `min_confidence`. One frame counts once per alert, whatever number of its
//! regions match (the best region is kept). A hit is confirmed when `confirm_frames`
//! matching frames of one camera fall within `confirm_window`; the (alert, camera) pair
//! is then quiet for `cooldown`. Expired alerts stop matching at once.
//!
//! Time is passed in (`now` for windows, `wall` for expiries and hit times), so tests
//! drive confirmation and cooldown without sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use uuid::Uuid;

use crate::alerts::{Alert, AlertSet};
use crate::camera::{CameraShared, Frame};
use crate::locate::Bounds;
use crate::model::Leaf;
use crate::model::{Crop, Level, Prediction};
use crate::track::Vehicle;
use crate::values::{Name, later};

/// One classified region of a frame.
#[derive(Debug, Clone)]
pub struct RegionPrediction {
    pub index: usize,
    pub name: String,
    pub crop: Crop,
    pub prediction: Prediction,
}

/// A confirmed sighting of an alert's vehicle.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Unique; time-ordered (UUID v7). Stays the same if the hit is delivered again.
    pub hit_id: Uuid,
    pub alert: Arc<Alert>,
    pub camera: Arc<CameraShared>,
    /// When the confirming frame was captured.
    pub time: Timestamp,
    pub region: RegionPrediction,
    /// The alert's description as the cascade spells it, with the most likely view and
    /// model filled in where the alert leaves them open.
    pub leaf: Leaf,
    /// Marginal probability of the alert's description in the confirming region (for an
    /// alert by colour alone: the colour estimate's).
    pub confidence: f32,
    /// Cosine similarity to the alert's example photos, when it has them.
    pub similarity: Option<f32>,
    /// Matching frames that confirmed it (for a tracked vehicle: its classified looks).
    pub frames: u32,
    /// The frame the snapshot shows (for a tracked vehicle: its best look).
    pub frame: Arc<Frame>,
    /// The vehicle, on cameras that track.
    pub track: Option<TrackHit>,
}

/// The tracked vehicle a hit is about.
#[derive(Debug, Clone)]
pub struct TrackHit {
    /// Unique over the camera's life (not across restarts).
    pub id: u64,
    /// The box in the snapshot's frame.
    pub bounds: Bounds,
    pub observations: u32,
    pub first_seen: Timestamp,
}

/// Whose per-vehicle hit this was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VehicleKey {
    alert: Name,
    camera: Name,
    track: u64,
}

#[derive(Debug, Default)]
struct PairState {
    matches: VecDeque<Instant>,
    quiet_until: Option<Instant>,
}

/// Whose confirmation and cooldown state this is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pair {
    alert: Name,
    camera: Name,
}

/// The matcher: owns the alert set and each (alert, camera) pair's state.
pub struct Matcher {
    alerts: AlertSet,
    pairs: HashMap<Pair, PairState>,
    /// Vehicles already hit, per alert; forgotten when their track ends.
    hit: std::collections::HashSet<VehicleKey>,
}

impl Matcher {
    pub fn new(alerts: AlertSet) -> Matcher {
        Matcher { alerts, pairs: HashMap::new(), hit: Default::default() }
    }

    /// Replaces the alert set. Alerts whose definition is unchanged keep their
    /// confirmation and cooldown state, so an edit to one alert (or a reload of the same
    /// file) does not reset the others; an alert whose definition changed starts afresh.
    pub fn set_alerts(&mut self, alerts: AlertSet) {
        let unchanged: Vec<&str> = alerts
            .alerts
            .iter()
            .filter(|a| self.alerts.alerts.iter().any(|old| old == *a))
            .map(|a| a.id.as_str())
            .collect();
        self.pairs.retain(|pair, _| unchanged.contains(&pair.alert.as_str()));
        self.hit.retain(|key| unchanged.contains(&key.alert.as_str()));
        self.alerts = alerts;
    }

    /// Looks at a tracked vehicle that has just been classified once more, in `frame`
    /// (seen when the wall clock read `wall`): the hits it earns now.
    pub fn observe_vehicle(&mut self, frame: &Arc<Frame>, vehicle: &Vehicle, wall: Timestamp) -> Vec<Hit> {
        if !vehicle.seen_whole() {
            return Vec::new();
        }
        self.decide(frame, vehicle, wall)
    }

    /// A vehicle whose track ended (`frame`: the frame that ended it): one never seen
    /// whole is decided now, on its cut looks. Its hits are forgotten.
    pub fn vehicle_gone(&mut self, frame: &Arc<Frame>, vehicle: &Vehicle, wall: Timestamp) -> Vec<Hit> {
        let hits = if vehicle.seen_whole() { Vec::new() } else { self.decide(frame, vehicle, wall) };
        self.forget_tracks(frame.camera.name(), &[vehicle.track]);
        hits
    }

    fn decide(&mut self, frame: &Arc<Frame>, vehicle: &Vehicle, wall: Timestamp) -> Vec<Hit> {
        let camera = &frame.camera;
        let (Some(average), Some(best)) = (vehicle.average.as_ref(), vehicle.best.as_ref()) else {
            return Vec::new();
        };
        let looks = average.looks();
        let mut mean = None;
        let mut hits = Vec::new();
        for alert in &self.alerts.alerts {
            if !alert.active_at(wall) || !alert.watches(camera.name()) || looks < alert.rule.confirm_frames {
                continue;
            }
            let key = VehicleKey { alert: alert.id.clone(), camera: camera.camera.name.clone(), track: vehicle.track };
            if self.hit.contains(&key) {
                continue;
            }
            let p = mean.get_or_insert_with(|| average.prediction());
            let b = best.bounds;
            let colour = || best.frame.colour((b.x, b.y, b.width, b.height));
            let Some(verdict) = alert.verdict(p, colour) else { continue };
            self.hit.insert(key);
            hits.push(Hit {
                hit_id: Uuid::now_v7(),
                alert: Arc::clone(alert),
                camera: Arc::clone(camera),
                time: Timestamp::try_from(frame.captured_at).unwrap_or(wall),
                leaf: describe(p, alert),
                region: RegionPrediction {
                    index: 0,
                    name: "vehicle".into(),
                    crop: Crop { x: b.x, y: b.y, width: b.width, height: b.height },
                    prediction: p.clone(),
                },
                confidence: verdict.confidence,
                similarity: verdict.similarity,
                frames: looks,
                frame: Arc::clone(&best.frame),
                track: Some(TrackHit {
                    id: vehicle.track,
                    bounds: b,
                    observations: looks,
                    first_seen: Timestamp::try_from(vehicle.first_seen).unwrap_or(wall),
                }),
            });
        }
        hits
    }

    /// Tracks of `camera` that ended: their vehicles can no longer be hit.
    fn forget_tracks(&mut self, camera: &str, tracks: &[u64]) {
        if !tracks.is_empty() {
            self.hit.retain(|k| k.camera.as_str() != camera || !tracks.contains(&k.track));
        }
    }

    pub fn alerts(&self) -> &AlertSet {
        &self.alerts
    }

    /// Looks at the classified regions of one frame, seen at `now` (monotonic: windows
    /// and cooldowns) when the wall clock read `wall` (expiries).
    pub fn observe(
        &mut self,
        frame: &Arc<Frame>,
        regions: &[RegionPrediction],
        now: Instant,
        wall: Timestamp,
    ) -> Vec<Hit> {
        let camera = frame.camera.name();
        let mut hits = Vec::new();
        for alert in &self.alerts.alerts {
            if !alert.active_at(wall) || !alert.watches(camera) {
                continue;
            }
            let best = regions
                .iter()
                .filter_map(|r| {
                    let c = r.crop;
                    let colour = || frame.colour((c.x, c.y, c.width, c.height));
                    alert.verdict(&r.prediction, colour).map(|v| (r, v))
                })
                .max_by(|a, b| a.1.confidence.total_cmp(&b.1.confidence));
            let Some((region, verdict)) = best else { continue };
            let key = Pair { alert: alert.id.clone(), camera: frame.camera.camera.name.clone() };
            let pair = self.pairs.entry(key).or_default();
            if pair.quiet_until.is_some_and(|q| now < q) {
                continue;
            }
            let rule = alert.rule;
            pair.matches.push_back(now);
            while pair.matches.front().is_some_and(|&t| now.duration_since(t) > rule.window) {
                pair.matches.pop_front();
            }
            if pair.matches.len() as u32 >= rule.confirm_frames {
                let frames = pair.matches.len() as u32;
                pair.matches.clear();
                pair.quiet_until = Some(later(now, rule.cooldown));
                hits.push(Hit {
                    hit_id: Uuid::now_v7(),
                    alert: Arc::clone(alert),
                    camera: Arc::clone(&frame.camera),
                    time: Timestamp::try_from(frame.captured_at).unwrap_or(wall),
                    leaf: describe(&region.prediction, alert),
                    region: region.clone(),
                    confidence: verdict.confidence,
                    similarity: verdict.similarity,
                    frames,
                    frame: Arc::clone(frame),
                    track: None,
                });
            }
        }
        hits
    }
}

/// The alert's description completed with the most likely open parts.
fn describe(p: &Prediction, alert: &Alert) -> Leaf {
    let make = alert.make().cloned().unwrap_or_else(|| p.label(Level::Make).clone());
    let model = alert.model().cloned().unwrap_or_else(|| {
        p.make_models().into_iter().find(|((m, _), _)| *m == make).map(|((_, o), _)| o).unwrap_or_default()
    });
    let view = alert.view.clone().unwrap_or_else(|| {
        p.marginal(Level::View)
            .into_iter()
            .map(|(v, _)| v)
            .max_by(|a, b| {
                let pa = p.probability(Some(a.as_str()), &make, Some(model.as_str()));
                let pb = p.probability(Some(b.as_str()), &make, Some(model.as_str()));
                pa.total_cmp(&pb)
            })
            .unwrap_or_default()
    });
    Leaf { view, make, model }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Vocabulary;
    use crate::model::cascade::testing::prediction;
    use crate::rule::MatcherConfig;
    use crate::values::Name;
    use std::path::Path;
    use std::time::Duration;

    use crate::camera::testing::camera;

    fn frame(cam: &Arc<CameraShared>) -> Arc<Frame> {
        Arc::new(crate::camera::testing::frame(cam, 4, 4))
    }

    /// One region whose prediction is `p_bmw_3` BMW 3-series, rest audi a4 (front view).
    fn regions(p_bmw_3: f32) -> Vec<RegionPrediction> {
        vec![RegionPrediction {
            index: 0,
            name: "frame".into(),
            crop: Crop { x: 0, y: 0, width: 4, height: 4 },
            prediction: prediction(&[
                (("front", "bmw", "3-series"), p_bmw_3),
                (("front", "audi", "a4"), 1.0 - p_bmw_3),
            ]),
        }]
    }

    fn matcher(alerts: &str) -> Matcher {
        let leaf = |v: &str, m: &str, o: &str| Leaf { view: v.into(), make: m.into(), model: o.into() };
        let vocab = Vocabulary {
            leaves: vec![leaf("front", "bmw", "3-series"), leaf("front", "audi", "a4")],
            cameras: vec![Name::new("gate").unwrap(), Name::new("yard").unwrap()],
        };
        Matcher::new(AlertSet::parse(Path::new("a.toml"), alerts, &vocab, &MatcherConfig::default()).unwrap())
    }

    const BMW: &str = "[[alert]]\nid = \"bmw3\"\nmake = \"bmw\"\nmodel = \"3-series\"\nconfirm_frames = 2\nconfirm_window_s = 10\ncooldown_s = 60\n";

    #[test]
    fn two_matching_frames_within_the_window_confirm_one_hit() {
        let mut m = matcher(BMW);
        let gate = camera("gate");
        let t0 = Instant::now();
        let wall = Timestamp::now();
        assert!(m.observe(&frame(&gate), &regions(0.9), t0, wall).is_empty(), "one frame is not enough");
        let hits = m.observe(&frame(&gate), &regions(0.8), t0 + Duration::from_secs(3), wall);
        assert_eq!(hits.len(), 1);
        let h = &hits[0];
        assert_eq!((h.alert.id.as_str(), h.frames), ("bmw3", 2));
        assert_eq!((h.leaf.view.as_str(), h.leaf.make.as_str(), h.leaf.model.as_str()), ("front", "bmw", "3-series"));
        assert!((h.confidence - 0.8).abs() < 1e-6);
    }

    #[test]
    fn matches_further_apart_than_the_window_do_not_confirm() {
        let mut m = matcher(BMW);
        let gate = camera("gate");
        let t0 = Instant::now();
        let wall = Timestamp::now();
        assert!(m.observe(&frame(&gate), &regions(0.9), t0, wall).is_empty());
        assert!(m.observe(&frame(&gate), &regions(0.9), t0 + Duration::from_secs(11), wall).is_empty());
        assert_eq!(m.observe(&frame(&gate), &regions(0.9), t0 + Duration::from_secs(12), wall).len(), 1);
    }

    #[test]
    fn a_steady_stream_gives_one_hit_per_cooldown() {
        let mut m = matcher(BMW);
        let gate = camera("gate");
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut hit_times = Vec::new();
        // Two frames a second for 150 s.
        for i in 0..300u64 {
            let t = t0 + Duration::from_millis(500 * i);
            if !m.observe(&frame(&gate), &regions(0.95), t, wall).is_empty() {
                hit_times.push(i as f64 / 2.0);
            }
        }
        assert_eq!(hit_times, vec![0.5, 61.0, 121.5], "hits at {hit_times:?}");
    }

    #[test]
    fn low_confidence_other_cameras_and_expiry_are_respected() {
        let mut m = matcher(
            "[[alert]]\nid = \"a\"\nmake = \"bmw\"\ncameras = [\"gate\"]\nconfirm_frames = 1\ncooldown_s = 0\nexpires = 2030-01-01T00:00:00Z\nmin_confidence = 0.7\n",
        );
        let (gate, yard) = (camera("gate"), camera("yard"));
        let t = Instant::now();
        let before: Timestamp = "2029-12-31T23:59:59Z".parse().unwrap();
        let after: Timestamp = "2030-01-01T00:00:01Z".parse().unwrap();
        assert!(m.observe(&frame(&gate), &regions(0.65), t, before).is_empty(), "below min_confidence");
        assert!(m.observe(&frame(&yard), &regions(0.99), t, before).is_empty(), "camera not watched");
        assert_eq!(m.observe(&frame(&gate), &regions(0.99), t, before).len(), 1);
        assert!(m.observe(&frame(&gate), &regions(0.99), t + Duration::from_secs(1), after).is_empty(), "expired");
    }

    #[test]
    fn reloads_keep_the_state_of_unchanged_alerts_only() {
        let audi = "[[alert]]\nid = \"audi\"\nmake = \"audi\"\nconfirm_frames = 1\ncooldown_s = 60\n";
        let both = format!("{BMW}\n{audi}");
        let vocab_set = |text: &str| matcher(text).alerts().clone();
        let mut m = matcher(&both);
        let gate = camera("gate");
        let (t, wall) = (Instant::now(), Timestamp::now());
        assert!(m.observe(&frame(&gate), &regions(0.9), t, wall).is_empty(), "bmw3: first of two frames");
        // The same file read again: bmw3 keeps its first frame.
        m.set_alerts(vocab_set(&both));
        assert_eq!(m.observe(&frame(&gate), &regions(0.9), t, wall).len(), 1, "bmw3 confirmed across the reload");
        // bmw3 edited: it starts afresh (one frame is not enough again).
        let edited = format!("{}\n{audi}", BMW.replace("cooldown_s = 60", "cooldown_s = 30"));
        assert!(m.observe(&frame(&gate), &regions(0.9), t, wall).is_empty(), "bmw3 in cooldown");
        m.set_alerts(vocab_set(&edited));
        assert!(m.observe(&frame(&gate), &regions(0.9), t, wall).is_empty(), "edited bmw3 needs two frames again");
        assert_eq!(m.observe(&frame(&gate), &regions(0.9), t, wall).len(), 1);
    }

    #[test]
    fn cameras_confirm_separately() {
        let mut m = matcher(BMW);
        let (gate, yard) = (camera("gate"), camera("yard"));
        let t = Instant::now();
        let wall = Timestamp::now();
        assert!(m.observe(&frame(&gate), &regions(0.9), t, wall).is_empty());
        assert!(m.observe(&frame(&yard), &regions(0.9), t, wall).is_empty(), "one frame each is not two of one camera");
        assert_eq!(m.observe(&frame(&yard), &regions(0.9), t, wall)[0].camera.name(), "yard");
    }

    /// A vehicle of `gate` whose looks said bmw 3-series with these probabilities.
    fn vehicle(gate: &Arc<CameraShared>, track: u64, looks: &[f32]) -> (Arc<Frame>, Vehicle) {
        let f = Arc::new(crate::camera::testing::frame(gate, 64, 48));
        let bounds = crate::locate::Bounds { x: 10, y: 10, width: 20, height: 10 };
        let mut vehicles = crate::track::Vehicles::new(crate::track::TrackerConfig::default());
        let (ids, _) = vehicles.locate(&f, &[bounds]);
        let mut v = None;
        for &p in looks {
            v = Some(vehicles.classified(ids[0], &regions(p)[0].prediction).unwrap().clone());
        }
        let mut v = v.unwrap();
        v.track = track;
        (f, v)
    }

    #[test]
    fn a_tracked_vehicle_is_hit_once_per_alert_after_confirm_frames_looks() {
        let mut m = matcher(BMW);
        let gate = camera("gate");
        let wall = Timestamp::now();
        let (f, one) = vehicle(&gate, 7, &[0.95]);
        assert!(m.observe_vehicle(&f, &one, wall).is_empty(), "one look is below confirm_frames = 2");
        let (f, two) = vehicle(&gate, 7, &[0.95, 0.2, 0.9]);
        let hits = m.observe_vehicle(&f, &two, wall);
        assert_eq!(hits.len(), 1, "the mean of 0.95, 0.2 and 0.9 reaches 0.5");
        let t = hits[0].track.as_ref().unwrap();
        assert_eq!((t.id, t.observations, hits[0].frames), (7, 3, 3));
        assert!((hits[0].confidence - 0.6833).abs() < 1e-3);
        // Never again for that track, however sure; cooldown plays no part.
        let (f, more) = vehicle(&gate, 7, &[0.99, 0.99, 0.99, 0.99]);
        assert!(m.observe_vehicle(&f, &more, wall).is_empty());
        // Another vehicle is hit at once.
        let (f, other) = vehicle(&gate, 8, &[0.99, 0.99]);
        assert_eq!(m.observe_vehicle(&f, &other, wall).len(), 1);
        // A low mean never hits.
        let (f, low) = vehicle(&gate, 9, &[0.9, 0.1, 0.1]);
        assert!(m.observe_vehicle(&f, &low, wall).is_empty());
        // Once track 7 has ended its id could come back only as a new vehicle.
        assert!(m.vehicle_gone(&f, &more, wall).is_empty(), "seen whole: decided while in view");
        assert_eq!(m.observe_vehicle(&f, &more, wall).len(), 1);
    }

    #[test]
    fn a_vehicle_cut_by_the_edge_throughout_is_decided_when_its_track_ends() {
        let mut m = matcher(BMW);
        let gate = camera("gate");
        let wall = Timestamp::now();
        let f = Arc::new(crate::camera::testing::frame(&gate, 64, 48));
        let mut vehicles = crate::track::Vehicles::new(crate::track::TrackerConfig::default());
        let edge = crate::locate::Bounds { x: 0, y: 10, width: 20, height: 10 };
        let (ids, _) = vehicles.locate(&f, &[edge]);
        for _ in 0..3 {
            let v = vehicles.classified(ids[0], &regions(0.9)[0].prediction).unwrap().clone();
            assert!(!v.seen_whole());
            assert!(m.observe_vehicle(&f, &v, wall).is_empty(), "cut looks do not decide while in view");
        }
        let v = vehicles.classified(ids[0], &regions(0.9)[0].prediction).unwrap().clone();
        let hits = m.vehicle_gone(&f, &v, wall);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].track.as_ref().unwrap().observations, 4);
    }
}
