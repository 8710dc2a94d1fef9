//! Embeddings: what a vehicle looks like as 512 numbers, to find "a car like this one".
//!
//! The backbone's last convolutional output (`[C, 7, 7]`, C = 512 for VGG-19) is
//! averaged over its positions and scaled to unit length, so the cosine similarity of
//! two embeddings is their dot product. Pooling throws away where in the crop things
//! are, which is what lets a photo match the same car seen from a little further off.
//! Stored, each value is one signed byte (scaled so the largest is 127): 512 bytes a
//! sighting, and a similarity over a million of them is a million integer dot products.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::ModelError;

/// One image's pooled, L2-normalised backbone features.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(Arc<[f32]>);

impl Embedding {
    /// One embedding per image of backbone features `[N, C, H, W]`.
    pub fn of_features(features: &Tensor) -> Result<Vec<Embedding>, ModelError> {
        if features.dim() != 4 {
            return Ok(Vec::new());
        }
        let pooled = features
            .f_to_kind(Kind::Float)
            .and_then(|f| f.f_mean_dim(&[2i64, 3][..], false, Kind::Float))
            .and_then(|p| p.f_to_device(tch::Device::Cpu))
            .and_then(|p| p.f_contiguous())
            .map_err(ModelError::torch("pooling features for embeddings"))?;
        let (n, c) = (pooled.size()[0] as usize, pooled.size()[1] as usize);
        let flat = Vec::<f32>::try_from(pooled.f_flatten(0, -1).map_err(ModelError::torch("embedding output"))?)
            .map_err(ModelError::torch("embedding output"))?;
        Ok((0..n).map(|i| Embedding::normalised(&flat[i * c..(i + 1) * c])).collect())
    }

    /// `v` scaled to unit length (all zeros stays all zeros).
    pub fn normalised(v: &[f32]) -> Embedding {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        Embedding(v.iter().map(|x| x * scale).collect())
    }

    pub fn values(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity (both are unit length); 0 when the lengths differ (another
    /// backbone's embedding).
    pub fn similarity(&self, other: &Embedding) -> f32 {
        if self.0.len() != other.0.len() {
            return 0.0;
        }
        self.0.iter().zip(other.0.iter()).map(|(a, b)| a * b).sum()
    }

    /// The stored form: one signed byte per value, the largest magnitude as 127 (a
    /// fixed scale would round a 512-value unit vector's small values away).
    pub fn to_bytes(&self) -> Vec<u8> {
        let max = self.0.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
        self.0.iter().map(|v| (v * scale).round().clamp(-127.0, 127.0) as i8 as u8).collect()
    }

    /// Back from [`Embedding::to_bytes`] (unit length again, up to rounding).
    pub fn from_bytes(bytes: &[u8]) -> Embedding {
        let v: Vec<f32> = bytes.iter().map(|&b| b as i8 as f32).collect();
        Embedding::normalised(&v)
    }

    /// The query form for [`Query`]: the stored bytes.
    pub fn quantised(&self) -> Vec<i8> {
        self.to_bytes().into_iter().map(|b| b as i8).collect()
    }
}

/// A stored embedding asked about many others (`search --like`, a million rows): its
/// length computed once, each row's dot product and length in one pass.
#[derive(Debug, Clone)]
pub struct Query {
    v: Vec<i8>,
    norm: f64,
}

impl Query {
    pub fn new(v: Vec<i8>) -> Query {
        let norm = (v.iter().map(|&x| x as i64 * x as i64).sum::<i64>() as f64).sqrt();
        Query { v, norm }
    }

    /// Cosine similarity with the stored bytes `b` (each side has its own scale, so the
    /// dot product is divided by both lengths); 0 for another length or all zeros.
    pub fn similarity(&self, b: &[u8]) -> f32 {
        if self.v.len() != b.len() || self.norm == 0.0 {
            return 0.0;
        }
        let (dot, bb) = dot_and_norm(&self.v, b);
        if bb == 0 {
            return 0.0;
        }
        (dot as f64 / (self.norm * (bb as f64).sqrt())) as f32
    }
}

/// (a·b, b·b) in integers: blocks of 65,536 values (products of at most 127²) in i32,
/// the blocks in i64.
fn dot_and_norm(a: &[i8], b: &[u8]) -> (i64, i64) {
    let (mut dot, mut bb) = (0i64, 0i64);
    for (x, y) in a.chunks(1 << 16).zip(b.chunks(1 << 16)) {
        let (d, n) = dot_and_norm_block(x, y);
        dot += d as i64;
        bb += n as i64;
    }
    (dot, bb)
}

fn dot_and_norm_block(a: &[i8], b: &[u8]) -> (i32, i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_and_norm_avx2(a, b) };
    }
    dot_and_norm_plain(a, b)
}

