//! Decoded pixels in the decoder's own format, and the colour conversions carwatch does
//! itself.
//!
//! Cameras send YUV 4:2:0. Converting every analysed frame to RGB (and copying it) cost
//! as much CPU as a small model, while the model only ever sees 224x224 crops: so frames
//! stay I420, crops are resized in YUV and converted afterwards
//! ([`crate::model::preprocess`]), motion is measured on block averages of the planes,
//! and a whole RGB frame is made only for what needs one (a snapshot, a detector).
//!
//! Conversion is affine before clamping, so resizing and then converting gives what
//! converting and then resizing gives, within rounding (`model::preprocess` tests it on
//! a generated frame made I420 by GStreamer's converter, as a camera's encoder would).
//! Chroma is not interpolated: each sample serves its 2x2 pixels, in both paths.

/// How a stream's YUV maps to RGB: the matrix (BT.601 for SD, BT.709 for HD) and
/// whether Y spans 16-235 (limited, what cameras send) or 0-255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvMatrix {
    kr: f32,
    kb: f32,
    full_range: bool,
}

impl YuvMatrix {
    pub const BT601: YuvMatrix = YuvMatrix { kr: 0.299, kb: 0.114, full_range: false };
    pub const BT709: YuvMatrix = YuvMatrix { kr: 0.2126, kb: 0.0722, full_range: false };
    pub const BT2020: YuvMatrix = YuvMatrix { kr: 0.2627, kb: 0.0593, full_range: false };

    /// The same matrix with Y and chroma over the full 0-255 range.
    pub fn full_range(self, full: bool) -> YuvMatrix {
        YuvMatrix { full_range: full, ..self }
    }

    /// `rgb = m * (y, u, v) + offset` in 0-255 units: rows R, G, B; columns Y, U, V.
    pub fn coefficients(&self) -> ([[f32; 3]; 3], [f32; 3]) {
        let (kr, kb) = (self.kr, self.kb);
        let kg = 1.0 - kr - kb;
        let (ys, cs, y0) = if self.full_range { (1.0, 1.0, 0.0) } else { (255.0 / 219.0, 255.0 / 224.0, 16.0) };
        let m = [
            [ys, 0.0, 2.0 * (1.0 - kr) * cs],
            [ys, -2.0 * kb * (1.0 - kb) / kg * cs, -2.0 * kr * (1.0 - kr) / kg * cs],
            [ys, 2.0 * (1.0 - kb) * cs, 0.0],
        ];
        let mut offset = [0.0; 3];
        for (o, row) in offset.iter_mut().zip(&m) {
            *o = -row[0] * y0 - (row[1] + row[2]) * 128.0;
        }
        (m, offset)
    }

    /// The inverse (RGB to YUV, 0-255 units), for generating test frames.
    fn encode(&self, rgb: [f32; 3]) -> [f32; 3] {
        let (kr, kb) = (self.kr, self.kb);
        let kg = 1.0 - kr - kb;
        let y = kr * rgb[0] + kg * rgb[1] + kb * rgb[2];
        let pb = (rgb[2] - y) / (2.0 * (1.0 - kb));
        let pr = (rgb[0] - y) / (2.0 * (1.0 - kr));
        if self.full_range {
            [y, pb + 128.0, pr + 128.0]
        } else {
            [16.0 + y * 219.0 / 255.0, 128.0 + pb * 224.0 / 255.0, 128.0 + pr * 224.0 / 255.0]
        }
    }
}

/// A frame's pixels as they left the pipeline.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// Tightly packed RGB (generated frames, images).
    Rgb(Vec<u8>),
    /// Tightly packed I420: the Y plane, then U and V at half width and height
    /// (rounded up).
    I420 { data: FrameBytes, matrix: YuvMatrix },
}

/// Most free buffers a [`BytePool`] keeps: about what one camera has in flight (the
/// frame being filled, one queued, one in a batch).
const POOL_KEEP: usize = 3;

/// Frame-sized buffers for one camera, given back when its frames are dropped: frames
/// are copied out of GStreamer into memory already allocated and faulted in, instead of
/// a fresh 1.4 MB (720p) or 3 MB (1080p) allocation per frame. Frames held longer (a
/// snapshot, a long queue) simply take new buffers; at most [`POOL_KEEP`] stay free.
#[derive(Debug, Default)]
pub struct BytePool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers this pool had to allocate (the rest were reused).
    allocated: std::sync::atomic::AtomicU64,
}

