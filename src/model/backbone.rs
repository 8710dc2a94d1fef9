//! VGG-19's convolutional layers: a 224x224 RGB batch in, 512x7x7 features out.
//!
//! tch's `vision::vgg` includes the classifier and has no features-only builder, so the
//! layers are listed here with torchvision's `features.N` indices. Weights come from a
//! safetensors file holding either `vgg19().features.state_dict()` (names `N.weight`)
//! or the whole model's state dict (`features.N.weight`, classifier ignored).
//!
//! Two forward paths behind one [`Backbone::features`]:
//! - CPU: `conv2d` + in-place ReLU, NCHW for fp32 and channels-last for bf16 (oneDNN's
//!   bf16 kernels prefer it).
//! - CUDA: channels-last tensors and cuDNN's fused convolution+bias+ReLU
//!   (`cudnn_convolution_relu`), 1.7x plain `conv2d`+`relu_` on an H100. tch has no
//!   memory-format call; permuting to NHWC, making that contiguous and permuting back
//!   gives a channels-last tensor, and convolutions keep that layout.
//!
//! Tests use a narrower VGG (same layers, fewer channels): [`VggSpec`] carries the
//! widths, and the manifest records them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::weights::WeightFile;
use super::{ModelError, Placement, Precision};

/// Convolutions per block in VGG-19 (configuration "E"); a max-pool ends each block.
const CONVS_PER_BLOCK: [usize; 5] = [2, 2, 4, 4, 4];

/// Side of the feature map for a 224x224 input: five 2x2 pools.
pub const FEATURE_SIDE: i64 = 7;

/// Channel widths of VGG-19's five blocks. The real network is [`VggSpec::VGG19`]; tests
/// use narrower ones through the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VggSpec {
    pub widths: [i64; 5],
}

/// One convolution of the spec, with its torchvision index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    pub index: usize,
    pub c_in: i64,
    pub c_out: i64,
    /// A 2x2 max-pool follows this convolution's ReLU.
    pub pool_after: bool,
}

impl VggSpec {
    pub const VGG19: VggSpec = VggSpec { widths: [64, 128, 256, 512, 512] };

    /// The 16 convolutions with the indices they have in torchvision's `features`
    /// (each conv is followed by a ReLU, each block by a max-pool, all of which take an
    /// index too).
    pub fn convs(&self) -> Vec<ConvLayer> {
        let mut layers = Vec::with_capacity(16);
        let mut index = 0;
        let mut c_in = 3;
        for (block, &n) in CONVS_PER_BLOCK.iter().enumerate() {
            let c_out = self.widths[block];
            for i in 0..n {
                layers.push(ConvLayer { index, c_in, c_out, pool_after: i + 1 == n });
                index += 2; // conv, relu
                c_in = c_out;
            }
            index += 1; // max-pool
        }
        layers
    }

    /// Length of the flattened feature vector the heads read.
    pub fn feature_len(&self) -> i64 {
        self.widths[4] * FEATURE_SIDE * FEATURE_SIDE
    }

    /// Multiply-accumulates x2 for one 224x224 image: what benchmarks divide by.
    pub fn flops_per_image(&self) -> f64 {
        let mut side = 224.0_f64;
        let mut flops = 0.0;
        for conv in self.convs() {
            flops += 2.0 * 9.0 * conv.c_in as f64 * conv.c_out as f64 * side * side;
            if conv.pool_after {
                side /= 2.0;
            }
        }
        flops
    }

    /// Reads the widths from a weight file's first convolution of each block, for
    /// `train`, which is given a file and must record what it holds.
    pub fn infer(file: &WeightFile) -> Result<VggSpec, ModelError> {
        let prefix = name_prefix(file)?;
        // The first convolution of each block: the very first, and each after a pool.
        let convs = VggSpec::VGG19.convs();
        let firsts: Vec<ConvLayer> =
            convs.iter().enumerate().filter(|(i, _)| *i == 0 || convs[i - 1].pool_after).map(|(_, c)| *c).collect();
        let mut widths = [0; 5];
        for (block, conv) in firsts.iter().enumerate() {
            let name = format!("{prefix}{}.weight", conv.index);
            widths[block] = *file.shape(&name)?.first().ok_or_else(|| ModelError::Corrupt {
                path: file.path().to_path_buf(),
                reason: format!("tensor `{name}` has no dimensions"),
            })?;
        }
        Ok(VggSpec { widths })
    }

