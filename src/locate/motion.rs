//! Motion proposals: what moved against a learned background.
//!
//! Each frame is reduced to [`MotionConfig::width`] pixels across (block averages, so
//! sensor noise shrinks with the reduction), in colour: a red car on grey tarmac can
//! have the tarmac's brightness. A running-average background is kept per camera at
//! that size. Pixels where any channel differs from it by more than `threshold` are
//! moving; a closing (dilate, then erode) joins a vehicle's broken
//! outline, connected components group what remains, and each group's bounding box,
//! grown by `margin` and merged with boxes it touches, is a proposal in frame pixels.
//! Groups smaller than `min_area` or larger than `max_area` (fractions of the frame),
//! or flatter or taller than `max_aspect`, are dropped.
//!
//! A change over most of the frame at once (auto-exposure, lights switched on, a camera
//! going to night mode) is not a vehicle: when more than `global_change` of the pixels
//! differ, the background is seeded again from this frame and nothing is proposed.
//! Moving pixels update the background far more slowly than still ones, so a vehicle
//! does not become background while it crosses, but one that parks eventually does.

use super::Bounds;
use crate::pixels::{I420, Pixels};

/// `[locate.motion]`: how motion is found. Defaults suit 720p street cameras analysed
/// at a few frames a second.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotionConfig {
    /// Width of the reduced frame the background is kept at.
    pub width: u32,
    /// Levels (0-255) a pixel's colour must differ by, in some channel, to count as
    /// moving.
    pub threshold: u8,
    /// Weight of each new frame in the background where nothing moves.
    pub learn: f32,
    /// The same where something moves (slow: a parked car fades in over minutes).
    pub learn_moving: f32,
    /// Smallest and largest proposal, as fractions of the frame's area.
    pub min_area: f32,
    pub max_area: f32,
    /// Most width:height (or height:width) of a proposal.
    pub max_aspect: f32,
    /// Each box grows by this fraction of its size on every side (context for the
    /// classifier, and the distance at which neighbouring boxes merge).
    pub margin: f32,
    /// Share of moving pixels beyond which the whole scene changed (re-seed).
    pub global_change: f32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            width: 320,
            threshold: 25,
            learn: 0.05,
            learn_moving: 0.002,
            min_area: 0.002,
            max_area: 0.6,
            max_aspect: 5.0,
            margin: 0.1,
            global_change: 0.4,
        }
    }
}

impl MotionConfig {
    /// Ranges serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        let fraction = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("{name} must be between 0 and 1, found {v}")) }
        };
        if !(32..=1920).contains(&self.width) {
            return Err(format!("width must be 32 to 1920 pixels, found {}", self.width));
        }
        fraction("learn", self.learn)?;
        fraction("learn_moving", self.learn_moving)?;
        fraction("min_area", self.min_area)?;
        fraction("max_area", self.max_area)?;
        fraction("margin", self.margin)?;
        fraction("global_change", self.global_change)?;
        if self.min_area >= self.max_area {
            return Err(format!("min_area ({}) must be below max_area ({})", self.min_area, self.max_area));
        }
        if !(self.max_aspect.is_finite() && self.max_aspect >= 1.0) {
            return Err(format!("max_aspect must be at least 1, found {}", self.max_aspect));
        }
        Ok(())
    }
}

/// One camera's background and what it proposes, frame by frame.
pub struct MotionLocator {
    config: MotionConfig,
    /// Background, RGB levels of `w` x `h` pixels, empty until the first frame.
    background: Vec<f32>,
    w: usize,
    h: usize,
    /// Frame size the background was made for.
    frame: (u32, u32),
    /// Reused per frame: the reduced frame (RGB), moving mask, scratch for morphology
    /// and labelling.
    pixels: Vec<f32>,
    mask: Vec<bool>,
    scratch: Vec<bool>,
    labels: Vec<u32>,
}

