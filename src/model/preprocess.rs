//! From RGB pixels to the backbone's input: crop, resize to 224x224, normalise.
//!
//! This is the only place that knows the network's input convention: RGB channel order,
//! values scaled to [0, 1], then ImageNet's per-channel mean and standard deviation.
//! Training (`train`), `classify` and the camera path all come through here, so a change
//! of convention cannot make them disagree.
//!
//! Resizing is bilinear with antialiasing (what torchvision's `Resize` does on tensors
//! with `antialias=True`): camera crops are often several times larger than 224 pixels
//! and plain bilinear sampling would alias their texture. The aspect ratio is not kept:
//! regions are squeezed to the square input, the same way in training and inference.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{ModelError, Placement};
use crate::pixels::I420;

/// Side of the square network input.
pub const INPUT_SIDE: i64 = 224;
/// ImageNet channel means (RGB) of pixel values in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A borrowed 8-bit RGB image: `height` rows of `stride` bytes, the first `width * 3` of
/// each being pixels (decoders pad rows; a `Vec` from the `image` crate does not).
#[derive(Clone, Copy)]
pub struct RgbImage<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    stride: usize,
}

impl<'a> RgbImage<'a> {
    /// Checks that `data` holds `height` rows of `stride` bytes of which `width * 3` are
    /// pixels.
    pub fn new(data: &'a [u8], width: u32, height: u32, stride: usize) -> Result<Self, String> {
        let row = width as usize * 3;
        if width == 0 || height == 0 {
            return Err(format!("empty image ({width}x{height})"));
        }
        if stride < row {
            return Err(format!("row stride {stride} is shorter than {width} RGB pixels"));
        }
        let needed = stride * (height as usize - 1) + row;
        if data.len() < needed {
            return Err(format!("{} bytes cannot hold a {width}x{height} RGB image with stride {stride}", data.len()));
        }
        Ok(RgbImage { data, width, height, stride })
    }

    /// A view of an `image::RgbImage` (tightly packed rows).
    pub fn from_image(img: &'a image::RgbImage) -> Self {
        RgbImage { data: img.as_raw(), width: img.width(), height: img.height(), stride: img.width() as usize * 3 }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The whole image as a crop.
    pub fn full(&self) -> Crop {
        Crop { x: 0, y: 0, width: self.width, height: self.height }
    }

    /// Copies the pixels of `crop`, row after row with no padding, into `dst`, which
    /// must hold exactly `width * height * 3` bytes. The caller checks that `crop` fits.
    pub(crate) fn pack(&self, crop: Crop, dst: &mut [u8]) {
        let row = crop.width as usize * 3;
        for (r, out) in dst.chunks_exact_mut(row).enumerate() {
            let start = (crop.y as usize + r) * self.stride + crop.x as usize * 3;
            out.copy_from_slice(&self.data[start..start + row]);
        }
    }

    /// The pixels of `crop` as a `[1, 3, h, w]` uint8 tensor over this image's own
    /// memory (channels-last strides, no copy). The caller checks that `crop` fits, and
    /// turns the view into an owned tensor before `self`'s borrow ends.
    fn borrowed_view(&self, crop: Crop) -> Result<Tensor, tch::TchError> {
        let offset = crop.y as usize * self.stride + crop.x as usize * 3;
        let (h, w) = (crop.height as i64, crop.width as i64);
        let strides = [h * self.stride as i64, 1, self.stride as i64, 3];
        let reach = offset + (crop.height as usize - 1) * self.stride + crop.width as usize * 3;
        if reach > self.data.len() {
            return Err(tch::TchError::Shape(format!("crop {crop:?} reaches byte {reach} of {}", self.data.len())));
        }
        // SAFETY: every element the size and strides address lies in self.data (checked
        // just above), which outlives the view: `batch` copies out of it (resize, device
        // transfer or kind conversion) before returning, and nothing writes through it.
        unsafe { Tensor::f_from_blob(self.data[offset..].as_ptr(), &[1, 3, h, w], &strides, Kind::Uint8, Device::Cpu) }
    }
}

/// What a crop is read from: an RGB image (photos, training) or a camera's I420 frame,
/// which is resized in YUV and converted to RGB only at 224x224.
#[derive(Clone, Copy)]
pub enum Picture<'a> {
    Rgb(RgbImage<'a>),
    I420(I420<'a>),
}

impl<'a> From<RgbImage<'a>> for Picture<'a> {
    fn from(image: RgbImage<'a>) -> Self {
        Picture::Rgb(image)
    }
}

impl Picture<'_> {
    pub fn width(&self) -> u32 {
        match self {
            Picture::Rgb(i) => i.width,
            Picture::I420(i) => i.width(),
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Picture::Rgb(i) => i.height,
            Picture::I420(i) => i.height(),
        }
    }