impl BytePool {
    pub fn new() -> std::sync::Arc<BytePool> {
        std::sync::Arc::new(BytePool::default())
    }

    /// An empty buffer with room for `len` bytes, a free one when there is one.
    pub fn take(self: &std::sync::Arc<Self>, len: usize) -> FrameBytes {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop()).filter(|v| v.capacity() >= len);
        let mut data = reused.unwrap_or_else(|| {
            self.allocated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::with_capacity(len)
        });
        data.clear();
        FrameBytes { data, pool: std::sync::Arc::downgrade(self) }
    }

    /// Buffers allocated so far; a camera streaming steadily stops adding to it.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn give_back(&self, data: Vec<u8>) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < POOL_KEEP
        {
            free.push(data);
        }
    }
}

/// A frame's bytes, going back to their [`BytePool`] (if any, and if it is still
/// there) when dropped. A clone is a plain copy that belongs to no pool.
#[derive(Debug, Default)]
pub struct FrameBytes {
    data: Vec<u8>,
    pool: std::sync::Weak<BytePool>,
}

impl FrameBytes {
    /// Appends `bytes` (filling a buffer just taken from the pool).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }
}

impl std::ops::Deref for FrameBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl From<Vec<u8>> for FrameBytes {
    fn from(data: Vec<u8>) -> FrameBytes {
        FrameBytes { data, pool: std::sync::Weak::new() }
    }
}

impl Clone for FrameBytes {
    fn clone(&self) -> FrameBytes {
        FrameBytes::from(self.data.clone())
    }
}

impl Drop for FrameBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::Rgb(d) => d.len(),
            Pixels::I420 { data, .. } => data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes of a tightly packed I420 frame.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (cw, ch) = (width.div_ceil(2) as usize, height.div_ceil(2) as usize);
    width as usize * height as usize + 2 * cw * ch
}

/// A borrowed, tightly packed I420 image.
#[derive(Debug, Clone, Copy)]
pub struct I420<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    matrix: YuvMatrix,
}

impl<'a> I420<'a> {
    /// Checks that `data` holds a `width` x `height` I420 image.
    pub fn new(data: &'a [u8], width: u32, height: u32, matrix: YuvMatrix) -> Result<Self, String> {
        if width == 0 || height == 0 {
            return Err(format!("empty image ({width}x{height})"));
        }
        if data.len() < i420_len(width, height) {
            return Err(format!("{} bytes cannot hold a {width}x{height} I420 image", data.len()));
        }
        Ok(I420 { data, width, height, matrix })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn matrix(&self) -> YuvMatrix {
        self.matrix
    }

    /// Width and height of the chroma planes.
    pub fn chroma_size(&self) -> (u32, u32) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }

    pub fn y(&self) -> &'a [u8] {
        &self.data[..self.width as usize * self.height as usize]
    }

    pub fn u(&self) -> &'a [u8] {
        let (cw, ch) = self.chroma_size();
        let start = self.width as usize * self.height as usize;
        &self.data[start..start + cw as usize * ch as usize]
    }

    pub fn v(&self) -> &'a [u8] {
        let (cw, ch) = self.chroma_size();
        let start = self.width as usize * self.height as usize + cw as usize * ch as usize;
        &self.data[start..start + cw as usize * ch as usize]
    }

    /// The region `(x, y, width, height)` as packed YUV, one chroma sample per pixel
    /// (each shared by its 2x2 block): what the model's resize reads, three channels
    /// interleaved as RGB would be, so that libtorch's fast uint8 path takes it. The
    /// caller checks that the region fits.
    pub fn to_yuv444(&self, (x0, y0, w, h): (u32, u32, u32, u32), out: &mut Vec<u8>) {
        let (yp, up, vp) = (self.y(), self.u(), self.v());
        let (width, cw) = (self.width as usize, self.chroma_size().0 as usize);
        out.clear();
        out.resize(w as usize * h as usize * 3, 0);
        for (y, dst) in (y0 as usize..(y0 + h) as usize).zip(out.chunks_exact_mut(w as usize * 3)) {
            let (luma, crow) = (&yp[y * width..(y + 1) * width], (y / 2) * cw);
            let (u, v) = (&up[crow..crow + cw], &vp[crow..crow + cw]);
            // An odd first pixel alone, then two pixels per chroma sample.
            let (mut x, mut dst) = (x0 as usize, &mut dst[..]);
            if x % 2 == 1 {
                dst[..3].copy_from_slice(&[luma[x], u[x / 2], v[x / 2]]);
                (x, dst) = (x + 1, &mut dst[3..]);
            }
            let pairs = dst.chunks_exact_mut(6);
            let c0 = x / 2;
            let n = pairs.len();
            for (((px, l), &u), &v) in
                pairs.zip(luma[x..x + 2 * n].chunks_exact(2)).zip(&u[c0..c0 + n]).zip(&v[c0..c0 + n])
            {
                px.copy_from_slice(&[l[0], u, v, l[1], u, v]);
            }
            let done = x + 2 * n;
            if done < (x0 + w) as usize {
                let last = dst.len() - 3;
                dst[last..].copy_from_slice(&[luma[done], u[done / 2], v[done / 2]]);
            }
        }
    }

    /// The region `(x, y, width, height)` as packed RGB, each chroma sample shared by
    /// its 2x2 block as in [`Self::to_yuv444`] (so that converting then resizing and
    /// resizing then converting agree within rounding). Fixed-point. The caller checks
    /// that the region fits.
    pub fn to_rgb(&self, region: (u32, u32, u32, u32), out: &mut Vec<u8>) {
        // rgb = (Y * cy + U * cu + V * cv + bias) >> 12
        let (m, o) = self.matrix.coefficients();
        const ONE: f32 = 4096.0;
        let k = |c: usize, i: usize| (m[c][i] * ONE).round() as i32;
        let (cy, cu, cv) = ([k(0, 0), k(1, 0), k(2, 0)], [k(0, 1), k(1, 1), k(2, 1)], [k(0, 2), k(1, 2), k(2, 2)]);
        let bias = [o[0], o[1], o[2]].map(|v| (v * ONE + ONE / 2.0).round() as i32);
        self.to_yuv444(region, out);
        for px in out.chunks_exact_mut(3) {
            let (l, u, v) = (px[0] as i32, px[1] as i32, px[2] as i32);
            px[0] = ((l * cy[0] + v * cv[0] + bias[0]) >> 12).clamp(0, 255) as u8;
            px[1] = ((l * cy[1] + u * cu[1] + v * cv[1] + bias[1]) >> 12).clamp(0, 255) as u8;
            px[2] = ((l * cy[2] + u * cu[2] + bias[2]) >> 12).clamp(0, 255) as u8;
        }
    }

    /// Grey (0-255, full range) at one pixel: what motion thumbnails compare.
    pub fn grey(&self, x: u32, y: u32) -> u8 {
        let luma = self.data[y as usize * self.width as usize + x as usize] as f32;
        let (m, o) = self.matrix.coefficients();
        // Y is the grey of the pixel; only its range needs mapping.
        (m[0][0] * luma + o[0] + m[0][2] * 128.0).round().clamp(0.0, 255.0) as u8
    }
}

/// Packed RGB to tightly packed I420 (chroma averaged over each 2x2 block): generated
/// frames for tests and benchmarks.
pub fn rgb_to_i420(rgb: &[u8], width: u32, height: u32, matrix: YuvMatrix) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = vec![0u8; i420_len(width, height)];
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        matrix.encode([rgb[i] as f32, rgb[i + 1] as f32, rgb[i + 2] as f32])
    };
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = px(x, y)[0].round().clamp(0.0, 255.0) as u8;
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut u, mut v, mut n) = (0.0, 0.0, 0.0);
            for y in 2 * cy..(2 * cy + 2).min(h) {
                for x in 2 * cx..(2 * cx + 2).min(w) {
                    let p = px(x, y);
                    u += p[1];
                    v += p[2];
                    n += 1.0;
                }
            }
            out[w * h + cy * cw + cx] = (u / n).round().clamp(0.0, 255.0) as u8;
            out[w * h + cw * ch + cy * cw + cx] = (v / n).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// GStreamer's own conversion (what `videoconvert` does) between tightly packed `RGB`