/// What one frame showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Motion {
    /// The first frame (or a new frame size): the background was seeded.
    Seeded,
    /// Most of the scene changed at once: the background was seeded again.
    SceneChanged,
    /// Boxes around what moved, largest first (empty: nothing moved).
    Boxes(Vec<Bounds>),
}

impl MotionLocator {
    pub fn new(config: MotionConfig) -> MotionLocator {
        MotionLocator {
            config,
            background: Vec::new(),
            w: 0,
            h: 0,
            frame: (0, 0),
            pixels: Vec::new(),
            mask: Vec::new(),
            scratch: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Looks at one tightly packed RGB frame.
    pub fn observe(&mut self, rgb: &[u8], width: u32, height: u32) -> Motion {
        if width == 0 || height == 0 || rgb.len() < (width * height * 3) as usize {
            return Motion::Boxes(Vec::new());
        }
        self.reduce(rgb, width, height);
        self.compare(width, height)
    }

    /// Looks at one frame as the camera gave it: I420 frames are block-averaged in YUV
    /// and only the averages converted (the same colours, within rounding, as averaging
    /// the converted frame).
    pub fn observe_pixels(&mut self, pixels: &Pixels, width: u32, height: u32) -> Motion {
        match pixels {
            Pixels::Rgb(rgb) => self.observe(rgb, width, height),
            Pixels::I420 { data, matrix } => match I420::new(data, width, height, *matrix) {
                Ok(image) => {
                    self.reduce_i420(&image);
                    self.compare(width, height)
                }
                Err(_) => Motion::Boxes(Vec::new()),
            },
        }
    }

    /// Compares the reduced frame with the background.
    fn compare(&mut self, width: u32, height: u32) -> Motion {
        if self.frame != (width, height) || self.background.len() != self.pixels.len() {
            self.frame = (width, height);
            self.background.clone_from(&self.pixels);
            return Motion::Seeded;
        }
        let threshold = self.config.threshold as f32;
        let mut moving = 0usize;
        self.mask.clear();
        for (g, b) in self.pixels.chunks_exact(3).zip(self.background.chunks_exact(3)) {
            let m = (0..3).any(|c| (g[c] - b[c]).abs() > threshold);
            moving += m as usize;
            self.mask.push(m);
        }
        if moving as f32 > self.config.global_change * self.mask.len() as f32 {
            self.background.clone_from(&self.pixels);
            return Motion::SceneChanged;
        }
        self.learn();
        self.close();
        let boxes = self.components();
        Motion::Boxes(self.finish(boxes))
    }

    /// Block-averages `rgb` to the configured width (keeping the aspect).
    fn reduce(&mut self, rgb: &[u8], width: u32, height: u32) {
        let fw = width as usize;
        let row_sums = |yy: usize, x0: usize, x1: usize, sum: &mut [u32; 3]| {
            let row = &rgb[(yy * fw + x0) * 3..(yy * fw + x1) * 3];
            for px in row.chunks_exact(3).step_by(2) {
                sum[0] += px[0] as u32;
                sum[1] += px[1] as u32;
                sum[2] += px[2] as u32;
            }
        };
        self.reduce_with(width, height, row_sums, |average| average);
    }

    /// [`Self::reduce`] for an I420 frame: Y, U and V averaged over the same samples
    /// (each with its chroma sample), then converted.
    fn reduce_i420(&mut self, image: &I420<'_>) {
        let (fw, cw) = (image.width() as usize, image.chroma_size().0 as usize);
        let (yp, up, vp) = (image.y(), image.u(), image.v());
        let (m, o) = image.matrix().coefficients();
        let row_sums = |yy: usize, x0: usize, x1: usize, sum: &mut [u32; 3]| {
            let (row, crow) = (yy * fw, (yy / 2) * cw);
            for xx in (x0..x1).step_by(2) {
                sum[0] += yp[row + xx] as u32;
                sum[1] += up[crow + xx / 2] as u32;
                sum[2] += vp[crow + xx / 2] as u32;
            }
        };
        let to_rgb = |yuv: [f32; 3]| {
            [0, 1, 2].map(|c| (m[c][0] * yuv[0] + m[c][1] * yuv[1] + m[c][2] * yuv[2] + o[c]).clamp(0.0, 255.0))
        };
        self.reduce_with(image.width(), image.height(), row_sums, to_rgb);
    }

    /// The block averaging both formats share: for each block, `row_sums` adds every
    /// other pixel of every other row (enough for an average, a quarter of the reads),
    /// and `finish` turns the three averages into RGB.
    fn reduce_with(
        &mut self,
        width: u32,
        height: u32,
        row_sums: impl Fn(usize, usize, usize, &mut [u32; 3]),
        finish: impl Fn([f32; 3]) -> [f32; 3],
    ) {
        let w = (self.config.width.min(width).max(1)) as usize;
        let h = ((height as u64 * w as u64 / width as u64).max(1)) as usize;
        let (fw, fh) = (width as usize, height as usize);
        self.w = w;
        self.h = h;
        self.pixels.clear();
        self.pixels.resize(w * h * 3, 0.0);
        for y in 0..h {
            let (y0, y1) = (y * fh / h, ((y + 1) * fh / h).max(y * fh / h + 1));
            for x in 0..w {
                let (x0, x1) = (x * fw / w, ((x + 1) * fw / w).max(x * fw / w + 1));
                let mut sum = [0u32; 3];
                for yy in (y0..y1).step_by(2) {
                    row_sums(yy, x0, x1, &mut sum);
                }
                // Pixels summed: every other row and column of the block.
                let n = ((y1 - y0).div_ceil(2) * (x1 - x0).div_ceil(2)).max(1) as f32;
                let average = finish(sum.map(|s| s as f32 / n));
                let at = (y * w + x) * 3;
                self.pixels[at..at + 3].copy_from_slice(&average);
            }
        }
    }

    /// Background update: quick where still, slow where moving.
    fn learn(&mut self) {
        let (still, moving) = (self.config.learn, self.config.learn_moving);
        for ((b, g), m) in self.background.chunks_exact_mut(3).zip(self.pixels.chunks_exact(3)).zip(&self.mask) {
            let a = if *m { moving } else { still };
            for c in 0..3 {
                b[c] += a * (g[c] - b[c]);
            }
        }
    }

    /// Closing with a 3x3 square: dilate into `scratch`, erode back into `mask`.
    fn close(&mut self) {
        let (w, h) = (self.w, self.h);
        self.scratch.clear();
        self.scratch.resize(w * h, false);
        let at = |m: &[bool], x: isize, y: isize| -> Option<bool> {
            (x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h).then(|| m[y as usize * w + x as usize])
        };
        for y in 0..h as isize {
            for x in 0..w as isize {
                let any = (-1..=1).any(|dy| (-1..=1).any(|dx| at(&self.mask, x + dx, y + dy) == Some(true)));
                self.scratch[y as usize * w + x as usize] = any;
            }
        }
        for y in 0..h as isize {
            for x in 0..w as isize {
                // Outside the frame counts as set, so objects at the edge keep their size.
                let all = (-1..=1).all(|dy| (-1..=1).all(|dx| at(&self.scratch, x + dx, y + dy) != Some(false)));
                self.mask[y as usize * w + x as usize] = all;
            }
        }
    }

    /// Bounding boxes (in reduced pixels: x0, y0, x1, y1 exclusive) and pixel counts of
    /// the 8-connected groups of the mask.
    fn components(&mut self) -> Vec<([usize; 4], usize)> {
        let (w, h) = (self.w, self.h);
        self.labels.clear();
        self.labels.resize(w * h, 0);
        let mut out = Vec::new();
        let mut stack = Vec::new();
        for start in 0..w * h {
            if !self.mask[start] || self.labels[start] != 0 {
                continue;
            }
            let label = out.len() as u32 + 1;
            let mut bounds = [start % w, start / w, start % w + 1, start / w + 1];
            let mut count = 0;
            self.labels[start] = label;
            stack.push(start);
            while let Some(i) = stack.pop() {
                count += 1;
                let (x, y) = (i % w, i / w);
                bounds = [bounds[0].min(x), bounds[1].min(y), bounds[2].max(x + 1), bounds[3].max(y + 1)];
                for dy in -1isize..=1 {
                    for dx in -1isize..=1 {
                        let (nx, ny) = (x as isize + dx, y as isize + dy);
                        if nx < 0 || ny < 0 || nx as usize >= w || ny as usize >= h {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if self.mask[j] && self.labels[j] == 0 {
                            self.labels[j] = label;
                            stack.push(j);
                        }
                    }
                }
            }
            out.push((bounds, count));
        }
        out
    }

    /// Filters groups by size, grows, merges and clips their boxes, and maps them to
    /// frame pixels, largest first.
    fn finish(&self, groups: Vec<([usize; 4], usize)>) -> Vec<Bounds> {
        let c = &self.config;
        let total = (self.w * self.h) as f32;
        let min_pixels = c.min_area * total;
        let mut boxes: Vec<[f32; 4]> = groups
            .into_iter()
            .filter(|(_, n)| *n as f32 >= min_pixels)
            .map(|([x0, y0, x1, y1], _)| {
                let (bw, bh) = ((x1 - x0) as f32, (y1 - y0) as f32);
                let (mx, my) = (bw * c.margin, bh * c.margin);
                [x0 as f32 - mx, y0 as f32 - my, x1 as f32 + mx, y1 as f32 + my]
            })
            .collect();
        // Merge boxes that overlap once grown, until none do.
        let mut merged = true;
        while merged {
            merged = false;
            'outer: for i in 0..boxes.len() {
                for j in i + 1..boxes.len() {
                    let (a, b) = (boxes[i], boxes[j]);
                    if a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3] {
                        boxes[i] = [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])];
                        boxes.swap_remove(j);
                        merged = true;
                        break 'outer;
                    }
                }
            }
        }
        let (fw, fh) = self.frame;
        let (sx, sy) = (fw as f32 / self.w as f32, fh as f32 / self.h as f32);
        let mut out: Vec<Bounds> = boxes
            .into_iter()
            .filter_map(|[x0, y0, x1, y1]| {
                let x0 = (x0 * sx).clamp(0.0, fw as f32);
                let y0 = (y0 * sy).clamp(0.0, fh as f32);
                let x1 = (x1 * sx).clamp(0.0, fw as f32);
                let y1 = (y1 * sy).clamp(0.0, fh as f32);
                let (bw, bh) = (x1 - x0, y1 - y0);
                let area = bw * bh / (fw as f32 * fh as f32);
                let aspect = (bw / bh.max(1.0)).max(bh / bw.max(1.0));
                (bw >= 1.0 && bh >= 1.0 && area <= c.max_area && aspect <= c.max_aspect).then_some(Bounds {
                    x: x0 as u32,
                    y: y0 as u32,
                    width: bw as u32,
                    height: bh as u32,
                })
            })
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.area()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const W: u32 = 1280;
    const H: u32 = 720;