    /// The whole picture as a crop.
    pub fn full(&self) -> Crop {
        Crop { x: 0, y: 0, width: self.width(), height: self.height() }
    }

    /// Packed RGB of `crop` into `dst` (`width * height * 3` bytes). The caller checks
    /// that `crop` fits.
    pub(crate) fn pack(&self, crop: Crop, dst: &mut [u8]) {
        match self {
            Picture::Rgb(i) => i.pack(crop, dst),
            Picture::I420(i) => {
                let mut rgb = Vec::new();
                i.to_rgb((crop.x, crop.y, crop.width, crop.height), &mut rgb);
                dst.copy_from_slice(&rgb);
            }
        }
    }

    /// `crop` resized to `[1, 3, 224, 224]`, fp32 values 0-255, on `device`. The caller
    /// checks that `crop` fits.
    fn resized(&self, crop: Crop, device: Device) -> Result<Tensor, tch::TchError> {
        match self {
            Picture::Rgb(image) => resized_u8(&image.borrowed_view(crop)?, device),
            Picture::I420(image) => resized_i420(image, crop, device),
        }
    }
}

/// A `[1, 3, h, w]` uint8 CPU view resized to 224x224, fp32 0-255, on `device`.
fn resized_u8(t: &Tensor, device: Device) -> Result<Tensor, tch::TchError> {
    if device.is_cuda() {
        resize(&t.f_to_device(device)?.f_to_kind(Kind::Float)?)
    } else {
        // libtorch resizes channels-last uint8 on the CPU with SIMD, about 7x faster
        // than in fp32 (1.2 ms for a 720p frame); the result differs by at most one
        // level of 255.
        resize(t)?.f_to_kind(Kind::Float)
    }
}

/// Resizes the crop in YUV and converts only at 224x224: the crop is interleaved to
/// packed YUV (one chroma sample per pixel, no arithmetic), resized by libtorch's SIMD
/// uint8 path as an RGB crop would be, and the 224x224 result converted. That replaces
/// converting every pixel of the frame to RGB, and since the conversion is affine it
/// gives the same input within rounding (clamping aside).
fn resized_i420(image: &I420<'_>, crop: Crop, device: Device) -> Result<Tensor, tch::TchError> {
    let mut packed = Vec::new();
    image.to_yuv444((crop.x, crop.y, crop.width, crop.height), &mut packed);
    let (h, w) = (crop.height as i64, crop.width as i64);
    // SAFETY: `packed` holds exactly h * w * 3 bytes and outlives the view, which is
    // resized (a new tensor) before this function returns.
    let yuv = unsafe {
        Tensor::f_from_blob(packed.as_ptr(), &[1, 3, h, w], &[h * w * 3, 1, w * 3, 3], Kind::Uint8, Device::Cpu)?
    };
    let yuv = resized_u8(&yuv, device)?;
    let (m, o) = image.matrix().coefficients();
    let planes = yuv.f_unbind(1)?;
    let channel = |c: usize| -> Result<Tensor, tch::TchError> {
        let mut t = planes[0].f_mul_scalar(m[c][0] as f64)?;
        for k in 1..3 {
            if m[c][k] != 0.0 {
                t = t.f_add(&planes[k].f_mul_scalar(m[c][k] as f64)?)?;
            }
        }
        t.f_add_scalar(o[c] as f64)
    };
    Tensor::f_stack(&[channel(0)?, channel(1)?, channel(2)?], 1)?.f_clamp(0.0, 255.0)
}

