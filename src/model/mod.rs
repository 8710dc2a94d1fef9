//! Recognition: pixels in, view/make/model probabilities out.
//!
//! - [`preprocess`] turns RGB images (or regions of camera frames) into one normalised
//!   batch tensor on the model's device: the only place that knows ImageNet's mean/std.
//! - [`backbone`] is VGG-19's frozen convolutional part: batch -> 512x7x7 features.
//! - [`cascade`] is the tree of small heads read from `cascade.toml`: features ->
//!   [`Prediction`] (most likely path plus marginals over every branch).
//! - [`labels`] are what the cascade answers in: levels and leaves.
//! - [`weights`] reads safetensors files with every name and shape checked.
//! - [`feed`] is how the inference worker gets batches to the device: on CUDA through
//!   pinned memory on a side stream ([`cuda`]), overlapping the previous batch.
//!
//! [`Recognizer`] ties them together; it is what `classify`, `train` and the inference
//! worker hold. It owns tch tensors, which are `Send` but not `Sync`: one thread owns it.

pub mod backbone;
pub mod cascade;
pub mod cuda;
pub mod embedding;
pub mod feed;
pub mod int8;
pub mod labels;
pub mod manifest;
pub mod preprocess;
pub mod sizing;
pub mod weights;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

pub use backbone::{Backbone, VggSpec};
pub use cascade::{Average, Cascade, Choice, Prediction};
pub use labels::{Label, Leaf, Level};
pub use manifest::Manifest;
pub use preprocess::{Crop, Picture, RgbImage};

/// What went wrong loading or running the model, with the file and tensor it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: tensor `{tensor}` is missing; is this the right file?", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", path.display())]
    WrongShape { path: PathBuf, tensor: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("device: {0}")]
    Device(String),
    #[error("int8 quantization: {0}")]
    Quantize(String),
    #[error("{context}: {source}")]
    Torch { context: String, source: tch::TchError },
}

impl ModelError {
    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> ModelError {
        let context = context.into();
        move |source| ModelError::Torch { context, source }
    }
}

/// Where the model runs, as the operator asked for it (`model.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device `{s}`: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> Self {
        match d {
            Device::Cuda(n) => DeviceChoice::Cuda(n),
            _ => DeviceChoice::Cpu,
        }
    }
}

impl DeviceChoice {
    /// The tch device to use. Asking for a CUDA device that is not there is an error
    /// rather than a silent fall-back: the operator said `cuda` for a reason.
    pub fn resolve(self) -> Result<Device, ModelError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(ModelError::Device(format!(
                        "cuda:{n} was asked for but libtorch sees {count} CUDA device(s); \
                         check the driver (nvidia-smi) and that libtorch_cuda.so is found, or set model.device = \"auto\""
                    )))
                }
            }
        }
    }
}

