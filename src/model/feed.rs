//! Getting a batch of crops onto the model's device.
//!
//! On the CPU this is [`preprocess::batch`]: crops are read from the frames and resized
//! into one batch tensor. On CUDA, moving full-resolution crops and resizing them on the
//! host would cost more than the backbone, so instead:
//! 1. [`Feeder::stage`] packs each crop's raw pixels into pinned host memory (the one
//!    copy out of the frames) and uploads them with one asynchronous copy on a side
//!    stream, so the upload runs while the default stream still computes the previous
//!    batch;
//! 2. [`Feeder::input`] makes the default stream wait for that upload, then converts,
//!    resizes and normalises on the GPU.
//!
//! Two slots (pinned buffer, device buffer, events) alternate, so one batch can be
//! staged while another is in the backbone. Events order everything: a slot's pinned
//! memory is rewritten only after its last upload finished, and its device buffer only
//! after the last batch read from it was converted.

use tch::{Device, Kind, Tensor};

use super::cuda::{self, Event, Stream};
use super::preprocess::{self, Crop, INPUT_SIDE, Picture};
use super::{ModelError, Placement};

/// Stages batches for one placement; owned by the thread that owns the model.
pub struct Feeder {
    placement: Placement,
    gpu: Option<GpuFeeder>,
}

/// A batch on its way to the device: pass it to [`Feeder::input`].
#[must_use = "a staged batch holds one of the feeder's two slots until it is input"]
pub struct Staged(Inner);

enum Inner {
    /// CPU: already the backbone's input.
    Ready(Tensor),
    /// CUDA: raw crops in a slot's device buffer, `(offset, height, width)` each.
    Gpu { slot: usize, items: Vec<(i64, i64, i64)> },
}

impl Feeder {
    pub fn new(placement: Placement) -> Result<Feeder, ModelError> {
        let gpu = match placement.device {
            Device::Cuda(n) => Some(GpuFeeder::new(n).map_err(|e| ModelError::Device(e.to_string()))?),
            _ => None,
        };
        Ok(Feeder { placement, gpu })
    }

    /// Whether staging the next batch overlaps the current one's computation (CUDA):
    /// then it pays to stage a batch before finishing the one in flight.
    pub fn overlaps(&self) -> bool {
        self.gpu.is_some()
    }