    fn street() -> Vec<u8> {
        crate::synthetic::street(W, H)
    }

    /// `base` with a vehicle (a coloured body, dark windows) in `b`.
    fn with_vehicle(base: &[u8], b: Bounds) -> Vec<u8> {
        let mut px = base.to_vec();
        for y in b.y..b.y + b.height {
            for x in b.x..b.x + b.width {
                let i = ((y * W + x) * 3) as usize;
                let window = y < b.y + b.height / 3 && x > b.x + b.width / 5 && x < b.x + 4 * b.width / 5;
                let c: [u8; 3] = if window { [30, 40, 50] } else { [200, 40, 40] };
                px[i..i + 3].copy_from_slice(&c);
            }
        }
        px
    }

    fn boxes(m: Motion) -> Vec<Bounds> {
        match m {
            Motion::Boxes(b) => b,
            other => panic!("expected boxes, got {other:?}"),
        }
    }

    #[test]
    fn a_vehicle_crossing_a_still_street_is_boxed() {
        let base = street();
        let mut locator = MotionLocator::new(MotionConfig::default());
        assert_eq!(locator.observe(&base, W, H), Motion::Seeded);
        let mut good = 0;
        let frames = 40;
        for i in 0..frames {
            // A car 20% of the frame wide, crossing left to right.
            let truth = Bounds { x: 20 + i * 25, y: 380, width: 256, height: 130 };
            let found = boxes(locator.observe(&with_vehicle(&base, truth), W, H));
            if found.first().is_some_and(|b| b.iou(&truth) >= 0.5) {
                good += 1;
            }
        }
        assert!(good * 10 >= frames * 9, "{good} of {frames} frames boxed the vehicle");
    }