/// Numeric precision of the backbone. Heads always run in fp32: they are small and
/// their softmax is where rounding would show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    /// Quantized TorchScript backbone on CPU (see [`int8`]); input and output fp32.
    Int8,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
            Precision::Int8 => Kind::Float,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision the operator asked for (`model.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    /// The fastest the device supports: fp16 on CUDA, bf16 on CPUs with native bf16
    /// arithmetic (AVX-512 BF16 or AMX), else fp32.
    #[default]
    Auto,
    Exactly(Precision),
}

impl FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            "fp32" => Ok(PrecisionChoice::Exactly(Precision::Fp32)),
            "bf16" => Ok(PrecisionChoice::Exactly(Precision::Bf16)),
            "fp16" => Ok(PrecisionChoice::Exactly(Precision::Fp16)),
            "int8" => Ok(PrecisionChoice::Exactly(Precision::Int8)),
            _ => Err(format!("unknown precision `{s}`: expected auto, fp32, bf16, fp16 or int8")),
        }
    }
}

impl PrecisionChoice {
    /// The precision to run with on `device`.
    pub fn resolve(self, device: Device) -> Result<Precision, ModelError> {
        match (self, device) {
            (PrecisionChoice::Auto, Device::Cuda(_)) => Ok(Precision::Fp16),
            (PrecisionChoice::Auto, _) if cpu_has_native_bf16() => Ok(Precision::Bf16),
            (PrecisionChoice::Auto, _) => Ok(Precision::Fp32),
            (PrecisionChoice::Exactly(Precision::Fp16), Device::Cpu) => {
                Err(ModelError::Device("precision fp16 needs a CUDA device; on CPU use fp32 or bf16 (or auto)".into()))
            }
            (PrecisionChoice::Exactly(Precision::Int8), Device::Cuda(_)) => Err(ModelError::Device(
                "precision int8 runs on the CPU only; on CUDA use fp16, bf16 or fp32 (or auto)".into(),
            )),
            (PrecisionChoice::Exactly(p), _) => Ok(p),
        }
    }
}

/// Whether this CPU does bf16 arithmetic natively; without it libtorch emulates bf16 and
/// it is slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Every CPU with AMX also has AVX-512 BF16 (AMX detection is not stable in Rust).
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
deserialize_from_str!(DeviceChoice);
deserialize_from_str!(PrecisionChoice);

/// Where and how the model runs, resolved from the operator's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    pub precision: Precision,
}

impl Placement {
    pub fn resolve(device: DeviceChoice, precision: PrecisionChoice) -> Result<Placement, ModelError> {
        let device = device.resolve()?;
        let precision = precision.resolve(device)?;
        if device.is_cuda() {
            // cuDNN picks the fastest convolution algorithm for our fixed input shapes.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(Placement { device, precision })
    }

    pub fn describe(&self) -> String {
        let device = match self.device {
            Device::Cuda(n) => format!("cuda:{n}"),
            other => format!("{other:?}").to_lowercase(),
        };
        format!("{device}/{}", self.precision)
    }
}

/// Backbone and cascade together: images in, predictions out.
pub struct Recognizer {
    pub backbone: Backbone,
    pub cascade: Cascade,
}

impl Recognizer {
    /// Loads the cascade manifest in `models_dir` and the backbone it names, in the
    /// placement's precision (int8: the quantized backbone the manifest names).
    pub fn load(models_dir: &Path, placement: Placement) -> Result<Recognizer, ModelError> {
        let manifest = Manifest::load(models_dir)?;
        let backbone = match placement.precision {
            Precision::Int8 => {
                let path = manifest.int8_path().ok_or_else(|| ModelError::Manifest {
                    path: models_dir.join(manifest::MANIFEST_FILE),
                    reason: "precision int8 asked for, but these models have no int8 backbone (carwatch train --int8)"
                        .into(),
                })?;
                Backbone::load_int8(&path, manifest.backbone.spec())?
            }
            _ => Backbone::load(&manifest.backbone_path(), Some(manifest.backbone.spec()), placement)?,
        };
        let cascade = Cascade::load(&manifest, backbone.spec().feature_len(), placement)?;
        Ok(Recognizer { backbone, cascade })
    }

    /// Like [`Recognizer::load`] with the operator's choices: on the CPU, `auto` picks the
    /// int8 backbone when the models have one that agreed with fp32 on at least
    /// [`int8::MIN_AGREEMENT`] of the validation photos. Says what runs in the log.
    pub fn load_choosing(
        models_dir: &Path,
        device: DeviceChoice,
        precision: PrecisionChoice,
    ) -> Result<Recognizer, ModelError> {
        let device = device.resolve()?;
        let manifest = Manifest::load(models_dir)?;
        let int8 = match (precision, device, manifest.backbone.int8_agreement) {
            (PrecisionChoice::Auto, Device::Cpu, Some(a))
                if manifest.int8_path().is_some() && a >= int8::MIN_AGREEMENT =>
            {
                Some(a)
            }
            _ => None,
        };
        let placement = match int8 {
            Some(_) => Placement { device, precision: Precision::Int8 },
            None => Placement::resolve(DeviceChoice::from(device), precision)?,
        };
        match int8 {
            Some(a) => tracing::info!("precision int8 (agreed with fp32 on {:.1}% of validation photos)", a * 100.0),
            None => tracing::info!("precision {}", placement.precision),
        }
        Recognizer::load(models_dir, placement)
    }

    /// Classifies each (image, crop) pair. The backbone runs once for the whole batch.
    pub fn classify(&self, images: &[(Picture<'_>, Crop)]) -> Result<Vec<Prediction>, ModelError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let batch = preprocess::batch(images, self.backbone.placement())?;
        let features = self.backbone.features(&batch)?;
        with_embeddings(self.cascade.run(&features)?, &features)
    }

    /// Like [`Recognizer::classify`], through `feeder`: the path camera frames take in
    /// `watch` (pinned side-stream uploads and GPU preprocessing on CUDA).
    pub fn classify_fed(
        &self,
        feeder: &mut feed::Feeder,
        images: &[(Picture<'_>, Crop)],
    ) -> Result<Vec<Prediction>, ModelError> {
        let staged = feeder.stage(images)?;
        let features = self.backbone.features(&feeder.input(staged)?)?;
        with_embeddings(self.cascade.run(&features)?, &features)
    }

    /// Backbone features of already-preprocessed input, flattened to fp32 rows: what
    /// the heads read and what `train` caches.
    pub fn flat_features(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        let f = self.backbone.features(batch)?;
        cascade::flatten(&f)
    }
}

/// `predictions` with the embedding of their image from `features` (unchanged when
/// the features are already flat).
pub(crate) fn with_embeddings(
    mut predictions: Vec<Prediction>,
    features: &Tensor,
) -> Result<Vec<Prediction>, ModelError> {
    for (p, e) in predictions.iter_mut().zip(embedding::Embedding::of_features(features)?) {
        p.embedding = Some(e);
    }
    Ok(predictions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse() {
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn fp16_on_cpu_is_refused_and_auto_never_picks_it() {
        assert!(PrecisionChoice::Exactly(Precision::Fp16).resolve(Device::Cpu).is_err());
        let auto = PrecisionChoice::Auto.resolve(Device::Cpu).unwrap();
        assert_ne!(auto, Precision::Fp16);
        assert_eq!(PrecisionChoice::Auto.resolve(Device::Cuda(0)).unwrap(), Precision::Fp16);
    }

    #[test]
    fn missing_cuda_device_is_an_error_not_a_fallback() {
        let n = tch::Cuda::device_count() as usize;
        let err = DeviceChoice::Cuda(n).resolve().unwrap_err();
        assert!(err.to_string().contains(&format!("cuda:{n}")), "{err}");
    }
}
