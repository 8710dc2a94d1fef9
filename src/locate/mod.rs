//! Where the vehicles are in a frame: the stage between decoding and the batcher.
//!
//! Cameras that see a street, a car park or a junction show vehicles 10-30% of the
//! frame wide, anywhere; classifying the whole frame shrinks such a car to a few dozen
//! pixels. Locating first and classifying crops is what every comparable system does.
//!
//! Each camera picks a [`Method`] (`locate = ...`):
//!
//! - [`motion`]: a background model on a downscaled colour frame; what differs from it,
//!   cleaned up and grouped, is a proposal. Needs no weights; runs on the camera's own
//!   thread, so a frame where nothing moved reaches the worker with no boxes and costs
//!   no inference.
//! - [`detector`]: a TorchScript detector (YOLO-style output), run by the inference
//!   worker on the backbone's device, batched across cameras.
//! - `regions` and `frame`: today's fixed crops, for cameras framed on a gate.
//!
//! Boxes of `motion` and `detector` cameras become tracks ([`crate::track`]) and square
//! crops ([`square_crop`]) that share backbone batches with every other camera's.

pub mod detector;
pub mod motion;

use std::time::Duration;

use serde::Deserialize;

use crate::values::bounded;

/// How a camera finds what to classify (`locate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Moving things against a learned background; tracked, decided per vehicle.
    Motion,
    /// The `[detector]` model's boxes; tracked, decided per vehicle.
    Detector,
    /// The camera's `regions`, each classified whole; confirmation and cooldown per
    /// (alert, camera).
    Regions,
    /// The whole frame, classified whole; as `regions`.
    Frame,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Motion => "motion",
            Method::Detector => "detector",
            Method::Regions => "regions",
            Method::Frame => "frame",
        }
    }

    /// Whether boxes of this method are tracked and decided per vehicle.
    pub fn tracks(self) -> bool {
        matches!(self, Method::Motion | Method::Detector)
    }
}

/// `[locate]`: what happens to located boxes, for every `motion` and `detector` camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocateConfig {
    /// Most vehicles classified per frame, largest first; the rest are counted
    /// (`vehicles_skipped`).
    #[serde(default = "default_max_vehicles", deserialize_with = "max_vehicles")]
    pub max_vehicles_per_frame: u32,
    /// A track ends after this long without a box.
    #[serde(default = "default_lost", deserialize_with = "crate::values::seconds", rename = "track_lost_s")]
    pub track_lost: Duration,
    /// Most tracks alive per camera; beyond it the one seen longest ago is ended (counted).
    #[serde(default = "default_max_tracks", deserialize_with = "max_tracks")]
    pub max_tracks: u32,
    /// Context around a box in its crop, as a fraction of the box's longer side.
    #[serde(default = "default_crop_margin")]
    pub crop_margin: f32,
    #[serde(default)]
    pub motion: motion::MotionConfig,
}

fn max_vehicles<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 64)
}

fn max_tracks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 256)
}

fn default_max_vehicles() -> u32 {
    8
}

fn default_lost() -> Duration {
    Duration::from_secs(2)
}

fn default_max_tracks() -> u32 {
    16
}

fn default_crop_margin() -> f32 {
    0.1
}

impl Default for LocateConfig {
    fn default() -> Self {
        LocateConfig {
            max_vehicles_per_frame: default_max_vehicles(),
            track_lost: default_lost(),
            max_tracks: default_max_tracks(),
            crop_margin: default_crop_margin(),
            motion: motion::MotionConfig::default(),
        }
    }
}

impl LocateConfig {
    /// Ranges serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.crop_margin) {
            return Err(format!("crop_margin must be between 0 and 1, found {}", self.crop_margin));
        }
        self.motion.check().map_err(|e| format!("motion.{e}"))
    }
}

/// The square crop classified for `b` in a `width` x `height` frame: `b`'s longer side
/// plus `margin` of it, centred on `b`, moved (not cut) to lie inside the frame; cut
/// only where the frame is smaller than the square. Square because the cascade is
/// trained on square photos: a stretched crop would look like another model.
pub fn square_crop(b: Bounds, width: u32, height: u32, margin: f32) -> Bounds {
    let side = (b.width.max(b.height) as f32 * (1.0 + margin)).round() as u32;
    let (w, h) = (side.clamp(1, width.max(1)), side.clamp(1, height.max(1)));
    let centre = |at: u32, len: u32, span: u32, frame: u32| -> u32 {
        let c = at as i64 + len as i64 / 2 - span as i64 / 2;
        c.clamp(0, (frame - span) as i64) as u32
    };
    Bounds { x: centre(b.x, b.width, w, width), y: centre(b.y, b.height, h, height), width: w, height: h }
}

/// A box in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Bounds {
    pub fn area(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// Intersection over union with `other` (0 when they do not meet).
    pub fn iou(&self, other: &Bounds) -> f32 {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (self.x + self.width).min(other.x + other.width);
        let y1 = (self.y + self.height).min(other.y + other.height);
        if x1 <= x0 || y1 <= y0 {
            return 0.0;
        }
        let inter = (x1 - x0) as u64 * (y1 - y0) as u64;
        inter as f32 / (self.area() + other.area() - inter) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_boxes() {
        let a = Bounds { x: 0, y: 0, width: 10, height: 10 };
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&Bounds { x: 20, y: 0, width: 5, height: 5 }), 0.0);
        let half = Bounds { x: 5, y: 0, width: 10, height: 10 };
        assert!((a.iou(&half) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn crops_are_square_around_the_box_and_inside_the_frame() {
        let b = Bounds { x: 100, y: 100, width: 200, height: 100 };
        assert_eq!(square_crop(b, 1280, 720, 0.1), Bounds { x: 90, y: 40, width: 220, height: 220 });
        // At the frame's corner the square moves in rather than being cut.
        let corner = Bounds { x: 0, y: 0, width: 100, height: 50 };
        assert_eq!(square_crop(corner, 1280, 720, 0.2), Bounds { x: 0, y: 0, width: 120, height: 120 });
        // Taller than the frame allows: cut to the frame.
        let huge = Bounds { x: 0, y: 0, width: 1000, height: 700 };
        assert_eq!(square_crop(huge, 1280, 720, 0.1), Bounds { x: 0, y: 0, width: 1100, height: 720 });
    }
}
