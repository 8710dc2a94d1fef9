//! Scenes of generated vehicles, as frames and as H.264 clips.
//!
//! A [`Scene`] is a frame size, a rate and timed segments; each segment places vehicles
//! of given classes in areas of the frame (fractions of its width and height). A vehicle
//! either stands still (frames of a segment where nothing moves are identical, which
//! keeps encoding cheap) or crosses from its area to another position over the segment:
//! the wide views of street cameras, with the truth (class and box) of every frame known.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::RgbImage;
use imageproc::rect::Rect;
use rand::RngExt;

use super::{Class, class, draw_background, draw_vehicle, rng, street};
use crate::locate::Bounds;

/// A vehicle in a scene: class and area (fractions of the frame).
#[derive(Debug, Clone)]
pub struct Placement {
    pub class: Class,
    pub area: [f32; 4],
    /// Where the area's top-left corner is at the segment's end (fractions), for a
    /// vehicle that moves; it moves at a constant speed.
    pub to: Option<[f32; 2]>,
}

/// A stretch of time showing the same vehicles.
#[derive(Debug, Clone)]
pub struct Segment {
    pub duration: Duration,
    pub vehicles: Vec<Placement>,
    /// Brightness of the whole picture (1 = as drawn): auto-exposure, lights, dusk.
    pub gain: f32,
}

impl Segment {
    fn moves(&self) -> bool {
        self.vehicles.iter().any(|v| v.to.is_some())
    }
}

/// What a synthetic camera shows.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub segments: Vec<Segment>,
    pub seed: u64,
    /// A still street (with light sensor noise) behind the vehicles rather than a
    /// noisy grey backdrop drawn afresh per segment.
    pub street: bool,
    /// B-frames between reference frames (0: none, as most IP cameras send); nothing
    /// refers to them, which the decode gate can use.
    pub bframes: u32,
}

/// A vehicle as drawn in one frame: the ground truth of locating.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub class: Class,
    /// Index of the vehicle in its segment (the same vehicle in every frame of it).
    pub vehicle: usize,
    /// Its box, clipped to the frame.
    pub bounds: Bounds,
    /// The share of its box inside the frame (1: wholly in view).
    pub visible: f32,
}

impl Scene {
    /// One vehicle of `class` filling the frame, forever.
    pub fn single(class: Class, width: u32, height: u32, fps: u32) -> Scene {
        Scene {
            width,
            height,
            fps,
            seed: 1,
            street: false,
            bframes: 0,
            segments: vec![Segment {
                duration: Duration::from_secs(3600),
                vehicles: vec![Placement { class, area: [0.0, 0.0, 1.0, 1.0], to: None }],
                gain: 1.0,
            }],
        }
    }

