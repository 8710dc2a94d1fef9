//! Boxes from a TorchScript detector the operator exports (YOLO-style).
//!
//! The contract (docs/models.md): the module takes a float RGB batch `[N, 3, S, S]`,
//! values 0-1, each frame letterboxed into the square (scaled to fit, centred, padded
//! with grey 114), and returns `[N, 4 + C, A]`: per anchor the box centre, width and
//! height in input pixels, then one score per class. That is the raw output the common
//! YOLO exporters write with `format=torchscript` (a tuple whose first element is that
//! tensor is accepted too). Carwatch keeps the classes named in `classes`, drops
//! anchors below `min_score`, maps boxes back through the letterbox into frame pixels
//! and removes duplicates with non-maximum suppression.
//!
//! The file is loaded and run once at start-up on a blank batch, so a missing file, a
//! file that is not TorchScript or a module with another output shape stops `check`
//! and `watch` (exit 2) with the file and the shape it found, never at the first frame.

use std::path::PathBuf;

use serde::Deserialize;
use tch::{Device, IValue, Kind, Tensor};

use super::Bounds;

/// `[detector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// The TorchScript file.
    pub file: PathBuf,
    /// Side of the square input, in pixels (what the model was exported for).
    #[serde(default = "default_input")]
    pub input: u32,
    /// Class indices kept (COCO: 2 car, 5 bus, 7 truck).
    #[serde(default = "default_classes")]
    pub classes: Vec<u32>,
    /// Least score of a kept box.
    #[serde(default = "default_min_score", deserialize_with = "crate::values::probability")]
    pub min_score: f32,
    /// Boxes overlapping a better one by more than this are duplicates.
    #[serde(default = "default_nms_iou", deserialize_with = "crate::values::probability")]
    pub nms_iou: f32,
}

fn default_input() -> u32 {
    640
}

fn default_classes() -> Vec<u32> {
    vec![2, 5, 7]
}

fn default_min_score() -> f32 {
    0.35
}

fn default_nms_iou() -> f32 {
    0.5
}

impl DetectorConfig {
    /// Ranges serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if !(32..=2048).contains(&self.input) || !self.input.is_multiple_of(32) {
            return Err(format!("input must be a multiple of 32 from 32 to 2048, found {}", self.input));
        }
        if self.classes.is_empty() {
            return Err("classes must name at least one class index".into());
        }
        Ok(())
    }
}

/// Why the detector cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("detector {}: no such file; set [detector] file, or use another `locate`", path.display())]
    Missing { path: PathBuf },
    #[error("detector {}: not a TorchScript module ({reason}); export it with format=torchscript", path.display())]
    NotTorchScript { path: PathBuf, reason: String },
    #[error(
        "detector {}: returned shape {found:?} for a [1, 3, {input}, {input}] input; expected [1, 4 + C, A] with C > {max_class} (the largest class in `classes`)",
        path.display()
    )]
    Shape { path: PathBuf, found: Vec<i64>, input: u32, max_class: u32 },
    #[error("detector {}: {context}: {source}", path.display())]
    Torch { path: PathBuf, context: &'static str, source: tch::TchError },
}

/// A box the detector found, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub bounds: Bounds,
    pub score: f32,
    pub class: u32,
}

/// How a frame was fitted into the square input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Letterbox {
    /// Fitting `width` x `height` into a `side` square.
    pub fn fit(width: u32, height: u32, side: u32) -> Letterbox {
        let scale = (side as f32 / width.max(1) as f32).min(side as f32 / height.max(1) as f32);
        let (w, h) = (width as f32 * scale, height as f32 * scale);
        Letterbox { scale, pad_x: ((side as f32 - w) / 2.0).floor(), pad_y: ((side as f32 - h) / 2.0).floor() }
    }

    /// An input-space box (centre, size) in frame pixels, clipped to the frame.
    pub fn to_frame(&self, cx: f32, cy: f32, w: f32, h: f32, width: u32, height: u32) -> Option<Bounds> {
        let x0 = ((cx - w / 2.0 - self.pad_x) / self.scale).clamp(0.0, width as f32);
        let y0 = ((cy - h / 2.0 - self.pad_y) / self.scale).clamp(0.0, height as f32);
        let x1 = ((cx + w / 2.0 - self.pad_x) / self.scale).clamp(0.0, width as f32);
        let y1 = ((cy + h / 2.0 - self.pad_y) / self.scale).clamp(0.0, height as f32);
        (x1 - x0 >= 1.0 && y1 - y0 >= 1.0).then_some(Bounds {
            x: x0 as u32,
            y: y0 as u32,
            width: (x1 - x0) as u32,
            height: (y1 - y0) as u32,
        })
    }
}

