//! Choosing the batch size by measuring it (`batch.max_size = "auto"`).
//!
//! The best batch depends on the device, the precision and the model: on a 2-core CPU
//! int8 gains little past 8 images, while a GPU needs 64-128 to be busy. So at start-up
//! the worker times its own path (staging, backbone, heads) at a few sizes and takes the
//! smallest one within [`WITHIN`] of the best throughput. A larger maximum costs no
//! latency when traffic is light (batches close at their deadline with what arrived)
//! and buys throughput when cameras offer more than the model does, so the choice leans
//! to throughput; past the best, bigger batches add only latency and memory.

use std::time::{Duration, Instant};

use super::feed::Feeder;
use super::preprocess::Picture;
use super::{ModelError, Recognizer};

/// A batch this close to the best throughput is good enough.
pub const WITHIN: f64 = 0.95;

/// One timed batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub batch: usize,
    pub img_per_s: f64,
}

/// Powers of two up to `cap`, and `cap` itself.
pub fn candidates(cap: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |b| b.checked_mul(2)).take_while(|&b| b < cap).collect();
    v.push(cap.max(1));
    v
}

/// Times each candidate batch size on generated vehicle photos: one warm-up call, then
/// calls until `min_time` has passed (at least two). Stops early once throughput falls
/// well below the best so far, as it only falls further.
pub fn measure(
    recognizer: &Recognizer,
    feeder: &mut Feeder,
    candidates: &[usize],
    min_time: Duration,
) -> Result<Vec<Measured>, ModelError> {
    let largest = candidates.iter().copied().max().unwrap_or(1);
    let photos = crate::synthetic::photos(largest, 5, 224, 224);
    let views = super::preprocess::whole(&photos);
    let mut out: Vec<Measured> = Vec::new();
    for &batch in candidates {
        let items: &[(Picture<'_>, super::Crop)] = &views[..batch];
        let mut call = || recognizer.classify_fed(feeder, items).map(drop);
        call()?;
        let start = Instant::now();
        let mut calls = 0;
        while calls < 2 || start.elapsed() < min_time {
            call()?;
            calls += 1;
        }
        let img_per_s = (calls * batch) as f64 / start.elapsed().as_secs_f64();
        out.push(Measured { batch, img_per_s });
        let best = out.iter().map(|m| m.img_per_s).fold(0.0, f64::max);
        if img_per_s < 0.75 * best {
            break;
        }
    }
    Ok(out)
}

/// The smallest measured batch within [`WITHIN`] of the best throughput.
pub fn choose(measured: &[Measured]) -> Option<usize> {
    let best = measured.iter().map(|m| m.img_per_s).fold(0.0, f64::max);
    measured.iter().filter(|m| m.img_per_s >= WITHIN * best).map(|m| m.batch).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Placement, Precision, VggSpec, weights::write_atomic};
    use tch::Device;

    #[test]
    fn candidates_are_powers_of_two_up_to_the_cap() {
        assert_eq!(candidates(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(candidates(24), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(candidates(1), vec![1]);
    }

    #[test]
    fn choose_takes_the_smallest_batch_near_the_best() {
        let m = |batch, img_per_s| Measured { batch, img_per_s };
        assert_eq!(choose(&[m(1, 10.0), m(4, 30.0), m(8, 33.0), m(16, 34.0)]), Some(8));
        assert_eq!(choose(&[m(1, 10.0), m(4, 40.0), m(8, 33.0)]), Some(4));
        // 10% short of the best is not near enough: under load it would cost throughput.
        assert_eq!(choose(&[m(4, 27.0), m(8, 30.5), m(16, 34.0)]), Some(16));
        assert_eq!(choose(&[]), None);
    }

    /// The real measuring path (feeder, backbone, heads) on a narrow VGG: every size
    /// is timed with a positive throughput, and the choice is one of them.
    #[test]
    fn measures_the_recognizer_at_each_size() {
        let dir = tempfile::tempdir().unwrap();
        let spec = VggSpec { widths: [4, 8, 8, 16, 16] };
        let backbone = dir.path().join("backbone.safetensors");
        write_atomic(&backbone, &spec.random_state_dict(1)).unwrap();
        crate::bench::random_cascade(dir.path(), &backbone, spec).unwrap();
        let placement = Placement { device: Device::Cpu, precision: Precision::Fp32 };
        let recognizer = Recognizer::load(dir.path(), placement).unwrap();
        let mut feeder = Feeder::new(placement).unwrap();
        let measured = measure(&recognizer, &mut feeder, &candidates(4), Duration::from_millis(20)).unwrap();
        assert!(!measured.is_empty());
        assert!(measured.iter().all(|m| m.img_per_s > 0.0 && m.img_per_s.is_finite()), "{measured:?}");
        assert_eq!(measured[0].batch, 1);
        let chosen = choose(&measured).unwrap();
        assert!(measured.iter().any(|m| m.batch == chosen));
    }
}