    /// Freshly initialised weights in torchvision's names and initialisation (Kaiming
    /// normal, fan-out, zero bias): for tests, benchmarks and the synthetic demo model
    /// when no ImageNet weights are installed. Features from it are random projections,
    /// not ImageNet features.
    pub fn random_state_dict(&self, seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        let mut out = Vec::new();
        for conv in self.convs() {
            let std = (2.0 / (conv.c_out as f64 * 9.0)).sqrt();
            let w = Tensor::randn([conv.c_out, conv.c_in, 3, 3], (Kind::Float, Device::Cpu)) * std;
            out.push((format!("features.{}.weight", conv.index), w));
            out.push((
                format!("features.{}.bias", conv.index),
                Tensor::zeros([conv.c_out], (Kind::Float, Device::Cpu)),
            ));
        }
        out
    }
}

/// `features.` for a whole-model state dict, empty for a features-only one.
fn name_prefix(file: &WeightFile) -> Result<&'static str, ModelError> {
    if file.contains("features.0.weight") {
        Ok("features.")
    } else if file.contains("0.weight") {
        Ok("")
    } else {
        Err(ModelError::MissingTensor { path: file.path().to_path_buf(), tensor: "features.0.weight".into() })
    }
}

/// How the layers are run.
enum Form {
    /// tch operations on our own weight tensors.
    Native,
    /// A quantized TorchScript module (int8 on CPU).
    Scripted(tch::CModule),
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
    pool_after: bool,
}

/// The frozen convolutional backbone, on one device, in one precision.
pub struct Backbone {
    form: Form,
    convs: Vec<Conv>,
    spec: VggSpec,
    placement: Placement,
    path: PathBuf,
    channels_last: bool,
    fused: bool,
}

impl Backbone {
    /// Loads the weights at `path`. With `spec` given, every tensor must have exactly the
    /// shape it implies; without, the widths are read from the file first.
    pub fn load(path: &Path, spec: Option<VggSpec>, placement: Placement) -> Result<Backbone, ModelError> {
        let file = WeightFile::open(path)?;
        let prefix = name_prefix(&file)?;
        let spec = match spec {
            Some(s) => s,
            None => VggSpec::infer(&file)?,
        };
        let kind = placement.precision.kind();
        let cuda = placement.device.is_cuda();
        let channels_last = cuda || placement.precision == Precision::Bf16;
        let mut convs = Vec::with_capacity(16);
        for layer in spec.convs() {
            let w = file.tensor(
                &format!("{prefix}{}.weight", layer.index),
                &[layer.c_out, layer.c_in, 3, 3],
                kind,
                placement.device,
            )?;
            let bias = file.tensor(&format!("{prefix}{}.bias", layer.index), &[layer.c_out], kind, placement.device)?;
            let weight = if channels_last {
                to_channels_last(&w).map_err(ModelError::torch("converting weights to channels-last"))?
            } else {
                w
            };
            convs.push(Conv { weight, bias, pool_after: layer.pool_after });
        }
        Ok(Backbone {
            form: Form::Native,
            convs,
            spec,
            placement,
            path: path.to_path_buf(),
            channels_last,
            fused: cuda,
        })
    }

