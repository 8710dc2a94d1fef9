//! The int8 backbone: made by PyTorch, run by libtorch.
//!
//! On CPUs with VNNI, int8 convolutions do about twice the work of bf16 per cycle. tch's
//! generated API has no quantized convolutions, but libtorch runs a quantized TorchScript
//! module, so quantization happens in Python (`models/quantize_int8.py`: FX post-training
//! static quantization, x86 backend) and carwatch loads the result with `tch::CModule`.
//! carwatch prepares the calibration batch itself, so the calibration sees exactly the
//! preprocessing inference will. An int8 backbone is used automatically only where the
//! cascade's answers with it agree with fp32 on [`MIN_AGREEMENT`] of the validation
//! photos (measured by `train`, recorded in `cascade.toml`).

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

use super::backbone::VggSpec;
use super::weights::write_atomic;
use super::{Level, ModelError, Prediction};

/// Least share of validation photos on which int8 must give fp32's answer.
pub const MIN_AGREEMENT: f64 = 0.98;

/// Where the int8 backbone's first convolution runs. All-int8 is about a third faster on
/// the CPU (an fp32 first layer works on 3-channel NCHW pixels and its 64-channel output
/// must then be quantized); fp32 there is the fallback when all-int8 disagrees with fp32
/// too often, since raw pixels are what int8 represents worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstConv {
    Int8,
    Fp32,
}

impl FirstConv {
    pub fn name(self) -> &'static str {
        match self {
            FirstConv::Int8 => "int8",
            FirstConv::Fp32 => "fp32",
        }
    }
}

/// The Python with torch: `$CARWATCH_PYTHON`, the project venv, or `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CARWATCH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(".venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// `quantize_int8.py`: `$CARWATCH_SCRIPTS`, `models/` of a checkout, or where
/// `make install` puts it.
pub fn script() -> Result<PathBuf, ModelError> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("CARWATCH_SCRIPTS") {
        candidates.push(PathBuf::from(d).join("quantize_int8.py"));
    }
    candidates.push(PathBuf::from("models/quantize_int8.py"));
    if let Ok(exe) = std::env::current_exe()
        && let Some(prefix) = exe.parent().and_then(Path::parent)
    {
        candidates.push(prefix.join("share/carwatch/quantize_int8.py"));
    }
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        ModelError::Quantize(format!("quantize_int8.py not found (looked in {candidates:?}); set CARWATCH_SCRIPTS"))
    })
}

/// Quantizes the backbone in `weights` (widths `spec`) to `out`, calibrated on
/// `calibration` (`[N, 3, 224, 224]`, preprocessed, fp32, CPU).
pub fn quantize(
    weights: &Path,
    spec: VggSpec,
    calibration: &Tensor,
    first: FirstConv,
    out: &Path,
) -> Result<(), ModelError> {
    let script = script()?;
    let scratch = tempfile::Builder::new()
        .prefix("carwatch-int8-")
        .tempdir()
        .map_err(|source| ModelError::Io { path: std::env::temp_dir(), source })?;
    let calib = scratch.path().join("calibration.safetensors");
    write_atomic(&calib, &[("images".to_string(), calibration.shallow_clone())])?;
    let widths: Vec<String> = spec.widths.iter().map(|w| w.to_string()).collect();
    let python = python();
    let output = Command::new(&python)
        .arg(&script)
        .arg("--weights")
        .arg(weights)
        .arg("--widths")
        .arg(widths.join(","))
        .arg("--calibration")
        .arg(&calib)
        .arg("--first-conv")
        .arg(first.name())
        .arg("--out")
        .arg(out)
        .output()
        .map_err(|e| {
            ModelError::Quantize(format!(
                "cannot run {}: {e} (set CARWATCH_PYTHON to a Python with torch)",
                python.display()
            ))
        })?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(ModelError::Quantize(format!(
            "{} {} failed:\n{}",
            python.display(),
            script.display(),
            tail.join("\n")
        )));
    }
    Ok(())
}