    #[test]
    fn i420_frames_are_boxed_as_their_rgb_is() {
        use crate::pixels::{YuvMatrix, rgb_to_i420};
        let i420 = |rgb: &[u8]| Pixels::I420 {
            data: rgb_to_i420(rgb, W, H, YuvMatrix::BT709).into(),
            matrix: YuvMatrix::BT709,
        };
        let base = street();
        let (mut from_rgb, mut from_yuv) =
            (MotionLocator::new(MotionConfig::default()), MotionLocator::new(MotionConfig::default()));
        assert_eq!(from_rgb.observe(&base, W, H), Motion::Seeded);
        assert_eq!(from_yuv.observe_pixels(&i420(&base), W, H), Motion::Seeded);
        for i in 0..6 {
            let truth = Bounds { x: 100 + i * 120, y: 380, width: 256, height: 130 };
            let frame = with_vehicle(&base, truth);
            let (a, b) = (boxes(from_rgb.observe(&frame, W, H)), boxes(from_yuv.observe_pixels(&i420(&frame), W, H)));
            assert_eq!(a.len(), b.len(), "frame {i}: {a:?} against {b:?}");
            assert!(b[0].iou(&truth) >= 0.5 && b[0].iou(&a[0]) >= 0.9, "frame {i}: {a:?} against {b:?}");
        }
    }