/// The same loop compiled for AVX2 (the build targets plain x86-64: SSE2 only), chosen
/// at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_and_norm_avx2(a: &[i8], b: &[u8]) -> (i32, i32) {
    dot_and_norm_plain(a, b)
}

#[inline(always)]
fn dot_and_norm_plain(a: &[i8], b: &[u8]) -> (i32, i32) {
    let (mut dot, mut bb) = (0i32, 0i32);
    for (&x, &y) in a.iter().zip(b) {
        let (p, q) = (x as i32, y as i8 as i32);
        dot += p * q;
        bb += q * q;
    }
    (dot, bb)
}

/// The mean of several embeddings, renormalised: a track's look over all its looks,
/// or an alert's over its example photos.
#[derive(Debug, Clone, Default)]
pub struct MeanEmbedding {
    sum: Vec<f32>,
}

impl MeanEmbedding {
    pub fn add(&mut self, e: &Embedding) {
        if self.sum.is_empty() {
            self.sum = e.values().to_vec();
        } else if self.sum.len() == e.values().len() {
            for (s, v) in self.sum.iter_mut().zip(e.values()) {
                *s += v;
            }
        }
    }

    pub fn get(&self) -> Option<Embedding> {
        (!self.sum.is_empty()).then(|| Embedding::normalised(&self.sum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_features_are_unit_length_and_similar_to_themselves() {
        let f = Tensor::rand([2, 512, 7, 7], (Kind::Float, tch::Device::Cpu));
        let e = Embedding::of_features(&f).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].values().len(), 512);
        assert!((e[0].similarity(&e[0]) - 1.0).abs() < 1e-4);
        // Pooling: the mean over positions of channel c.
        let mean0: f32 = f.get(0).get(0).mean(Kind::Float).double_value(&[]) as f32;
        let norm = (f.get(0).mean_dim(&[1i64, 2][..], false, Kind::Float).square().sum(Kind::Float).double_value(&[])
            as f32)
            .sqrt();
        assert!((e[0].values()[0] - mean0 / norm).abs() < 1e-4);
    }

    #[test]
    fn stored_bytes_keep_the_similarity_within_rounding() {
        let a = Embedding::normalised(&(0..512).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect::<Vec<_>>());
        let b = Embedding::normalised(&(0..512).map(|i| ((i * 104_729) % 97) as f32 - 40.0).collect::<Vec<_>>());
        let exact = a.similarity(&b);
        let stored = Query::new(a.quantised()).similarity(&b.to_bytes());
        assert!((exact - stored).abs() < 0.02, "{exact} vs {stored}");
        assert!((Embedding::from_bytes(&a.to_bytes()).similarity(&a) - 1.0).abs() < 1e-3);
        assert_eq!(Query::new(a.quantised()).similarity(&[0u8; 3]), 0.0);
    }

    #[test]
    fn the_vectorised_loop_sums_as_the_plain_one_including_extremes() {
        let mut rng = crate::synthetic::rng(3);
        use rand::RngExt;
        for len in [0, 1, 31, 512, 1000] {
            let a: Vec<i8> = (0..len).map(|i| if i % 7 == 0 { -127 } else { rng.random_range(-127..=127) }).collect();
            let b: Vec<u8> = (0..len).map(|i| if i % 5 == 0 { 127 } else { rng.random_range(0..=255) }).collect();
            let (d, n) = dot_and_norm(&a, &b);
            let (pd, pn) = a.iter().zip(&b).fold((0i64, 0i64), |(d, n), (&x, &y)| {
                let (p, q) = (x as i64, y as i8 as i64);
                (d + p * q, n + q * q)
            });
            assert_eq!((d, n), (pd, pn), "length {len}");
        }
    }

    #[test]
    fn a_mean_is_renormalised() {
        let mut m = MeanEmbedding::default();
        assert!(m.get().is_none());
        m.add(&Embedding::normalised(&[1.0, 0.0]));
        m.add(&Embedding::normalised(&[0.0, 1.0]));
        let e = m.get().unwrap();
        assert!((e.values()[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
