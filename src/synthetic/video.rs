//! Scenes of generated vehicles, as frames and as H.264 clips.
//!
//! A [`Scene`] is a frame size, a rate and timed segments; each segment places vehicles
//! of given classes in areas of the frame (fractions of its width and height). Frames of
//! one segment are identical, which keeps encoding cheap and makes every analysed frame
//! a fair test of the classifier.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::RgbImage;
use imageproc::rect::Rect;

use super::{Class, class, draw_background, draw_vehicle, rng};

/// A vehicle in a scene: class and area (fractions of the frame).
#[derive(Debug, Clone)]
pub struct Placement {
    pub class: Class,
    pub area: [f32; 4],
}

/// A stretch of time showing the same vehicles.
#[derive(Debug, Clone)]
pub struct Segment {
    pub duration: Duration,
    pub vehicles: Vec<Placement>,
}

/// What a synthetic camera shows.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub segments: Vec<Segment>,
    pub seed: u64,
}

impl Scene {
    /// One vehicle of `class` filling the frame, forever.
    pub fn single(class: Class, width: u32, height: u32, fps: u32) -> Scene {
        Scene {
            width,
            height,
            fps,
            seed: 1,
            segments: vec![Segment {
                duration: Duration::from_secs(3600),
                vehicles: vec![Placement { class, area: [0.0, 0.0, 1.0, 1.0] }],
            }],
        }
    }

    /// Parses a scene description: segments separated by `;`, each `SECONDS:` followed by
    /// `,`-separated `view/make/model[@x,y,w,h]` (area as fractions; whole frame when
    /// omitted) or nothing for an empty road.
    /// Example: `4:front/bmw/3-series;4:angled/audi/q7@0,0,0.5,1+rear/volvo/xc90@0.5,0,0.5,1;2:`.
    pub fn parse(text: &str, width: u32, height: u32, fps: u32) -> Result<Scene, String> {
        let mut segments = Vec::new();
        for seg in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (secs, rest) =
                seg.split_once(':').ok_or_else(|| format!("segment `{seg}`: expected SECONDS:vehicles"))?;
            let secs: f64 =
                secs.trim().parse().map_err(|_| format!("segment `{seg}`: `{secs}` is not a number of seconds"))?;
            let mut vehicles = Vec::new();
            for v in rest.split('+').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, area) = match v.split_once('@') {
                    Some((n, a)) => {
                        let nums: Vec<f32> = a
                            .split(',')
                            .map(|x| x.trim().parse::<f32>())
                            .collect::<Result<_, _>>()
                            .map_err(|_| format!("`{a}`: expected x,y,w,h fractions"))?;
                        let area: [f32; 4] = nums.try_into().map_err(|_| format!("`{a}`: expected four numbers"))?;
                        (n, area)
                    }
                    None => (v, [0.0, 0.0, 1.0, 1.0]),
                };
                let parts: Vec<&str> = name.split('/').collect();
                let [view, make, model] = parts[..] else { return Err(format!("`{name}`: expected view/make/model")) };
                let class = class(view, make, model).ok_or_else(|| format!("`{name}` is not a synthetic class"))?;
                vehicles.push(Placement { class, area });
            }
            segments.push(Segment { duration: Duration::from_secs_f64(secs), vehicles });
        }
        if segments.is_empty() {
            return Err("a scene needs at least one segment".into());
        }
        Ok(Scene { width, height, fps, segments, seed: 1 })
    }

    /// Total length of one pass through the segments.
    pub fn period(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Renders one image per segment.
    pub fn render_segments(&self) -> Vec<RgbImage> {
        self.segments
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let mut r = rng(self.seed.wrapping_mul(1000).wrapping_add(i as u64));
                let mut img = RgbImage::new(self.width, self.height);
                draw_background(&mut img, &mut r);
                for v in &seg.vehicles {
                    let [x, y, w, h] = v.area;
                    let (fw, fh) = (self.width as f32, self.height as f32);
                    let area = Rect::at((x * fw) as i32, (y * fh) as i32)
                        .of_size(((w * fw) as u32).max(8), ((h * fh) as u32).max(8));
                    draw_vehicle(&mut img, area, &v.class, &mut r);
                }
                img
            })
            .collect()
    }

    /// Which segment frame `n` belongs to (the scene loops).
    pub fn segment_at(&self, n: u64) -> usize {
        let period = self.period().as_secs_f64();
        let t = (n as f64 / self.fps as f64) % period.max(1e-9);
        let mut acc = 0.0;
        for (i, s) in self.segments.iter().enumerate() {
            acc += s.duration.as_secs_f64();
            if t < acc {
                return i;
            }
        }
        self.segments.len() - 1
    }
}

/// The x264 settings both the clip writer and the RTSP server use: fast to encode, a
/// keyframe every second, no B-frames (what IP cameras send).
pub fn x264_settings(fps: u32) -> String {
    format!("x264enc tune=zerolatency speed-preset=ultrafast key-int-max={} bframes=0", fps.max(1))
}