    #[test]
    fn a_brightness_step_proposes_nothing() {
        let base = street();
        let mut locator = MotionLocator::new(MotionConfig::default());
        locator.observe(&base, W, H);
        let brighter: Vec<u8> = base.iter().map(|&v| v.saturating_add(60)).collect();
        assert_eq!(locator.observe(&brighter, W, H), Motion::SceneChanged);
        assert_eq!(boxes(locator.observe(&brighter, W, H)), vec![], "the new scene is the background");
    }

    #[test]
    fn sensor_noise_alone_proposes_nothing() {
        let base = street();
        let mut rng = StdRng::seed_from_u64(3);
        let mut locator = MotionLocator::new(MotionConfig::default());
        locator.observe(&base, W, H);
        for _ in 0..10 {
            let noisy: Vec<u8> =
                base.iter().map(|&v| (v as i32 + rng.random_range(-12..=12)).clamp(0, 255) as u8).collect();
            assert_eq!(boxes(locator.observe(&noisy, W, H)), vec![]);
        }
    }

    #[test]
    fn two_vehicles_apart_give_two_boxes() {
        let base = street();
        let mut locator = MotionLocator::new(MotionConfig::default());
        locator.observe(&base, W, H);
        let a = Bounds { x: 100, y: 400, width: 200, height: 110 };
        let b = Bounds { x: 800, y: 420, width: 260, height: 130 };
        let frame = with_vehicle(&with_vehicle(&base, a), b);
        let found = boxes(locator.observe(&frame, W, H));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].iou(&b) >= 0.5 && found[1].iou(&a) >= 0.5, "{found:?}");
    }
}
