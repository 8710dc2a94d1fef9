//! Backbone features, computed once per image and kept on disk.
//!
//! The backbone is frozen, so an image's features never change for a given backbone
//! file, precision and preprocessing. Training heads again (new data, other settings)
//! then costs milliseconds per image instead of a VGG-19 forward pass. An entry's key is
//! the image file's content hash (and whether it was flipped); entries live under a
//! directory named for the backbone file's content hash, the precision and the
//! preprocessing version, so changing any of these never reuses stale features.
//! Each entry is a small safetensors file written atomically; an unreadable entry is
//! recomputed, not trusted.

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::TrainError;
use crate::model::weights::{WeightFile, write_atomic};
use crate::model::{Backbone, Precision};

/// Bumped whenever preprocessing changes what features an image gives.
const PREPROCESS_VERSION: u32 = 2; // 2: resize in uint8 on the CPU

/// The on-disk cache for one backbone.
pub struct FeatureCache {
    dir: PathBuf,
    len: i64,
}

impl FeatureCache {
    /// The cache for `backbone` under `root`.
    pub fn open(root: &Path, backbone: &Backbone) -> Result<FeatureCache, TrainError> {
        let key = backbone_key(backbone.path(), backbone.placement().precision)?;
        let dir = root.join(key);
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
        Ok(FeatureCache { dir, len: backbone.spec().feature_len() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &ImageKey) -> PathBuf {
        let name =
            if key.flipped { format!("{}-flip.safetensors", key.hash) } else { format!("{}.safetensors", key.hash) };
        self.dir.join(&key.hash[..2]).join(name)
    }

    /// Cached features for `key`, if present and intact.
    pub fn get(&self, key: &ImageKey) -> Option<Tensor> {
        let path = self.entry(key);
        if !path.exists() {
            return None;
        }
        match WeightFile::open(&path).and_then(|f| f.tensor("features", &[self.len], Kind::Float, Device::Cpu)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("feature cache entry {} is unreadable, recomputing: {e}", path.display());
                None
            }
        }
    }

    /// Stores `features` (shape `[len]`) for `key`.
    pub fn put(&self, key: &ImageKey, features: &Tensor) -> Result<(), TrainError> {
        let path = self.entry(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| TrainError::Io { path: parent.to_path_buf(), source })?;
        }
        write_atomic(&path, &[("features".to_string(), features.shallow_clone())])?;
        Ok(())
    }
}

/// Identifies an image's features within one backbone's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    pub hash: String,
    pub flipped: bool,
}

impl ImageKey {
    pub fn of_bytes(bytes: &[u8], flipped: bool) -> ImageKey {
        ImageKey { hash: blake3::hash(bytes).to_hex().to_string(), flipped }
    }
}

/// Content hash of the backbone file plus everything else that changes features.
fn backbone_key(path: &Path, precision: Precision) -> Result<String, TrainError> {
    let mut file = std::fs::File::open(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash = hasher.finalize().to_hex();
    Ok(format!("{}-{precision}-p{PREPROCESS_VERSION}", &hash[..16]))
}