/// A pipeline that takes the scene's RGB frames from `src` and encodes them with
/// [`x264_settings`], then `tail`; not yet playing.
fn rgb_encoder(scene: &Scene, tail: &str, what: &str) -> Result<(gst::Pipeline, gst_app::AppSrc), String> {
    gst::init().map_err(|e| e.to_string())?;
    let launch = format!(
        "appsrc name=src format=time ! videoconvert ! video/x-raw,format=I420 ! {} ! {tail}",
        x264_settings(scene.fps)
    );
    let pipeline = gst::parse::launch(&launch)
        .map_err(|e| format!("{what} pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let src = pipeline.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).ok_or("no appsrc")?;
    src.set_caps(Some(&rgb_caps(scene)));
    Ok((pipeline, src))
}

/// Pushes `image` as frame `n` of a stream of `frame_ns` frames.
fn push_frame(src: &gst_app::AppSrc, image: &RgbImage, n: u64, frame_ns: u64) -> Result<(), String> {
    let mut buffer = gst::Buffer::from_slice(image.as_raw().clone());
    if let Some(b) = buffer.get_mut() {
        b.set_pts(gst::ClockTime::from_nseconds(n * frame_ns));
        b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
    }
    src.push_buffer(buffer).map(|_| ()).map_err(|e| format!("pushing frame {n}: {e:?}"))
}

/// Writes one pass of `scene` as H.264 in Matroska to `path`.
pub fn write_clip(scene: &Scene, path: &Path) -> Result<(), String> {
    let (pipeline, src) = rgb_encoder(scene, "h264parse ! matroskamux ! filesink name=sink", "clip")?;
    let sink = pipeline.by_name("sink").ok_or("no sink")?;
    sink.set_property("location", path.to_string_lossy().to_string());
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("clip pipeline: {e}"))?;
    let images = scene.render_segments();
    let frames = (scene.period().as_secs_f64() * scene.fps as f64).round() as u64;
    let frame_ns = 1_000_000_000 / scene.fps.max(1) as u64;
    for n in 0..frames {
        push_frame(&src, &images[scene.segment_at(n)], n, frame_ns)?;
    }
    src.end_of_stream().map_err(|e| format!("ending clip: {e:?}"))?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let result = match bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(120), &[gst::MessageType::Eos, gst::MessageType::Error])
    {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(format!("writing clip: {}", e.error())),
            _ => Ok(()),
        },
        None => Err("writing clip timed out".to_string()),
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// A scene encoded once, for serving in a loop: one GOP per segment.
pub struct Encoded {
    /// H.264 byte-stream caps (with size and rate).
    pub caps: gst::Caps,
    /// Per segment, `fps` access units starting with a keyframe that carries SPS/PPS.
    pub chunks: Vec<Vec<gst::Buffer>>,
}

/// Encodes one second (one GOP) of each segment. Frames of a segment are identical, so
/// looping that GOP for as long as the segment lasts is the stream a live encoder would
/// send, without a live encoder's CPU cost on the machine being measured.
pub fn encode_segments(scene: &Scene) -> Result<Encoded, String> {
    let tail = "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false";
    let (pipeline, src) = rgb_encoder(scene, tail, "encoder")?;
    let sink = pipeline.by_name("sink").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).ok_or("no appsink")?;
    src.set_max_bytes(0);
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("encoder pipeline: {e}"))?;
    let gop = scene.fps.max(1) as usize;
    let frame_ns = 1_000_000_000 / gop as u64;
    let images = scene.render_segments();
    let mut n = 0u64;
    for image in &images {
        for _ in 0..gop {
            push_frame(&src, image, n, frame_ns)?;
            n += 1;
        }
    }
    src.end_of_stream().map_err(|e| format!("ending the encode: {e:?}"))?;
    let mut units = Vec::with_capacity(n as usize);
    let mut caps = None;
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(60)) {
        if caps.is_none() {
            caps = sample.caps_owned();
        }
        if let Some(b) = sample.buffer_owned() {
            units.push(b);
        }
        if units.len() == n as usize {
            break;
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    if units.len() != n as usize {
        return Err(format!("the encoder gave {} of {n} frames", units.len()));
    }
    let chunks: Vec<Vec<gst::Buffer>> = units.chunks(gop).map(|c| c.to_vec()).collect();
    if let Some(i) = chunks.iter().position(|c| c[0].flags().contains(gst::BufferFlags::DELTA_UNIT)) {
        return Err(format!("segment {i} does not start with a keyframe"));
    }
    Ok(Encoded { caps: caps.ok_or("the encoder gave no caps")?, chunks })
}

/// Caps of the RGB frames a scene produces.
pub fn rgb_caps(scene: &Scene) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", scene.width as i32)
        .field("height", scene.height as i32)
        .field("framerate", gst::Fraction::new(scene.fps as i32, 1))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_parse_and_loop() {
        let s = Scene::parse(
            "2:front/bmw/3-series; 1:angled/audi/q7@0,0,0.5,1+rear/volvo/xc90@0.5,0,0.5,1; 1:",
            64,
            48,
            10,
        )
        .unwrap();
        assert_eq!(s.segments.len(), 3);
        assert_eq!(s.segments[1].vehicles.len(), 2);
        assert_eq!(s.segments[2].vehicles.len(), 0);
        assert_eq!(s.period(), Duration::from_secs(4));
        assert_eq!(
            (s.segment_at(0), s.segment_at(19), s.segment_at(20), s.segment_at(35), s.segment_at(40)),
            (0, 0, 1, 2, 0)
        );
        assert_eq!(s.render_segments().len(), 3);
        assert!(Scene::parse("2:front/tesla/x", 64, 48, 10).is_err());
        assert!(Scene::parse("front/bmw/x5", 64, 48, 10).is_err());
    }

    #[test]
    fn encoded_segments_are_one_gop_each_starting_with_a_keyframe() {
        let scene = Scene::parse("3:front/bmw/3-series; 2:", 64, 48, 5).unwrap();
        let e = encode_segments(&scene).unwrap();
        assert_eq!(e.chunks.len(), 2);
        for chunk in &e.chunks {
            assert_eq!(chunk.len(), 5);
            assert!(!chunk[0].flags().contains(gst::BufferFlags::DELTA_UNIT));
            assert!(chunk[1..].iter().all(|b| b.flags().contains(gst::BufferFlags::DELTA_UNIT)));
        }
        assert_eq!(e.caps.structure(0).map(|s| s.name().as_str()), Some("video/x-h264"));
    }
}