/// and `I420` (BT.709 for the YUV side): how tests and `bench frame` make camera-like
/// frames, and the old whole-frame RGB path they compare against.
pub fn gstreamer_convert(
    data: &[u8],
    from: gstreamer_video::VideoFormat,
    to: gstreamer_video::VideoFormat,
    w: u32,
    h: u32,
) -> Result<Vec<u8>, String> {
    use gstreamer as gst;
    use gstreamer_video::prelude::*;
    use gstreamer_video::{VideoFormat, VideoFrameRef, VideoInfo};
    gst::init().map_err(|e| e.to_string())?;
    let err = |e: gst::glib::BoolError| e.to_string();
    let colorimetry: gstreamer_video::VideoColorimetry = "bt709".parse().map_err(err)?;
    // RGB keeps its own default colorimetry (sRGB); the YUV side says BT.709.
    let info = |f: VideoFormat| {
        let b = VideoInfo::builder(f, w, h);
        if f == VideoFormat::Rgb { b.build() } else { b.colorimetry(&colorimetry).build() }
    };
    let (src_info, dst_info) = (info(from).map_err(err)?, info(to).map_err(err)?);
    // Each plane's bytes per row and rows, tightly packed.
    let planes = |f: VideoFormat| -> Vec<(usize, usize)> {
        let (w, h, cw, ch) = (w as usize, h as usize, w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        if f == VideoFormat::Rgb { vec![(w * 3, h)] } else { vec![(w, h), (cw, ch), (cw, ch)] }
    };
    let mut src = gst::Buffer::with_size(src_info.size()).map_err(err)?;
    {
        let buffer = src.get_mut().ok_or("a new buffer is writable")?;
        let mut frame = VideoFrameRef::from_buffer_ref_writable(buffer, &src_info).map_err(err)?;
        let mut at = 0;
        for (p, (row, rows)) in planes(from).into_iter().enumerate() {
            let stride = frame.plane_stride()[p] as usize;
            let plane = frame.plane_data_mut(p as u32).map_err(err)?;
            for y in 0..rows {
                let line = data.get(at..at + row).ok_or("too few bytes for the frame")?;
                plane[y * stride..y * stride + row].copy_from_slice(line);
                at += row;
            }
        }
    }
    let mut dst = gst::Buffer::with_size(dst_info.size()).map_err(err)?;
    let converter = gstreamer_video::VideoConverter::new(&src_info, &dst_info, None).map_err(err)?;
    {
        let s = VideoFrameRef::from_buffer_ref_readable(src.as_ref(), &src_info).map_err(err)?;
        let buffer = dst.get_mut().ok_or("a new buffer is writable")?;
        let mut d = VideoFrameRef::from_buffer_ref_writable(buffer, &dst_info).map_err(err)?;
        converter.frame_ref(&s, &mut d);
    }
    let frame = VideoFrameRef::from_buffer_ref_readable(dst.as_ref(), &dst_info).map_err(err)?;
    let mut out = Vec::with_capacity(dst_info.size());
    for (p, (row, rows)) in planes(to).into_iter().enumerate() {
        let stride = frame.plane_stride()[p] as usize;
        let plane = frame.plane_data(p as u32).map_err(err)?;
        for y in 0..rows {
            out.extend_from_slice(&plane[y * stride..y * stride + row]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes_go_back_to_their_pool_and_are_reused() {
        let pool = BytePool::new();
        let mut a = pool.take(1000);
        a.extend_from_slice(&[7; 1000]);
        let at = a.as_ptr();
        drop(a);
        let b = pool.take(1000);
        assert_eq!((b.as_ptr(), b.len(), pool.allocated()), (at, 0, 1), "the same memory, emptied");
        // More frames alive than the pool keeps free: new ones, and only a few kept.
        let held: Vec<FrameBytes> = (0..6).map(|_| pool.take(1000)).collect();
        assert_eq!(pool.allocated(), 7);
        drop((b, held));
        assert_eq!(pool.free.lock().unwrap().len(), POOL_KEEP);
        // A bigger frame (the stream changed size) does not take a buffer too small.
        assert!(pool.take(5000).data.capacity() >= 5000);
        // A clone belongs to no pool; bytes outliving their pool are simply freed.
        let c = pool.take(10);
        assert!(c.clone().pool.upgrade().is_none());
        drop(pool);
        drop(c);
    }

    /// The floating-point conversion, each chroma sample shared by its 2x2 block: what
    /// the fixed-point `to_rgb` must equal within a level.
    fn reference(image: &I420<'_>, x: u32, y: u32) -> [f32; 3] {
        let (m, o) = image.matrix().coefficients();
        let cw = image.chroma_size().0;
        let c = ((y / 2) * cw + x / 2) as usize;
        let (l, u, v) = (image.y()[(y * image.width() + x) as usize] as f32, image.u()[c] as f32, image.v()[c] as f32);
        [0, 1, 2].map(|c| (m[c][0] * l + m[c][1] * u + m[c][2] * v + o[c]).clamp(0.0, 255.0))
    }

    #[test]
    fn fixed_point_conversion_equals_the_floating_point_one() {
        let (w, h) = (37u32, 23u32);
        let data: Vec<u8> = (0..i420_len(w, h)).map(|i| ((i * 7919) % 251) as u8).collect();
        for matrix in [YuvMatrix::BT601, YuvMatrix::BT709.full_range(true)] {
            let image = I420::new(&data, w, h, matrix).unwrap();
            let mut out = Vec::new();
            image.to_rgb((3, 5, 30, 17), &mut out);
            for y in 0..17 {
                for x in 0..30 {
                    let want = reference(&image, x + 3, y + 5);
                    for c in 0..3 {
                        let got = out[((y * 30 + x) * 3 + c) as usize] as f32;
                        assert!(
                            (got - want[c as usize]).abs() <= 1.0,
                            "{matrix:?} ({x},{y}) channel {c}: {got} against {}",
                            want[c as usize]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conversion_round_trips_within_rounding() {
        // Flat 4x4 blocks of one colour each: inside them chroma subsampling and its
        // interpolation lose nothing, so only rounding separates the round trip from
        // the original.
        let (w, h) = (16u32, 12u32);
        let colours = [[200u8, 30, 40], [10, 220, 90], [90, 90, 250], [128, 128, 128], [16, 16, 16], [240, 240, 10]];
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&colours[((y / 4) * 4 + x / 4) as usize % colours.len()]);
            }
        }
        let inner = |i: usize| {
            let (x, y) = ((i / 3) % w as usize, (i / 3) / w as usize);
            (1..=2).contains(&(x % 4)) && (1..=2).contains(&(y % 4))
        };
        for matrix in [YuvMatrix::BT601, YuvMatrix::BT709, YuvMatrix::BT709.full_range(true)] {
            let yuv = rgb_to_i420(&rgb, w, h, matrix);
            let image = I420::new(&yuv, w, h, matrix).unwrap();
            let mut back = Vec::new();
            image.to_rgb((0, 0, w, h), &mut back);
            let worst = rgb
                .iter()
                .zip(&back)
                .enumerate()
                .filter(|(i, _)| inner(*i))
                .map(|(_, (a, b))| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 2, "{matrix:?}: round trip off by {worst} levels");
            // Grey is Y in full range.
            let g = image.grey(0, 0) as i32;
            let expected = (0.2126 * 200.0 + 0.7152 * 30.0 + 0.0722 * 40.0) as i32;
            if matrix == YuvMatrix::BT709 {
                assert!((g - expected).abs() <= 2, "grey {g}, expected {expected}");
            }
        }
        // A region: the same pixels as the whole frame's.
        let yuv = rgb_to_i420(&rgb, w, h, YuvMatrix::BT601);
        let image = I420::new(&yuv, w, h, YuvMatrix::BT601).unwrap();
        let (mut whole, mut part) = (Vec::new(), Vec::new());
        image.to_rgb((0, 0, w, h), &mut whole);
        image.to_rgb((2, 2, 3, 2), &mut part);
        assert_eq!(&part[..9], &whole[(2 * 16 + 2) * 3..(2 * 16 + 5) * 3]);
        assert!(I420::new(&yuv[..10], w, h, YuvMatrix::BT601).is_err());
    }
}