    /// Parses a scene description: segments separated by `;`, each `SECONDS[*GAIN]:`
    /// followed by `+`-separated `view/make/model[@x,y,w,h[>x2,y2]]` (area as fractions;
    /// whole frame when omitted; `>x2,y2` moves the area's corner there over the
    /// segment) or nothing for an empty road. A first segment `street` draws a still
    /// street behind everything; `bframes=N` (before the segments, N up to 4) encodes
    /// N B-frames between reference frames.
    /// Examples: `4:front/bmw/3-series;4:angled/audi/q7@0,0,0.5,1+rear/volvo/xc90@0.5,0,0.5,1;2:`
    /// and `street;5:angled/bmw/3-series@-0.25,0.5,0.25,0.3>1,0.5;2*1.4:`.
    /// `wide:VIEW/MAKE/MODEL` is a generated street ([`wide_view`]): twelve vehicles
    /// crossing, every third of that class.
    pub fn parse(text: &str, width: u32, height: u32, fps: u32) -> Result<Scene, String> {
        if let Some(name) = text.trim().strip_prefix("wide:") {
            let parts: Vec<&str> = name.trim().split('/').collect();
            let [view, make, model] = parts[..] else { return Err(format!("`{name}`: expected view/make/model")) };
            let class = class(view, make, model).ok_or_else(|| format!("`{name}` is not a synthetic class"))?;
            return Ok(wide_view(&class, 12, 5.0, (width, height), fps, 1));
        }
        let mut segments = Vec::new();
        let mut street = false;
        let mut bframes = 0;
        for seg in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if seg == "street" && segments.is_empty() && !street {
                street = true;
                continue;
            }
            if let Some(n) = seg.strip_prefix("bframes=").filter(|_| segments.is_empty()) {
                bframes = n
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n <= 4)
                    .ok_or_else(|| format!("`{seg}`: B-frames must be a number from 0 to 4"))?;
                continue;
            }
            let (head, rest) =
                seg.split_once(':').ok_or_else(|| format!("segment `{seg}`: expected SECONDS:vehicles"))?;
            let (secs, gain) = head.split_once('*').unwrap_or((head, "1"));
            let secs: f64 = secs
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .ok_or_else(|| format!("segment `{seg}`: `{secs}` is not a number of seconds (up to a day)"))?;
            let gain: f32 = gain
                .trim()
                .parse()
                .ok()
                .filter(|g: &f32| g.is_finite() && *g > 0.0 && *g <= 4.0)
                .ok_or_else(|| format!("segment `{seg}`: brightness `{gain}` must be above 0 and at most 4"))?;
            let mut vehicles = Vec::new();
            for v in rest.split('+').map(str::trim).filter(|s| !s.is_empty()) {
                vehicles.push(placement(v)?);
            }
            segments.push(Segment { duration: Duration::from_secs_f64(secs), vehicles, gain });
        }
        if segments.is_empty() {
            return Err("a scene needs at least one segment".into());
        }
        Ok(Scene { width, height, fps, segments, seed: 1, street, bframes })
    }

    /// Total length of one pass through the segments.
    pub fn period(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Frames in one pass.
    pub fn frames(&self) -> u64 {
        self.segments.iter().map(|s| self.segment_frames(s)).sum()
    }

    fn segment_frames(&self, s: &Segment) -> u64 {
        ((s.duration.as_secs_f64() * self.fps.max(1) as f64).round() as u64).max(1)
    }

    /// Which segment frame `n` belongs to (the scene loops), and the frame's index
    /// within it.
    pub fn position(&self, n: u64) -> (usize, u64) {
        let mut at = n % self.frames().max(1);
        for (i, s) in self.segments.iter().enumerate() {
            let len = self.segment_frames(s);
            if at < len {
                return (i, at);
            }
            at -= len;
        }
        (self.segments.len() - 1, 0)
    }

    /// Which segment frame `n` belongs to.
    pub fn segment_at(&self, n: u64) -> usize {
        self.position(n).0
    }

    /// Frame `n` (the scene loops) and the vehicles in it. For many frames, a
    /// [`Painter`] is quicker.
    pub fn frame(&self, n: u64) -> (RgbImage, Vec<Truth>) {
        Painter::new(self).frame(n)
    }

    fn segment_seed(&self, i: usize) -> u64 {
        self.seed.wrapping_mul(1000).wrapping_add(i as u64 * 17)
    }

    /// One image per segment (its first frame).
    pub fn render_segments(&self) -> Vec<RgbImage> {
        let painter = Painter::new(self);
        let mut n = 0;
        let mut out = Vec::new();
        for s in &self.segments {
            out.push(painter.frame(n).0);
            n += self.segment_frames(s);
        }
        out
    }
}