/// A loaded detector, owned by the inference worker.
pub struct Detector {
    module: tch::CModule,
    config: DetectorConfig,
    device: Device,
}

impl Detector {
    /// Loads `config.file` on `device` and runs it once on a blank batch to check the
    /// shape of what it returns.
    pub fn load(config: &DetectorConfig, device: Device) -> Result<Detector, DetectorError> {
        let path = config.file.clone();
        if !path.is_file() {
            return Err(DetectorError::Missing { path });
        }
        let mut module = tch::CModule::load_on_device(&path, device)
            .map_err(|e| DetectorError::NotTorchScript { path: path.clone(), reason: first_line(&e.to_string()) })?;
        module.set_eval();
        let detector = Detector { module, config: config.clone(), device };
        let side = config.input as i64;
        let blank = Tensor::zeros([1, 3, side, side], (Kind::Float, device));
        let out = detector.forward(&blank)?;
        detector.check_shape(&out.size(), 1)?;
        Ok(detector)
    }

    fn check_shape(&self, found: &[i64], n: i64) -> Result<(), DetectorError> {
        let max_class = self.config.classes.iter().copied().max().unwrap_or(0);
        let ok = found.len() == 3 && found[0] == n && found[1] > 4 + max_class as i64 && found[2] > 0;
        if ok {
            Ok(())
        } else {
            Err(DetectorError::Shape {
                path: self.config.file.clone(),
                found: found.to_vec(),
                input: self.config.input,
                max_class,
            })
        }
    }

    fn torch(&self, context: &'static str) -> impl FnOnce(tch::TchError) -> DetectorError + '_ {
        move |source| DetectorError::Torch { path: self.config.file.clone(), context, source }
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor, DetectorError> {
        let out = tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(input.shallow_clone())]))
            .map_err(self.torch("forward pass"))?;
        let tensor = match out {
            IValue::Tensor(t) => Some(t),
            IValue::Tuple(items) | IValue::GenericList(items) => items.into_iter().find_map(|i| match i {
                IValue::Tensor(t) => Some(t),
                _ => None,
            }),
            _ => None,
        };
        tensor.ok_or_else(|| DetectorError::Shape {
            path: self.config.file.clone(),
            found: vec![],
            input: self.config.input,
            max_class: self.config.classes.iter().copied().max().unwrap_or(0),
        })
    }

    /// Boxes in each of `frames` (tightly packed RGB, with their sizes), best first.
    pub fn detect(&self, frames: &[(&[u8], u32, u32)]) -> Result<Vec<Vec<Detection>>, DetectorError> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.config.input;
        let mut inputs = Vec::with_capacity(frames.len());
        let mut boxes = Vec::with_capacity(frames.len());
        for &(rgb, w, h) in frames {
            let lb = Letterbox::fit(w, h, side);
            inputs.push(letterbox(rgb, w, h, side, lb, self.device).map_err(self.torch("letterboxing a frame"))?);
            boxes.push(lb);
        }
        let batch = Tensor::f_stack(&inputs, 0).map_err(self.torch("stacking the batch"))?;
        let out = self.forward(&batch)?;
        self.check_shape(&out.size(), frames.len() as i64)?;
        let (c, a) = (out.size()[1] as usize, out.size()[2] as usize);
        let values: Vec<f32> = out
            .f_to_kind(Kind::Float)
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_view([-1]))
            .and_then(|t| Vec::<f32>::try_from(&t))
            .map_err(self.torch("reading the output"))?;
        Ok(frames
            .iter()
            .zip(boxes)
            .enumerate()
            .map(|(i, (&(_, w, h), lb))| {
                let found = decode(&values[i * c * a..(i + 1) * c * a], c, a, &self.config, lb, w, h);
                nms(found, self.config.nms_iou)
            })
            .collect())
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// One frame as a `[3, side, side]` float tensor on `device`: scaled by `lb`, centred,
/// padded with grey 114.
fn letterbox(rgb: &[u8], w: u32, h: u32, side: u32, lb: Letterbox, device: Device) -> Result<Tensor, tch::TchError> {
    let (nw, nh) = (((w as f32 * lb.scale).round() as i64).max(1), ((h as f32 * lb.scale).round() as i64).max(1));
    let image = Tensor::f_from_slice(&rgb[..(w * h * 3) as usize])?
        .f_view([h as i64, w as i64, 3])?
        .f_to_device(device)?
        .f_permute([2, 0, 1])?
        .f_unsqueeze(0)?
        .f_to_kind(Kind::Float)?;
    let scaled = image.f_upsample_bilinear2d([nh, nw], false, None, None)?.f_div_scalar(255.0)?;
    let (left, top) = (lb.pad_x as i64, lb.pad_y as i64);
    let (right, bottom) = ((side as i64 - nw - left).max(0), (side as i64 - nh - top).max(0));
    let padded = scaled.f_constant_pad_nd([left, right, top, bottom])?;
    // constant_pad_nd pads with 0; the grey goes where the frame is not.
    let mask = Tensor::f_ones([1, 1, nh, nw], (Kind::Float, device))?.f_constant_pad_nd([left, right, top, bottom])?;
    let grey = mask.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(114.0 / 255.0)?;
    padded.f_add(&grey)?.f_squeeze_dim(0)?.f_narrow(1, 0, side as i64)?.f_narrow(2, 0, side as i64)
}

