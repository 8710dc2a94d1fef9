//! Where the vehicles are in a frame: the stage between decoding and the batcher.
//!
//! Cameras that see a street, a car park or a junction show vehicles 10-30% of the
//! frame wide, anywhere; classifying the whole frame shrinks such a car to a few dozen
//! pixels. Locating first and classifying crops is what every comparable system does.
//!
//! - [`motion`]: a background model on a downscaled grey frame; what differs from it,
//!   cleaned up and grouped, is a proposal. Needs no weights.
//!
//! Built ahead of its wiring: `watch` still classifies whole frames or configured
//! regions; the motion locator is exercised by its own tests (issue 17 tracks the rest:
//! crops into batches, tracking, one decision per vehicle).

pub mod motion;

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
}