/// A generated street camera: `passages` vehicles cross the frame one segment each
/// (`seconds` long), at street-camera sizes (15-28% of the frame wide), left to right
/// in the near lane, on a still street; every third passage is `wanted`, the others are
/// other classes. Every fourth passage has a second vehicle crossing the other way in
/// the far lane (the two overlap mid-frame; an empty second follows it), and a brighter
/// empty second follows every fifth passage (the camera's exposure changing). The same
/// `seed` gives the same street.
pub fn wide_view(wanted: &Class, passages: usize, seconds: f32, size: (u32, u32), fps: u32, seed: u64) -> Scene {
    let mut r = rng(seed);
    let others: Vec<Class> = super::catalogue().into_iter().filter(|c| c.make != wanted.make).collect();
    let (w, h) = (size.0 as f32, size.1 as f32);
    let mut segments = Vec::new();
    let crossing = |class: Class, r: &mut rand::rngs::StdRng, lane: f32, rightwards: bool| {
        let fw: f32 = r.random_range(0.15..0.28);
        let fh = (fw * w / h).min(0.5);
        let y = lane - fh / 2.0;
        let (from, to) = if rightwards { (-fw, 1.0) } else { (1.0, -fw) };
        Placement { class, area: [from, y, fw, fh], to: Some([to, y]) }
    };
    for i in 0..passages {
        let class = if i % 3 == 0 { wanted.clone() } else { others[r.random_range(0..others.len())].clone() };
        let mut vehicles = vec![crossing(class, &mut r, 0.64, true)];
        let pair = i % 4 == 3;
        if pair {
            let other = others[r.random_range(0..others.len())].clone();
            vehicles.push(crossing(other, &mut r, 0.42, false));
        }
        segments.push(Segment { duration: Duration::from_secs_f32(seconds), vehicles, gain: 1.0 });
        if pair {
            // The far lane's vehicle leaves on the left as the next one would come in.
            segments.push(Segment { duration: Duration::from_secs(1), vehicles: vec![], gain: 1.0 });
        }
        if i % 5 == 4 {
            segments.push(Segment { duration: Duration::from_secs(1), vehicles: vec![], gain: 1.35 });
        }
    }
    Scene { width: size.0, height: size.1, fps, segments, seed, street: true, bframes: 0 }
}

/// Paints a scene's frames, keeping what every frame shares: the street and a few
/// planes of sensor noise (frames take them in turn).
pub struct Painter<'a> {
    scene: &'a Scene,
    street: Option<Vec<u8>>,
    noise: Vec<Vec<i8>>,
}

impl<'a> Painter<'a> {
    pub fn new(scene: &'a Scene) -> Painter<'a> {
        let len = (scene.width * scene.height * 3) as usize;
        let (street, noise) = if scene.street {
            let mut r = rng(scene.seed.wrapping_mul(7919));
            let noise = (0..4).map(|_| (0..len).map(|_| r.random_range(-3i8..=3)).collect()).collect();
            (Some(street(scene.width, scene.height)), noise)
        } else {
            (None, Vec::new())
        };
        Painter { scene, street, noise }
    }

    /// Frame `n` (the scene loops) and the vehicles in it.
    pub fn frame(&self, n: u64) -> (RgbImage, Vec<Truth>) {
        let scene = self.scene;
        let (si, k) = scene.position(n);
        let seg = &scene.segments[si];
        // Where the moving vehicles are: the segment's progress, 0 at its first frame.
        let t = k as f32 / scene.segment_frames(seg).saturating_sub(1).max(1) as f32;
        let mut img = match &self.street {
            Some(street) => RgbImage::from_raw(scene.width, scene.height, street.clone()).unwrap_or_default(),
            None => {
                let mut img = RgbImage::new(scene.width, scene.height);
                draw_background(&mut img, &mut rng(scene.segment_seed(si)));
                img
            }
        };
        let (fw, fh) = (scene.width as f32, scene.height as f32);
        let mut truth = Vec::new();
        for (vi, v) in seg.vehicles.iter().enumerate() {
            let [x, y, w, h] = v.area;
            let (x, y) = match v.to {
                Some([x2, y2]) => (x + (x2 - x) * t, y + (y2 - y) * t),
                None => (x, y),
            };
            let area =
                Rect::at((x * fw) as i32, (y * fh) as i32).of_size(((w * fw) as u32).max(8), ((h * fh) as u32).max(8));
            // The same draw of each vehicle in every frame of its segment: it moves,
            // it does not change.
            let mut r = rng(scene.segment_seed(si).wrapping_add(1 + vi as u64));
            let drawn = draw_vehicle(&mut img, area, &v.class, &mut r);
            if let Some(bounds) = clip(drawn, scene.width, scene.height) {
                let whole = drawn.width() as f32 * drawn.height() as f32;
                let visible = (bounds.area() as f32 / whole.max(1.0)).min(1.0);
                truth.push(Truth { class: v.class.clone(), vehicle: vi, bounds, visible });
            }
        }
        if seg.gain != 1.0 {
            for px in img.iter_mut() {
                *px = (*px as f32 * seg.gain).min(255.0) as u8;
            }
        }
        if let Some(noise) = self.noise.get(n as usize % self.noise.len().max(1)) {
            for (px, d) in img.iter_mut().zip(noise) {
                *px = px.saturating_add_signed(*d);
            }
        }
        (img, truth)
    }
}

/// `view/make/model[@x,y,w,h[>x2,y2]]`.
fn placement(v: &str) -> Result<Placement, String> {
    let numbers = |a: &str| -> Result<Vec<f32>, String> {
        a.split(',')
            .map(|x| x.trim().parse::<f32>().ok().filter(|f| f.is_finite() && f.abs() <= 10.0))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("`{a}`: expected fractions of the frame, separated by commas"))
    };
    let (name, area, to) = match v.split_once('@') {
        Some((n, a)) => {
            let (a, to) = match a.split_once('>') {
                Some((a, to)) => {
                    let to: [f32; 2] =
                        numbers(to)?.try_into().map_err(|_| format!("`>{to}`: expected two numbers, x,y"))?;
                    (a, Some(to))
                }
                None => (a, None),
            };
            let area: [f32; 4] = numbers(a)?.try_into().map_err(|_| format!("`{a}`: expected four numbers"))?;
            if area[2] <= 0.0 || area[3] <= 0.0 {
                return Err(format!("`{a}`: width and height must be above 0"));
            }
            (n, area, to)
        }
        None => (v, [0.0, 0.0, 1.0, 1.0], None),
    };
    let parts: Vec<&str> = name.split('/').collect();
    let [view, make, model] = parts[..] else { return Err(format!("`{name}`: expected view/make/model")) };
    let class = class(view, make, model).ok_or_else(|| format!("`{name}` is not a synthetic class"))?;
    Ok(Placement { class, area, to })
}