/// Each image whole, as the (image, crop) pairs [`batch`] takes: what training,
/// `classify` and the benchmarks feed the model (`watch` crops regions instead).
pub fn whole<'a>(images: impl IntoIterator<Item = &'a image::RgbImage>) -> Vec<(Picture<'a>, Crop)> {
    images
        .into_iter()
        .map(|i| {
            let v = RgbImage::from_image(i);
            (Picture::Rgb(v), v.full())
        })
        .collect()
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crop {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Crop {
    /// Whether the crop is non-empty and lies inside a `width` x `height` image.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        self.width > 0
            && self.height > 0
            && self.x.checked_add(self.width).is_some_and(|r| r <= width)
            && self.y.checked_add(self.height).is_some_and(|b| b <= height)
    }
}

/// Every crop is non-empty and inside its image; the error names the first that is not.
pub(crate) fn check_crops(images: &[(Picture<'_>, Crop)]) -> Result<(), ModelError> {
    match images.iter().position(|(image, crop)| !crop.fits(image.width(), image.height())) {
        None => Ok(()),
        Some(i) => {
            let (image, crop) = &images[i];
            Err(ModelError::Device(format!(
                "batch item {i}: crop {crop:?} does not fit a {}x{} image",
                image.width(),
                image.height()
            )))
        }
    }
}

/// One normalised batch `[N, 3, 224, 224]` (fp32 values, in the placement's precision,
/// on its device) from (image, crop) pairs.
pub fn batch(images: &[(Picture<'_>, Crop)], placement: Placement) -> Result<Tensor, ModelError> {
    let device = placement.device;
    let n = images.len() as i64;
    // The one tensor the batch is written into; each item is read straight from the
    // frame's memory (no crop copy) and resized into its slot.
    check_crops(images)?;
    let out = Tensor::f_empty([n, 3, INPUT_SIDE, INPUT_SIDE], (Kind::Float, device))
        .map_err(ModelError::torch("allocating the batch"))?;
    for (i, (image, crop)) in images.iter().enumerate() {
        image
            .resized(*crop, device)
            .and_then(|t| {
                let mut slot = out.f_narrow(0, i as i64, 1)?;
                slot.f_copy_(&t)
            })
            .map_err(ModelError::torch("preprocessing"))?;
    }
    normalise(out, placement).map_err(ModelError::torch("normalising batch"))
}

/// Pixel values 0-255 (fp32, NCHW) to the network's input, in the placement's precision.
pub(crate) fn normalise(mut x: Tensor, placement: Placement) -> Result<Tensor, tch::TchError> {
    let device = placement.device;
    let scale: Vec<f32> = IMAGENET_STD.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = IMAGENET_MEAN.iter().zip(IMAGENET_STD).map(|(m, s)| m / s).collect();
    let scale = Tensor::from_slice(&scale).f_view([1, 3, 1, 1])?.f_to_device(device)?;
    let shift = Tensor::from_slice(&shift).f_view([1, 3, 1, 1])?.f_to_device(device)?;
    let _ = x.f_mul_(&scale)?.f_sub_(&shift)?;
    x.f_to_kind(placement.precision.kind())
}

/// To 224x224, bilinear with antialiasing (a no-op at that size already).
pub(crate) fn resize(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let size = t.size();
    if size[2] == INPUT_SIDE && size[3] == INPUT_SIDE {
        return Ok(t.shallow_clone());
    }
    t.f_internal_upsample_bilinear2d_aa([INPUT_SIDE, INPUT_SIDE], false, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Precision;
    use tch::Device;

    fn cpu() -> Placement {
        Placement { device: Device::Cpu, precision: Precision::Fp32 }
    }

    #[test]
    fn normalises_rgb_in_imagenet_order() {
        // A pure red 224x224 image: R = 255, G = B = 0.
        let img = image::RgbImage::from_pixel(224, 224, image::Rgb([255, 0, 0]));
        let view = RgbImage::from_image(&img);
        let b = batch(&[(view.into(), view.full())], cpu()).unwrap();
        assert_eq!(b.size(), vec![1, 3, 224, 224]);
        let px = |c: i64| b.double_value(&[0, c, 100, 100]) as f32;
        assert!((px(0) - (1.0 - 0.485) / 0.229).abs() < 1e-4, "red channel {}", px(0));
        assert!((px(1) - (0.0 - 0.456) / 0.224).abs() < 1e-4, "green channel {}", px(1));
        assert!((px(2) - (0.0 - 0.406) / 0.225).abs() < 1e-4, "blue channel {}", px(2));
    }

    #[test]
    fn crops_honour_stride_and_offset() {
        // 4x2 image with 2 bytes of row padding; the crop takes the right half of row 1,
        // painted white, while everything else is black.
        let (w, h, stride) = (4u32, 2u32, 14usize);
        let mut data = vec![0u8; stride * h as usize];
        for x in 2..4 {
            for c in 0..3 {
                data[stride + x * 3 + c] = 255;
            }
        }
        let view = RgbImage::new(&data, w, h, stride).unwrap();
        let crop = Crop { x: 2, y: 1, width: 2, height: 1 };
        let b = batch(&[(view.into(), crop)], cpu()).unwrap();
        let min = b.min().double_value(&[]);
        let white_r = (1.0 - 0.485) / 0.229;
        assert!((min - (1.0 - 0.406) / 0.225).abs() < 1e-3 || min > 1.5, "crop saw black pixels: min {min}");
        assert!((b.double_value(&[0, 0, 50, 50]) - white_r).abs() < 1e-3);
    }

    #[test]
    fn resizing_in_uint8_matches_resizing_in_fp32_within_one_level() {
        let img = image::RgbImage::from_fn(640, 360, |x, y| {
            image::Rgb([(x % 256) as u8, (y * 3 % 256) as u8, ((x ^ y) % 256) as u8])
        });
        let view = RgbImage::from_image(&img);
        let fast = batch(&[(view.into(), view.full())], cpu()).unwrap();
        let reference = Tensor::from_data_size(img.as_raw(), &[360, 640, 3], Kind::Uint8)
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(Kind::Float)
            .internal_upsample_bilinear2d_aa([224, 224], false, None, None);
        let std = Tensor::from_slice(&IMAGENET_STD).view([1, 3, 1, 1]);
        let levels = (&fast * &std * 255.0
            - (&reference - Tensor::from_slice(&IMAGENET_MEAN).view([1, 3, 1, 1]) * 255.0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(levels <= 1.0 + 1e-3, "uint8 resize differs from fp32 by {levels} levels");
    }

    #[test]
    fn i420_crops_equal_the_rgb_path_within_rounding() {
        use crate::pixels::{I420, YuvMatrix};
        use gstreamer_video::VideoFormat;
        // A generated street with a vehicle, as a camera sends it (I420, BT.709, from
        // GStreamer's converter), converted to RGB whole and then resized (the RGB
        // path), and resized in YUV and converted at 224x224 (the I420 path).
        let (w, h) = (640u32, 360u32);
        let scene = crate::synthetic::video::Scene::parse("1:front/audi/a4@0.1,0.2,0.5,0.6", w, h, 10).unwrap();
        let (frame, _) = scene.frame(0);
        let yuv = crate::pixels::gstreamer_convert(frame.as_raw(), VideoFormat::Rgb, VideoFormat::I420, w, h).unwrap();
        let image = I420::new(&yuv, w, h, YuvMatrix::BT709).unwrap();
        let mut rgb = Vec::new();
        image.to_rgb((0, 0, w, h), &mut rgb);
        let i420 = Picture::I420(image);
        let rgb_view = Picture::Rgb(RgbImage::new(&rgb, w, h, w as usize * 3).unwrap());
        let original = Picture::Rgb(RgbImage::from_image(&frame));
        let crops = [
            Crop { x: 0, y: 0, width: w, height: h },         // whole frame, downscaled
            Crop { x: 61, y: 71, width: 227, height: 219 },   // odd edges, about the model's size
            Crop { x: 351, y: 107, width: 193, height: 181 }, // smaller than 224: upscaled
        ];
        let std = Tensor::from_slice(&IMAGENET_STD).view([1, 3, 1, 1]);
        for crop in crops {
            let a = batch(&[(rgb_view, crop)], cpu()).unwrap();
            let b = batch(&[(i420, crop)], cpu()).unwrap();
            // Differences in levels of 255.
            let levels = ((&a - &b) * &std * 255.0).abs().view([-1]);
            let mean = levels.mean(Kind::Float).double_value(&[]);
            let sorted = levels.sort(0, false).0;
            let p99 = sorted.double_value(&[(sorted.size()[0] as f64 * 0.99) as i64]);
            let max = sorted.double_value(&[sorted.size()[0] - 1]);
            // Rounding (uint8 resize of YUV, fixed-point conversion) and clamping only.
            assert!(mean < 1.0 && p99 <= 2.5, "{crop:?}: mean {mean:.2}, p99 {p99:.2}, max {max:.1} levels");
            // And close to the generated frame itself: 4:2:0 halves colour resolution.
            let o = batch(&[(original, crop)], cpu()).unwrap();
            let mean = ((&o - &b) * &std * 255.0).abs().mean(Kind::Float).double_value(&[]);
            assert!(mean < 3.0, "{crop:?}: {mean:.2} levels from the generated RGB frame");
            // Nothing like a swapped channel or a wrong matrix: those move means by tens.
            for c in 0..3 {
                let (ma, mb) = (
                    a.get(0).get(c).mean(Kind::Float).double_value(&[]),
                    b.get(0).get(c).mean(Kind::Float).double_value(&[]),
                );
                assert!(
                    ((ma - mb) * IMAGENET_STD[c as usize] as f64 * 255.0).abs() < 0.5,
                    "{crop:?} channel {c}: means {ma} {mb}"
                );
            }
        }
    }

    #[test]
    fn rejects_crops_outside_the_image() {
        let img = image::RgbImage::new(10, 10);
        let view = RgbImage::from_image(&img);
        let crop = Crop { x: 5, y: 5, width: 6, height: 2 };
        assert!(batch(&[(view.into(), crop)], cpu()).is_err());
        assert!(RgbImage::new(&[0u8; 10], 4, 1, 12).is_err());
    }
}