    /// Loads an int8 backbone saved as TorchScript by `models/quantize_int8.py`. libtorch's
    /// quantized convolutions are not in tch's generated API, but a scripted module runs
    /// them. CPU only.
    pub fn load_int8(path: &Path, spec: VggSpec) -> Result<Backbone, ModelError> {
        if !path.exists() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut module = tch::CModule::load_on_device(path, Device::Cpu).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not a loadable TorchScript module: {e}"),
        })?;
        module.set_eval();
        let placement = Placement { device: Device::Cpu, precision: Precision::Int8 };
        let b = Backbone {
            form: Form::Scripted(module),
            convs: Vec::new(),
            spec,
            placement,
            path: path.to_path_buf(),
            channels_last: false,
            fused: false,
        };
        // The module must give the spec's feature shape.
        let probe = b.features(&Tensor::zeros([1, 3, 224, 224], (Kind::Float, Device::Cpu)))?;
        let expected = vec![1, spec.widths[4], FEATURE_SIDE, FEATURE_SIDE];
        if probe.size() != expected {
            return Err(ModelError::WrongShape {
                path: path.to_path_buf(),
                tensor: "output".into(),
                expected,
                found: probe.size(),
            });
        }
        Ok(b)
    }

    /// Uses cuDNN's fused convolution+bias+ReLU (CUDA only; on by default there). Off
    /// gives the plain conv2d+relu path, which tests compare against.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused && self.placement.device.is_cuda();
    }

    pub fn spec(&self) -> VggSpec {
        self.spec
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Features of a preprocessed batch `[N, 3, H, W]` (see [`super::preprocess`]):
    /// `[N, C, H/32, W/32]` in the backbone's precision, on its device.
    pub fn features(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| self.forward(batch)).map_err(ModelError::torch("backbone forward pass"))
    }

    fn forward(&self, batch: &Tensor) -> Result<Tensor, tch::TchError> {
        if let Form::Scripted(module) = &self.form {
            let x = batch.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
            return module.forward_ts(&[x]);
        }
        let kind = self.placement.precision.kind();
        let mut x = batch.f_to_device(self.placement.device)?.f_to_kind(kind)?;
        if self.channels_last {
            x = to_channels_last(&x)?;
        }
        for conv in &self.convs {
            x = if self.fused {
                x.f_cudnn_convolution_relu(&conv.weight, Some(&conv.bias), [1, 1], [1, 1], [1, 1], 1)?
            } else {
                let mut y = x.f_conv2d(&conv.weight, Some(&conv.bias), [1, 1], [1, 1], [1, 1], 1)?;
                let _ = y.f_relu_()?;
                y
            };
            if conv.pool_after {
                x = x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
            }
        }
        Ok(x)
    }
}