/// The part of `r` inside a `width` x `height` frame, if any.
fn clip(r: Rect, width: u32, height: u32) -> Option<Bounds> {
    let x0 = r.left().clamp(0, width as i32) as u32;
    let y0 = r.top().clamp(0, height as i32) as u32;
    let x1 = (r.left() + r.width() as i32).clamp(0, width as i32) as u32;
    let y1 = (r.top() + r.height() as i32).clamp(0, height as i32) as u32;
    (x1 > x0 && y1 > y0).then(|| Bounds { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

/// The x264 settings both the clip writer and the RTSP server use: fast to encode, a
/// keyframe every second, and `bframes` B-frames that nothing refers to (none by
/// default, as most IP cameras send).
pub fn x264_settings(fps: u32, bframes: u32) -> String {
    format!(
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={} bframes={bframes} b-pyramid=false b-adapt=false",
        fps.max(1)
    )
}

/// A pipeline that takes the scene's RGB frames from `src` and encodes them with
/// [`x264_settings`], then `tail`; not yet playing.
fn rgb_encoder(scene: &Scene, tail: &str, what: &str) -> Result<(gst::Pipeline, gst_app::AppSrc), String> {
    gst::init().map_err(|e| e.to_string())?;
    let launch = format!(
        "appsrc name=src format=time ! videoconvert ! video/x-raw,format=I420 ! {} ! {tail}",
        x264_settings(scene.fps, scene.bframes)
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
    let still = scene.render_segments();
    let painter = Painter::new(scene);
    let frame_ns = 1_000_000_000 / scene.fps.max(1) as u64;
    for n in 0..scene.frames() {
        let (si, _) = scene.position(n);
        if scene.segments[si].moves() || scene.street {
            push_frame(&src, &painter.frame(n).0, n, frame_ns)?;
        } else {
            push_frame(&src, &still[si], n, frame_ns)?;
        }
    }
    src.end_of_stream().map_err(|e| format!("ending clip: {e:?}"))?;
    let result = wait_for_eos(&pipeline, "writing clip");
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn wait_for_eos(pipeline: &gst::Pipeline, what: &str) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("no bus")?;
    match bus.timed_pop_filtered(gst::ClockTime::from_seconds(120), &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(format!("{what}: {}", e.error())),
            _ => Ok(()),
        },
        None => Err(format!("{what} timed out")),
    }
}

/// A scene encoded once, for serving in a loop.
pub struct Encoded {
    /// H.264 byte-stream caps (with size and rate).
    pub caps: gst::Caps,
    /// Per segment, access units starting with a keyframe that carries SPS/PPS: one GOP
    /// (`fps` frames) for a segment where nothing moves, looped for as long as it lasts;
    /// every frame of a segment where vehicles move. In decode order, which B-frames
    /// make differ from the order frames are shown in.
    pub chunks: Vec<Vec<Unit>>,
    /// How many frames decoding runs ahead of showing (0 without B-frames): a unit's
    /// decoding time is its place in the stream, its showing time that many frames
    /// later than its place in the chunk's showing order.
    pub reorder: u64,
}

/// One coded frame and where it is shown in its chunk.
pub struct Unit {
    pub buffer: gst::Buffer,
    /// Its place in showing order from the chunk's keyframe (0).
    pub shown: u64,
}

/// Encodes each segment on its own (so each starts with a keyframe). A still segment is
/// one GOP of identical frames, looped by the server for as long as the segment lasts:
/// the stream a live encoder would send, without a live encoder's CPU cost on the
/// machine being measured.
pub fn encode_segments(scene: &Scene) -> Result<Encoded, String> {
    let gop = scene.fps.max(1) as u64;
    let frame_ns = 1_000_000_000 / gop;
    let mut chunks = Vec::with_capacity(scene.segments.len());
    let mut caps = None;
    let mut first = 0u64;
    let mut reorder = 0u64;
    let painter = Painter::new(scene);
    for (si, seg) in scene.segments.iter().enumerate() {
        let frames = scene.segment_frames(seg);
        let tail = "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false";
        let (pipeline, src) = rgb_encoder(scene, tail, "encoder")?;
        let sink = pipeline.by_name("sink").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).ok_or("no appsink")?;
        src.set_max_bytes(0);
        pipeline.set_state(gst::State::Playing).map_err(|e| format!("encoder pipeline: {e}"))?;
        let moving = seg.moves() || scene.street;
        let count = if moving { frames } else { gop };
        let still = if moving { None } else { Some(painter.frame(first).0) };
        for k in 0..count {
            match &still {
                Some(image) => push_frame(&src, image, k, frame_ns)?,
                None => push_frame(&src, &painter.frame(first + k).0, k, frame_ns)?,
            }
        }
        src.end_of_stream().map_err(|e| format!("ending the encode: {e:?}"))?;
        let mut units = Vec::with_capacity(count as usize);
        while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(60)) {
            if caps.is_none() {
                caps = sample.caps_owned();
            }
            if let Some(b) = sample.buffer_owned() {
                units.push(b);
            }
            if units.len() == count as usize {
                break;
            }
        }
        let _ = pipeline.set_state(gst::State::Null);
        if units.len() != count as usize {
            return Err(format!("segment {si}: the encoder gave {} of {count} frames", units.len()));
        }
        if units[0].flags().contains(gst::BufferFlags::DELTA_UNIT) {
            return Err(format!("segment {si} does not start with a keyframe"));
        }
        let start = units[0].pts().map_or(0, |t| t.nseconds());
        let units: Vec<Unit> = units
            .into_iter()
            .map(|buffer| {
                let at = buffer.pts().map_or(start, |t| t.nseconds()).saturating_sub(start);
                Unit { shown: (at + frame_ns / 2) / frame_ns, buffer }
            })
            .collect();
        for (k, u) in units.iter().enumerate() {
            reorder = reorder.max((k as u64).saturating_sub(u.shown));
        }
        chunks.push(units);
        first += frames;
    }
    Ok(Encoded { caps: caps.ok_or("the encoder gave no caps")?, chunks, reorder })
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
        assert!(Scene::parse("1e400:", 64, 48, 10).is_err());
        let wide = Scene::parse("wide:angled/bmw/3-series", 64, 48, 10).unwrap();
        assert!(wide.street && wide.segments.len() >= 12);
        assert!(Scene::parse("2*0:", 64, 48, 10).is_err());
        assert!(Scene::parse("front/bmw/x5", 64, 48, 10).is_err());
    }

    #[test]
    fn moving_vehicles_cross_a_street_with_their_truth() {
        let s = Scene::parse("street;2:angled/bmw/3-series@-0.2,0.5,0.2,0.3>1,0.5;1*1.5:", 200, 100, 10).unwrap();
        assert!(s.street);
        assert_eq!((s.frames(), s.segments[1].gain), (30, 1.5));
        // Off-frame at first, then moving right by the same step every frame.
        let (_, at0) = s.frame(0);
        let (_, at5) = s.frame(5);
        let (_, at6) = s.frame(6);
        assert!(at0.is_empty() || at0[0].bounds.width < 40, "starts outside the frame: {at0:?}");
        let (b5, b6) = (at5[0].bounds, at6[0].bounds);
        assert!(b6.x > b5.x && b6.width == b5.width && b6.y == b5.y, "{b5:?} then {b6:?}");
        assert_eq!(at5[0].class.make, "bmw");
        // The truth covers the drawn vehicle: inside it the frame is not the street.
        let (img, _) = s.frame(10);
        let (_, truth) = s.frame(10);
        let b = truth[0].bounds;
        let plain = crate::synthetic::street(200, 100);
        let differs = |x: u32, y: u32| {
            let i = ((y * 200 + x) * 3) as usize;
            img.as_raw()[i..i + 3].iter().zip(&plain[i..i + 3]).any(|(a, b)| a.abs_diff(*b) > 20)
        };
        let inside = (b.y..b.y + b.height).flat_map(|y| (b.x..b.x + b.width).map(move |x| (x, y)));
        let moved = inside.clone().filter(|&(x, y)| differs(x, y)).count();
        assert!(moved * 2 > inside.count(), "the vehicle fills most of its box");
        // The brighter segment: no vehicle, every level raised.
        let (bright, none) = s.frame(25);
        assert!(none.is_empty());
        let mean = |p: &[u8]| p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
        assert!(mean(bright.as_raw()) > 1.3 * mean(&plain));
    }

    #[test]
    fn encoded_segments_are_one_gop_each_starting_with_a_keyframe() {
        let scene = Scene::parse("3:front/bmw/3-series; 2:", 64, 48, 5).unwrap();
        let e = encode_segments(&scene).unwrap();
        assert_eq!(e.chunks.len(), 2);
        let moving = Scene::parse("street; 2:front/bmw/3-series@0,0,0.5,0.5>0.5,0.5", 64, 48, 5).unwrap();
        let m = encode_segments(&moving).unwrap();
        assert_eq!(m.chunks[0].len(), 10, "every frame of a moving segment");
        for chunk in &e.chunks {
            assert_eq!(chunk.len(), 5);
            assert!(!chunk[0].buffer.flags().contains(gst::BufferFlags::DELTA_UNIT));
            assert!(chunk[1..].iter().all(|u| u.buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)));
            assert_eq!(chunk.iter().map(|u| u.shown).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        }
        assert_eq!(e.reorder, 0);
        assert_eq!(e.caps.structure(0).map(|s| s.name().as_str()), Some("video/x-h264"));
    }

    #[test]
    fn b_frames_are_coded_out_of_showing_order_and_nothing_refers_to_them() {
        use crate::camera::nal::{Framing, h264_reference};
        let scene = Scene::parse("bframes=2; street; 2:front/bmw/3-series@0,0,0.5,0.5>0.5,0.5", 64, 48, 10).unwrap();
        assert_eq!(scene.bframes, 2);
        let e = encode_segments(&scene).unwrap();
        assert!(e.reorder >= 1, "decoding runs ahead: {}", e.reorder);
        let chunk = &e.chunks[0];
        let mut shown: Vec<u64> = chunk.iter().map(|u| u.shown).collect();
        assert_ne!(shown, (0..20).collect::<Vec<_>>(), "B-frames come after the frame shown after them");
        shown.sort();
        assert_eq!(shown, (0..20).collect::<Vec<_>>(), "every frame shown once");
        // The units shown before one decoded earlier are the B-frames: non-reference.
        let reference = |u: &Unit| h264_reference(&u.buffer.map_readable().unwrap(), Framing::ByteStream);
        let mut b_frames = 0;
        for (k, u) in chunk.iter().enumerate() {
            let b = chunk[..k].iter().any(|earlier| earlier.shown > u.shown);
            assert_eq!(reference(u), Some(!b), "unit {k} shown {}", u.shown);
            b_frames += b as usize;
        }
        assert!(b_frames >= 10, "two of every three frames: {b_frames}");
        assert!(Scene::parse("bframes=5; 1:", 64, 48, 10).is_err());
        assert!(Scene::parse("1:; bframes=1", 64, 48, 10).is_err());
    }
}