    /// Starts moving `images` to the device. At most two batches may be staged and not
    /// yet input.
    pub fn stage(&mut self, images: &[(Picture<'_>, Crop)]) -> Result<Staged, ModelError> {
        match &mut self.gpu {
            None => Ok(Staged(Inner::Ready(preprocess::batch(images, self.placement)?))),
            Some(gpu) => gpu.stage(images),
        }
    }

    /// The backbone's input for a staged batch, `[N, 3, 224, 224]` on the device in the
    /// placement's precision. On CUDA the work is queued, not waited for.
    pub fn input(&mut self, staged: Staged) -> Result<Tensor, ModelError> {
        match (staged.0, &mut self.gpu) {
            (Inner::Ready(t), _) => Ok(t),
            (Inner::Gpu { slot, items }, Some(gpu)) => gpu.input(slot, &items, self.placement),
            (Inner::Gpu { .. }, None) => Err(ModelError::Device("a GPU batch was given to a CPU feeder".into())),
        }
    }
}

struct GpuFeeder {
    device: usize,
    /// Where uploads are queued.
    side: Stream,
    slots: [Slot; 2],
    next: usize,
}

struct Slot {
    /// Pinned host memory the crops are packed into.
    host: Tensor,
    /// Where they land on the device.
    dev: Tensor,
    /// Recorded on the side stream after the upload from `host`.
    uploaded: Event,
    /// Recorded on the compute stream after the last read of `dev`.
    consumed: Event,
    /// Staged and not yet input.
    busy: bool,
}

impl GpuFeeder {
    fn new(device: usize) -> Result<GpuFeeder, cuda::CudaError> {
        let slot = || -> Result<Slot, cuda::CudaError> {
            Ok(Slot {
                host: Tensor::new(),
                dev: Tensor::new(),
                uploaded: Event::new()?,
                consumed: Event::new()?,
                busy: false,
            })
        };
        Ok(GpuFeeder { device, side: Stream::from_pool(device)?, slots: [slot()?, slot()?], next: 0 })
    }

    fn stage(&mut self, images: &[(Picture<'_>, Crop)]) -> Result<Staged, ModelError> {
        // Before any byte is packed: `pack` relies on every crop fitting.
        preprocess::check_crops(images)?;
        let device = self.device;
        let index = self.next;
        let slot = &mut self.slots[index];
        if slot.busy {
            return Err(ModelError::Device("more than two batches staged at once (a bug in the caller)".into()));
        }
        let cuda_err = |e: cuda::CudaError| ModelError::Device(e.to_string());
        let mut items = Vec::with_capacity(images.len());
        let mut total = 0i64;
        for (_, crop) in images {
            let (h, w) = (crop.height as i64, crop.width as i64);
            items.push((total, h, w));
            total += h * w * 3;
        }
        // The last upload from this pinned memory must be over before it is rewritten.
        slot.uploaded.synchronize().map_err(cuda_err)?;
        let capacity = if slot.host.defined() { slot.host.numel() as i64 } else { 0 };
        if capacity < total {
            // Growing: nothing may still read the old device buffer.
            slot.consumed.synchronize().map_err(cuda_err)?;
            let capacity = total + total / 4;
            let grow = || -> Result<(Tensor, Tensor), tch::TchError> {
                let host =
                    Tensor::f_empty([capacity], (Kind::Uint8, Device::Cpu))?.f_pin_memory(Device::Cuda(device))?;
                let dev = Tensor::f_empty([capacity], (Kind::Uint8, Device::Cuda(device)))?;
                Ok((host, dev))
            };
            (slot.host, slot.dev) = grow().map_err(ModelError::torch("allocating pinned upload buffers"))?;
        }
        // SAFETY: `host` is a contiguous uint8 tensor of at least `total` bytes that this
        // slot owns; no copy reads it now (the event above), and the slice ends here.
        let packed = unsafe { std::slice::from_raw_parts_mut(slot.host.data_ptr() as *mut u8, total as usize) };
        for ((image, crop), &(offset, h, w)) in images.iter().zip(&items) {
            image.pack(*crop, &mut packed[offset as usize..(offset + h * w * 3) as usize]);
        }
        let side = self.side;
        let mut upload = || -> Result<(), ModelError> {
            let _on_side = side.enter().map_err(cuda_err)?;
            // The device buffer is free once the compute stream has read the last batch.
            slot.consumed.block(side).map_err(cuda_err)?;
            let src = slot.host.f_narrow(0, 0, total).map_err(ModelError::torch("staging"))?;
            let mut dst = slot.dev.f_narrow(0, 0, total).map_err(ModelError::torch("staging"))?;
            cuda::copy_async(&mut dst, &src).map_err(cuda_err)?;
            slot.uploaded.record(side).map_err(cuda_err)
        };
        upload()?;
        slot.busy = true;
        self.next = 1 - index;
        Ok(Staged(Inner::Gpu { slot: index, items }))
    }

    fn input(&mut self, index: usize, items: &[(i64, i64, i64)], placement: Placement) -> Result<Tensor, ModelError> {
        let cuda_err = |e: cuda::CudaError| ModelError::Device(e.to_string());
        let compute = Stream::current(self.device).map_err(cuda_err)?;
        let slot = &mut self.slots[index];
        slot.busy = false;
        slot.uploaded.block(compute).map_err(cuda_err)?;
        let device = placement.device;
        let convert = || -> Result<Tensor, tch::TchError> {
            let n = items.len() as i64;
            let crop = |&(offset, h, w): &(i64, i64, i64), count: i64| -> Result<Tensor, tch::TchError> {
                slot.dev
                    .f_narrow(0, offset, count * h * w * 3)?
                    .f_view([count, h, w, 3])?
                    .f_permute([0, 3, 1, 2])?
                    .f_to_kind(Kind::Float)
            };
            let same_size = items.windows(2).all(|p| (p[0].1, p[0].2) == (p[1].1, p[1].2));
            let pixels = match items.first() {
                // One resize for the whole batch when every crop has the same size (the
                // crops are packed back to back, so they form one [N, h, w, 3] block).
                Some(first) if same_size => preprocess::resize(&crop(first, n)?)?,
                _ => {
                    let out = Tensor::f_empty([n, 3, INPUT_SIDE, INPUT_SIDE], (Kind::Float, device))?;
                    for (i, item) in items.iter().enumerate() {
                        out.f_narrow(0, i as i64, 1)?.f_copy_(&preprocess::resize(&crop(item, 1)?)?)?;
                    }
                    out
                }
            };
            preprocess::normalise(pixels.f_contiguous()?, placement)
        };
        let input = convert().map_err(ModelError::torch("preprocessing on the GPU"))?;
        slot.consumed.record(compute).map_err(cuda_err)?;
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Precision;

    fn images() -> Vec<image::RgbImage> {
        let mut rng = crate::synthetic::rng(3);
        let c = crate::synthetic::catalogue();
        vec![
            crate::synthetic::render(&c[0], &mut rng, 320, 240),
            crate::synthetic::render(&c[1], &mut rng, 300, 200),
            crate::synthetic::render(&c[2], &mut rng, 224, 224),
        ]
    }

    fn crops(imgs: &[image::RgbImage]) -> Vec<(Picture<'_>, Crop)> {
        let mut v = preprocess::whole(imgs);
        // A crop that is not the whole image, with an odd offset.
        v[0].1 = Crop { x: 17, y: 9, width: 251, height: 183 };
        v
    }

    #[test]
    fn cpu_feeder_is_preprocess_batch() {
        let imgs = images();
        let items = crops(&imgs);
        let placement = Placement { device: Device::Cpu, precision: Precision::Fp32 };
        let mut feeder = Feeder::new(placement).unwrap();
        assert!(!feeder.overlaps());
        let staged = feeder.stage(&items).unwrap();
        let got = feeder.input(staged).unwrap();
        let want = preprocess::batch(&items, placement).unwrap();
        assert_eq!(got.size(), vec![3, 3, 224, 224]);
        assert_eq!(f64::try_from((got - want).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn crops_that_do_not_fit_are_refused_before_staging() {
        let imgs = images();
        let mut items = crops(&imgs);
        items[1].1 = Crop { x: 250, y: 0, width: 100, height: 10 };
        let mut feeder = Feeder::new(Placement { device: Device::Cpu, precision: Precision::Fp32 }).unwrap();
        let err = feeder.stage(&items).err().unwrap().to_string();
        assert!(err.contains("batch item 1"), "{err}");
    }

    /// The GPU path (pinned upload on a side stream, resize on the device) against the
    /// CPU reference, with two batches in flight at once as the worker keeps them.
    /// Tolerance: 0.05 in normalised units (about 3 levels of 255): the CPU resizes
    /// uint8 and rounds, the GPU resizes fp32.
    #[test]
    fn gpu_feeder_matches_cpu_with_two_batches_in_flight() {
        if !tch::Cuda::is_available() {
            eprintln!("SKIPPED gpu_feeder_matches_cpu_with_two_batches_in_flight: no CUDA device");
            return;
        }
        let imgs = images();
        let mixed = crops(&imgs);
        let same: Vec<(Picture<'_>, Crop)> = imgs
            .iter()
            .map(|i| {
                (Picture::Rgb(crate::model::RgbImage::from_image(i)), Crop { x: 5, y: 7, width: 200, height: 150 })
            })
            .collect();
        let cpu = Placement { device: Device::Cpu, precision: Precision::Fp32 };
        let gpu = Placement { device: Device::Cuda(0), precision: Precision::Fp32 };
        let mut feeder = Feeder::new(gpu).unwrap();
        assert!(feeder.overlaps());
        for round in 0..3 {
            let a = feeder.stage(&mixed).unwrap();
            let b = feeder.stage(&same).unwrap();
            assert!(feeder.stage(&same).is_err(), "a third staged batch must be refused");
            for (staged, items) in [(a, &mixed), (b, &same)] {
                let got = feeder.input(staged).unwrap().to_device(Device::Cpu);
                let want = preprocess::batch(items, cpu).unwrap();
                let diff = f64::try_from((got - want).abs().max()).unwrap();
                assert!(diff < 0.05, "round {round}: GPU preprocessing differs from CPU by {diff}");
            }
        }
    }
}