/// The same values laid out NHWC in memory while keeping NCHW indexing.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg19_indices_match_torchvision() {
        let idx: Vec<usize> = VggSpec::VGG19.convs().iter().map(|c| c.index).collect();
        assert_eq!(idx, vec![0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]);
        let pools: Vec<usize> = VggSpec::VGG19.convs().iter().filter(|c| c.pool_after).map(|c| c.index).collect();
        assert_eq!(pools, vec![2, 7, 16, 25, 34]);
        assert_eq!(VggSpec::VGG19.feature_len(), 25088);
    }

    use crate::model::weights::write_atomic;

    fn cpu() -> Placement {
        Placement { device: Device::Cpu, precision: Precision::Fp32 }
    }

    const NARROW: VggSpec = VggSpec { widths: [4, 8, 8, 16, 16] };

    #[test]
    fn real_vgg19_shape_loads_and_gives_512x7x7() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg19.safetensors");
        write_atomic(&path, &VggSpec::VGG19.random_state_dict(3)).unwrap();
        let b = Backbone::load(&path, Some(VggSpec::VGG19), cpu()).unwrap();
        let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
        let f = b.features(&x).unwrap();
        assert_eq!(f.size(), vec![1, 512, 7, 7]);
        assert!(f.abs().sum(Kind::Float).double_value(&[]) > 0.0, "all-zero features");
    }

    #[test]
    fn features_only_and_whole_model_state_dicts_both_load() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.safetensors");
        let features = NARROW.random_state_dict(1);
        let stripped: Vec<(String, Tensor)> =
            features.iter().map(|(n, t)| (n.trim_start_matches("features.").to_string(), t.shallow_clone())).collect();
        let mut tensors = features;
        // A whole-model state dict also carries the classifier, which we ignore.
        tensors.push(("classifier.0.weight".into(), Tensor::zeros([4, 16 * 49], (Kind::Float, Device::Cpu))));
        write_atomic(&whole, &tensors).unwrap();
        let features_only = dir.path().join("features.safetensors");
        write_atomic(&features_only, &stripped).unwrap();

        let x = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
        let a = Backbone::load(&whole, None, cpu()).unwrap();
        assert_eq!(a.spec(), NARROW, "widths read from the file");
        let b = Backbone::load(&features_only, Some(NARROW), cpu()).unwrap();
        let (fa, fb) = (a.features(&x).unwrap(), b.features(&x).unwrap());
        assert_eq!(fa.size(), vec![2, 16, 7, 7]);
        assert!(fa.allclose(&fb, 1e-5, 1e-6, false));
    }

    /// On CUDA: fp16 channels-last with cuDNN's fused convolution+bias+ReLU against the
    /// plain conv2d+relu path, and against CPU fp32 (relative L2 under 1% and 5%).
    #[test]
    fn cuda_fused_fp16_agrees_with_plain_and_with_cpu_fp32() {
        if !tch::Cuda::is_available() {
            eprintln!("SKIPPED cuda_fused_fp16_agrees_with_plain_and_with_cpu_fp32: no CUDA device");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.safetensors");
        write_atomic(&path, &NARROW.random_state_dict(4)).unwrap();
        let x = Tensor::randn([4, 3, 224, 224], (Kind::Float, Device::Cpu));
        let reference = Backbone::load(&path, None, cpu()).unwrap().features(&x).unwrap();
        let gpu = Placement { device: Device::Cuda(0), precision: Precision::Fp16 };
        let mut b = Backbone::load(&path, None, gpu).unwrap();
        let on = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
        let fused = on(b.features(&x.to_device(Device::Cuda(0))).unwrap());
        b.set_fused(false);
        let plain = on(b.features(&x.to_device(Device::Cuda(0))).unwrap());
        let rel = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-9);
        assert!(rel(&fused, &plain) < 0.01, "fused and plain differ by {}", rel(&fused, &plain));
        assert!(rel(&fused, &reference) < 0.05, "CUDA fp16 and CPU fp32 differ by {}", rel(&fused, &reference));
    }

    #[test]
    fn bf16_features_agree_with_fp32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.safetensors");
        write_atomic(&path, &NARROW.random_state_dict(2)).unwrap();
        let x = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
        let f32 = Backbone::load(&path, None, cpu()).unwrap().features(&x).unwrap();
        let bf16 = Backbone::load(&path, None, Placement { device: Device::Cpu, precision: Precision::Bf16 })
            .unwrap()
            .features(&x)
            .unwrap()
            .to_kind(Kind::Float);
        let rel = (&f32 - &bf16).norm().double_value(&[]) / f32.norm().double_value(&[]);
        assert!(rel < 0.05, "bf16 differs from fp32 by {rel:.4} (relative L2)");
    }

    #[test]
    fn wrong_shape_names_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let mut t = NARROW.random_state_dict(1);
        let i = t.iter().position(|(n, _)| n == "features.12.weight").unwrap();
        t[i].1 = Tensor::zeros([8, 8, 5, 5], (Kind::Float, Device::Cpu));
        write_atomic(&path, &t).unwrap();
        let err = Backbone::load(&path, Some(NARROW), cpu()).err().expect("must fail");
        assert!(matches!(&err, ModelError::WrongShape { tensor, .. } if tensor == "features.12.weight"), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("bad.safetensors") && msg.contains("[8, 8, 3, 3]") && msg.contains("[8, 8, 5, 5]"),
            "{msg}"
        );
    }

    #[test]
    fn missing_tensor_names_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.safetensors");
        let t: Vec<_> = NARROW.random_state_dict(1).into_iter().filter(|(n, _)| n != "features.30.bias").collect();
        write_atomic(&path, &t).unwrap();
        let err = Backbone::load(&path, Some(NARROW), cpu()).err().expect("must fail");
        assert!(matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "features.30.bias"), "{err}");
        assert!(err.to_string().contains("short.safetensors"), "{err}");
        // A file of something else altogether.
        let other = dir.path().join("other.safetensors");
        write_atomic(&other, &[("encoder.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]).unwrap();
        let err = Backbone::load(&other, None, cpu()).err().expect("must fail");
        assert!(matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "features.0.weight"), "{err}");
    }

    #[test]
    fn truncated_or_garbage_files_are_corrupt_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        write_atomic(&path, &NARROW.random_state_dict(1)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = Backbone::load(&path, None, cpu()).err().expect("must fail");
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("cut.safetensors") && err.to_string().contains("truncated"), "{err}");

        std::fs::write(&path, b"definitely not safetensors").unwrap();
        assert!(matches!(Backbone::load(&path, None, cpu()), Err(ModelError::Corrupt { .. })));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(Backbone::load(&path, None, cpu()), Err(ModelError::Corrupt { .. })));
        let err = Backbone::load(&dir.path().join("absent.safetensors"), None, cpu()).err().expect("must fail");
        assert!(matches!(err, ModelError::Io { .. }), "{err}");
    }

    #[test]
    fn vgg19_costs_39_gflop() {
        let g = VggSpec::VGG19.flops_per_image() / 1e9;
        assert!((g - 39.0).abs() < 0.1, "{g}");
    }
}
