//! Named tensors from a safetensors file, checked against the shapes we expect.
//!
//! Both the backbone and the heads are stored as safetensors with PyTorch's state-dict
//! names, so files written by `torch` load as they are. Every tensor is checked for name,
//! shape and dtype before use: a mismatch is a [`ModelError`] naming the file and the
//! tensor, never a panic deep in a convolution.
//!
//! The file is memory-mapped: a whole-model VGG-19 state dict is 550 MB, of which the
//! backbone needs 80 MB; mapping reads only the pages of the tensors we take.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::ModelError;

/// An open, validated safetensors file.
pub struct WeightFile {
    path: PathBuf,
    map: Mmap,
    /// Where tensor data starts in the file (after the length prefix and JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl WeightFile {
    /// Opens and validates `path`: the header must parse and every tensor's data must lie
    /// within the file (so a truncated download is caught here, not at first use).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates the file while it is mapped, reads could fault; model files are not
        // rewritten in place (train writes a new file and renames it over the old one).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not a valid safetensors file ({e}); is it truncated?"),
        })?;
        Ok(WeightFile { path: path.to_path_buf(), map, data_start: 8 + header_len, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.metadata.info(name).ok_or_else(|| self.missing(name))
    }

    /// Whether the file has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The shape of tensor `name`, or a [`ModelError::MissingTensor`].
    pub fn shape(&self, name: &str) -> Result<Vec<i64>, ModelError> {
        Ok(self.info(name)?.shape.iter().map(|&d| d as i64).collect())
    }

    /// Tensor `name`, checked to have shape `expected`, converted to `kind` on `device`.
    pub fn tensor(&self, name: &str, expected: &[i64], kind: Kind, device: Device) -> Result<Tensor, ModelError> {
        let info = self.info(name)?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(ModelError::WrongShape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let stored = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(ModelError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("tensor `{name}` has dtype {other:?}; expected a floating-point type"),
                });
            }
        };
        // `read_metadata` checked that every tensor's offsets lie within the file.
        let (start, end) = info.data_offsets;
        let data = &self.map[self.data_start + start..self.data_start + end];
        let t = Tensor::f_from_data_size(data, expected, stored)
            .and_then(|t| t.f_to_device(device))
            .and_then(|t| t.f_to_kind(kind))
            .map_err(|e| ModelError::Torch {
                context: format!("loading `{name}` from {}", self.path.display()),
                source: e,
            })?;
        Ok(t)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { path: self.path.clone(), tensor: name.to_string() }
    }
}

/// Writes `tensors` to `path` atomically (a temporary file renamed over the target), so a
/// reader never maps a half-written file.
pub fn write_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), ModelError> {
    let tmp = path.with_extension("safetensors.tmp");
    let contiguous: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&contiguous, &tmp)
        .map_err(|e| ModelError::Torch { context: format!("writing {}", tmp.display()), source: e })?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    Ok(())
}