/// Anchors of one frame's output (`c` rows of `a` values) above `min_score` in a kept
/// class, in frame pixels.
pub fn decode(
    out: &[f32],
    c: usize,
    a: usize,
    config: &DetectorConfig,
    lb: Letterbox,
    width: u32,
    height: u32,
) -> Vec<Detection> {
    let mut found = Vec::new();
    for anchor in 0..a {
        let at = |row: usize| out[row * a + anchor];
        let best = config
            .classes
            .iter()
            .filter(|&&k| 4 + (k as usize) < c)
            .map(|&k| (k, at(4 + k as usize)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        let Some((class, score)) = best else { continue };
        // NaN scores are not kept either.
        if score.is_nan() || score < config.min_score {
            continue;
        }
        if let Some(bounds) = lb.to_frame(at(0), at(1), at(2), at(3), width, height) {
            found.push(Detection { bounds, score, class });
        }
    }
    found
}

/// Greedy non-maximum suppression, class-agnostic (a car and a truck box on one vehicle
/// are one vehicle): best score first, dropping boxes that overlap a kept one by more
/// than `iou`.
pub fn nms(mut found: Vec<Detection>, iou: f32) -> Vec<Detection> {
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(found.len());
    for d in found {
        if kept.iter().all(|k| k.bounds.iou(&d.bounds) <= iou) {
            kept.push(d);
        }
    }
    kept
}

/// Whether the configured file loads and answers in the documented shape (for
/// `carwatch check`).
pub fn check_file(config: &DetectorConfig) -> Result<(), DetectorError> {
    Detector::load(config, Device::Cpu).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DetectorConfig {
        toml::from_str("file = \"d.pt\"\nclasses = [0]\nmin_score = 0.5\nnms_iou = 0.5").unwrap()
    }

    #[test]
    fn letterboxed_boxes_map_back_to_frame_pixels() {
        // 1280x720 into 640: scale 0.5, 140 rows of padding above and below.
        let lb = Letterbox::fit(1280, 720, 640);
        assert_eq!(lb, Letterbox { scale: 0.5, pad_x: 0.0, pad_y: 140.0 });
        let b = lb.to_frame(100.0, 240.0, 100.0, 50.0, 1280, 720).unwrap();
        assert_eq!(b, Bounds { x: 100, y: 150, width: 200, height: 100 });
        // Wholly in the padding: nothing.
        assert_eq!(lb.to_frame(320.0, 20.0, 40.0, 20.0, 1280, 720), None);
    }

    #[test]
    fn decoding_keeps_chosen_classes_above_the_score_and_nms_removes_duplicates() {
        let mut c = config();
        c.classes = vec![1];
        // Rows: cx, cy, w, h, class 0, class 1; four anchors.
        let out = [
            [100.0, 104.0, 400.0, 100.0], // cx
            [100.0, 100.0, 400.0, 100.0], // cy
            [50.0, 50.0, 60.0, 50.0],     // w
            [50.0, 50.0, 60.0, 50.0],     // h
            [0.9, 0.9, 0.9, 0.1],         // class 0: not kept
            [0.8, 0.7, 0.6, 0.3],         // class 1: the last anchor is below min_score
        ]
        .concat();
        let lb = Letterbox { scale: 1.0, pad_x: 0.0, pad_y: 0.0 };
        let found = decode(&out, 6, 4, &c, lb, 640, 640);
        assert_eq!(found.len(), 3);
        let kept = nms(found, c.nms_iou);
        assert_eq!(kept.len(), 2, "the second anchor duplicates the first");
        assert_eq!(kept[0].bounds, Bounds { x: 75, y: 75, width: 50, height: 50 });
        assert_eq!((kept[0].score, kept[1].score), (0.8, 0.6));
    }

    #[test]
    fn a_missing_or_foreign_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.file = dir.path().join("none.pt");
        let e = Detector::load(&c, Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("none.pt") && e.contains("no such file"), "{e}");
        c.file = dir.path().join("text.pt");
        std::fs::write(&c.file, "not a model").unwrap();
        let e = Detector::load(&c, Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("text.pt") && e.contains("not a TorchScript module"), "{e}");
    }
}