/// Share of images on which two runs of the cascade chose the same view, make and model.
pub fn agreement(a: &[Prediction], b: &[Prediction]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let same = a.iter().zip(b).filter(|(x, y)| Level::ALL.iter().all(|&l| x.label(l) == y.label(l))).count();
    same as f64 / a.len() as f64
}

/// Fp32's first two answers closer than this count as a tie: any rounding may pick
/// either, and neither is an answer an alert should rest on.
pub const TIE_MARGIN: f32 = 0.1;

/// How a cascade run at reduced precision compares with the reference run, photo by
/// photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    pub photos: usize,
    /// Same view, make and model.
    pub same: usize,
    /// Different, where the reference was itself torn: at the first level where the two
    /// differ, the other's label was the reference's runner-up within [`TIE_MARGIN`].
    pub near_ties: usize,
}

impl Comparison {
    /// Share of the photos with the same answer.
    pub fn agreement(&self) -> f64 {
        if self.photos == 0 { 0.0 } else { self.same as f64 / self.photos as f64 }
    }

    /// Share of the photos the reference decided (not near ties) with the same answer:
    /// a measure of precision lost that a handful of coin flips in a small held-out
    /// set does not swing.
    pub fn agreement_beyond_ties(&self) -> f64 {
        let decided = self.photos - self.near_ties;
        if decided == 0 { 0.0 } else { self.same as f64 / decided as f64 }
    }
}

/// Compares `other` with `reference`, photo by photo.
pub fn compare(reference: &[Prediction], other: &[Prediction]) -> Comparison {
    let mut c = Comparison { photos: reference.len().min(other.len()), same: 0, near_ties: 0 };
    for (r, o) in reference.iter().zip(other) {
        let Some(level) = Level::ALL.iter().copied().find(|&l| r.label(l) != o.label(l)) else {
            c.same += 1;
            continue;
        };
        let Some(choice) = r.path.get(level.index()) else { continue };
        let runner_up = choice.top.iter().find(|(label, _)| label.as_str() == o.label(level).as_str());
        if runner_up.is_some_and(|(_, p)| choice.p - p < TIE_MARGIN) {
            c.near_ties += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cascade::testing::prediction;

    /// A prediction of `(view, make, model)` whose reference head at `level` gave its
    /// label `p` and `runner_up` `q`.
    fn torn(leaf: (&str, &str, &str), level: Level, p: f32, runner_up: (&str, f32)) -> Prediction {
        let mut x = prediction(&[(leaf, 1.0)]);
        let choice = &mut x.path[level.index()];
        choice.p = p;
        choice.top = vec![(choice.label.to_string(), p), (runner_up.0.to_string(), runner_up.1)];
        x
    }

    #[test]
    fn a_flip_between_near_equal_answers_is_a_tie_and_a_decided_one_is_not() {
        let reference = vec![
            torn(("front", "volvo", "c30"), Level::Model, 0.449, ("xc90", 0.448)),
            torn(("front", "audi", "tt"), Level::View, 0.494, ("rear", 0.461)),
            torn(("front", "bmw", "x5"), Level::Make, 0.9, ("audi", 0.05)),
            prediction(&[(("rear", "bmw", "i3"), 1.0)]),
        ];
        let other = vec![
            prediction(&[(("front", "volvo", "xc90"), 1.0)]), // the tie went the other way
            prediction(&[(("rear", "audi", "tt"), 1.0)]),     // so did this one
            prediction(&[(("front", "audi", "x5"), 1.0)]),    // a decided answer changed
            prediction(&[(("rear", "bmw", "i3"), 1.0)]),
        ];
        let c = compare(&reference, &other);
        assert_eq!(c, Comparison { photos: 4, same: 1, near_ties: 2 });
        assert_eq!(c.agreement(), 0.25);
        assert_eq!(c.agreement_beyond_ties(), 0.5);
        assert_eq!(compare(&reference, &reference).agreement_beyond_ties(), 1.0);
    }
}
