//! The GStreamer side of a camera: build the pipeline, pull frames, tear it down.
//!
//! ```text
//! uridecodebin uri=... (video only; rtspsrc set up in source-setup)
//!   ! videorate drop-only=true ! video/x-raw,framerate=<fps>
//!   ! videoconvert ! video/x-raw,format=I420
//!   ! appsink max-buffers=1 drop=true
//! ```
//!
//! Frames stay in the decoder's YUV (videoconvert passes I420 through untouched and
//! converts other formats, NV12 from NVDEC say): only crops are converted to RGB, at
//! the model's size ([`crate::pixels`]). Decoding picks the highest-ranked decoder, so hardware
//! decoders (nvh264dec) are used where GStreamer ranks them first. The appsink keeps
//! one buffer and drops older ones: a slow consumer never stalls the decoder, and the
//! freshest frame wins. Credentials go to rtspsrc as properties, never in the URI.
//!
//! Elements are built with factories (not a launch string) so that properties are set
//! with types and the URI is never parsed as pipeline syntax.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use gstreamer::glib;

use super::{Camera, CameraShared, DecodeMode, Frame, RtspTransport, nal};
use crate::pixels::{BytePool, Pixels, YuvMatrix};

/// What a pipeline has to say between frames.
#[derive(Debug)]
pub enum BusEvent {
    /// The stream ended (a file without `loop`, or a live source that hung up).
    Eos,
    /// An element failed; the pipeline is unusable.
    Error(String),
}

/// One running pipeline.
pub struct Pipeline {
    /// Taken by `close` (or drop), which set it to `Null`.
    pipeline: Option<gst::Pipeline>,
    appsink: gst_app::AppSink,
    bus: gst::Bus,
    camera: Arc<CameraShared>,
    /// Where frames' bytes come from and go back to.
    frames: Arc<BytePool>,
}

/// Why a camera's pipeline could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("GStreamer element `{factory}` is missing; install the GStreamer plugins (make setup)")]
    MissingElement { factory: String, source: glib::BoolError },
    #[error("building the pipeline: {0}")]
    Build(#[source] glib::BoolError),
    #[error("decode = \"nvdec\" but GStreamer has no nvh264dec (nvcodec plugin, NVIDIA driver); use \"auto\"")]
    NoNvdec,
    /// `reason` is the first error the pipeline posted, which names the cause.
    #[error("{reason}")]
    Start { reason: String, source: gst::StateChangeError },
    #[error("cannot rewind: {0}")]
    Rewind(#[source] glib::BoolError),
}

fn element(factory: &str) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|source| PipelineError::MissingElement { factory: factory.to_string(), source })
}

/// Whether `factory` is a hardware video decoder (NVDEC, VA-API, V4L2).
fn is_hardware_decoder(factory: &gst::ElementFactory) -> bool {
    let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
    let name = factory.name();
    klass.contains("Decoder")
        && (klass.contains("Hardware") || ["nv", "va", "vaapi", "v4l2"].iter().any(|p| name.starts_with(p)))
}

/// Whether an NVDEC H.264 decoder is registered (the nvcodec plugin found a GPU).
pub fn nvdec_available() -> bool {
    gst::ElementFactory::find("nvh264dec").is_some()
}

/// Applies the camera's `decode` mode to uridecodebin and records the decoder chosen.
fn steer_decoding(src: &gst::Element, shared: &Arc<CameraShared>) -> Result<(), PipelineError> {
    let mode = shared.camera.decode;
    if mode == DecodeMode::Nvdec && !nvdec_available() {
        return Err(PipelineError::NoNvdec);
    }
    if matches!(mode, DecodeMode::Cpu | DecodeMode::Nvdec) {
        // uridecodebin asks before it plugs each element: skip the decoders the mode
        // rules out. The result is an enum of decodebin's (TRY = 0, SKIP = 2).
        let result_type = glib::Type::from_name("GstAutoplugSelectResult");
        src.connect("autoplug-select", false, move |args| {
            let factory = args.get(3).and_then(|v| v.get::<gst::ElementFactory>().ok())?;
            let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
            let skip = match mode {
                DecodeMode::Cpu => is_hardware_decoder(&factory),
                DecodeMode::Nvdec => {
                    klass.contains("Decoder") && klass.contains("Video") && !factory.name().starts_with("nv")
                }
                _ => false,
            };
            let class = glib::EnumClass::with_type(result_type?)?;
            class.to_value(if skip { 2 } else { 0 })
        });
    }
    let cam = Arc::downgrade(shared);
    src.connect("deep-element-added", false, move |args| {
        let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        let factory = element.factory()?;
        let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
        let cam = cam.upgrade()?;
        if klass.contains("Decoder") && klass.contains("Video") {
            let name = factory.name().to_string();
            tracing::info!(camera = %cam.name(), "camera {} decodes with {name}", cam.name());
            // One thread per software decoder: cameras already decode in parallel, and
            // frame threading would add a frame of delay and compete with the model.
            if element.find_property("max-threads").is_some() {
                element.set_property_from_str("max-threads", "1");
            }
            if let Ok(mut d) = cam.decoder.lock() {
                *d = Some(name);
            }
        }
        if klass.contains("Parser")
            && klass.contains("Video")
            && let Some(pad) = element.static_pad("src")
        {
            // Between parser and decoder: frames the gate drops are never decoded.
            let gate = std::sync::Mutex::new(DecodeGate::new(mode, cam.camera.fps));
            let counter = Arc::downgrade(&cam);
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
                let delta = buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let reference = !delta || is_reference(pad, buffer);
                let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
                let Ok(mut gate) = gate.lock() else { return gst::PadProbeReturn::Ok };
                let pass = gate.pass(pts, delta, reference);
                let Some(c) = counter.upgrade() else { return gst::PadProbeReturn::Ok };
                let was = c.keyframes_only.swap(gate.keyframes_only(), Ordering::Relaxed);
                if was != gate.keyframes_only() {
                    let interval = gate.interval().map_or(0.0, |i| i.as_secs_f64());
                    if gate.keyframes_only() {
                        tracing::info!(camera = %c.name(), "camera {}: keyframes every {interval:.2} s are enough for fps = {}: decoding keyframes only", c.name(), c.camera.fps);
                    } else {
                        tracing::info!(camera = %c.name(), "camera {}: keyframes every {interval:.2} s are too few for fps = {}: decoding every frame", c.name(), c.camera.fps);
                    }
                }
                if !c.references_only.swap(gate.skips_nonreference(), Ordering::Relaxed) && gate.skips_nonreference() {
                    tracing::info!(camera = %c.name(), "camera {}: the stream has frames nothing refers to; decoding those only when one is due for fps = {}", c.name(), c.camera.fps);
                }
                if let Some(i) = gate.interval() {
                    c.keyframe_interval_ms.store(i.as_millis() as u64, Ordering::Relaxed);
                }
                if pass {
                    gst::PadProbeReturn::Ok
                } else {
                    c.skipped_decode.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Drop
                }
            });
        }
        None
    });
    Ok(())
}

/// The stream's YUV matrix and range, from its caps (BT.709 when they do not say).
fn matrix(info: &gst_video::VideoInfo) -> YuvMatrix {
    let c = info.colorimetry();
    let m = match c.matrix() {
        gst_video::VideoColorMatrix::Bt601 | gst_video::VideoColorMatrix::Smpte240m => YuvMatrix::BT601,
        gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::BT2020,
        _ => YuvMatrix::BT709,
    };
    m.full_range(c.range() == gst_video::VideoColorRange::Range0_255)
}

/// Decides, buffer by buffer between parser and decoder, whether a frame is decoded.
///
/// `decode = "keyframes"` passes keyframes only. `"auto"` passes every frame until it
/// has measured the interval between two keyframes; from a keyframe on whose interval
/// is at most the analysis period (within 2%), it passes keyframes only, and from the
/// first keyframe that comes later than that, every frame again. Switching only at
/// keyframes means the decoder never gets a frame whose references it lacks.
///
/// Otherwise (and with `"cpu"` and `"nvdec"`) every reference frame is decoded, but a
/// frame no other frame refers to ([`super::nal`]) only when it is the first decoded
/// frame of an analysis period: the rate limiter after the decoder would throw the
/// others away anyway.
#[derive(Debug)]
pub struct DecodeGate {
    /// The analysis period (`None` with `fps = 0`: every frame is analysed).
    period: Option<Duration>,
    /// Whether `auto` measures keyframes to decide `keyframes_only`.
    measure: bool,
    last_keyframe: Option<Duration>,
    interval: Option<Duration>,
    keyframes_only: bool,
    /// The analysis periods (`pts / period`) decoded frames fall in, the latest few
    /// (frames arrive in decode order, which B-frames take out of time order).
    covered: std::collections::BTreeSet<u128>,
    /// Whether a non-reference frame has been left out of this stream.
    skips_nonreference: bool,
}

impl DecodeGate {
    pub fn new(mode: DecodeMode, fps: f64) -> DecodeGate {
        let fixed = mode == DecodeMode::Keyframes;
        DecodeGate {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            measure: mode == DecodeMode::Auto,
            last_keyframe: None,
            interval: None,
            keyframes_only: fixed,
            covered: std::collections::BTreeSet::new(),
            skips_nonreference: false,
        }
    }

    /// Whether the buffer (stream time `pts`; a keyframe or a delta unit, which is a
    /// `reference` or not) is decoded.
    pub fn pass(&mut self, pts: Option<Duration>, delta: bool, reference: bool) -> bool {
        if !delta {
            if let (true, Some(period), Some(pts)) = (self.measure, self.period, pts) {
                if let Some(last) = self.last_keyframe.filter(|l| pts > *l) {
                    let interval = pts - last;
                    self.interval = Some(interval);
                    self.keyframes_only = interval.as_secs_f64() <= period.as_secs_f64() * 1.02;
                }
                self.last_keyframe = Some(pts);
            }
            self.cover(pts);
            return true;
        }
        if self.keyframes_only {
            return false;
        }
        if !reference
            && let (Some(period), Some(pts)) = (self.period, pts)
            && self.covered.contains(&(pts.as_nanos() / period.as_nanos().max(1)))
        {
            self.skips_nonreference = true;
            return false;
        }
        self.cover(pts);
        true
    }

    /// Notes that a frame of stream time `pts` is decoded.
    fn cover(&mut self, pts: Option<Duration>) {
        if let (Some(period), Some(pts)) = (self.period, pts) {
            let slot = pts.as_nanos() / period.as_nanos().max(1);
            if self.covered.last().is_some_and(|&last| slot + 16 < last) {
                // Time went back (a file played again): what was covered is gone.
                self.covered.clear();
            }
            self.covered.insert(slot);
            // Reordering reaches a few frames back: older periods are done with.
            while self.covered.len() > 16 {
                self.covered.pop_first();
            }
        }
    }

    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }

    /// Whether frames no other frame refers to are being left out (the stream has
    /// them, and the analysis rate is below the stream's).
    pub fn skips_nonreference(&self) -> bool {
        self.skips_nonreference && !self.keyframes_only
    }

    /// The last interval measured between two keyframes.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }
}

/// Whether a buffer the parser leaves on `pad` is a reference picture. Only H.264
/// says so in a byte; other codecs count every frame as one.
fn is_reference(pad: &gst::Pad, buffer: &gst::BufferRef) -> bool {
    let Some(caps) = pad.current_caps() else { return true };
    let Some(s) = caps.structure(0) else { return true };
    if s.name() != "video/x-h264" {
        return true;
    }
    let framing = match s.get::<&str>("stream-format") {
        Ok("byte-stream") => Some(nal::Framing::ByteStream),
        Ok("avc" | "avc3") => s
            .get::<gst::Buffer>("codec_data")
            .ok()
            .and_then(|c| c.map_readable().ok().and_then(|m| nal::Framing::from_avcc(&m))),
        _ => None,
    };
    let (Some(framing), Ok(map)) = (framing, buffer.map_readable()) else { return true };
    nal::h264_reference(&map, framing).unwrap_or(true)
}

/// Hands the camera's credentials (and RTSP transport) to the source element that
/// uridecodebin creates once it sees the URI: as properties, never in the URI.
fn pass_credentials(src: &gst::Element, camera: &Camera) {
    let username = camera.source.username.clone();
    let password = camera.source.password.clone();
    let transport = camera.rtsp_transport;
    src.connect("source-setup", false, move |args| {
        let source = args.get(1).and_then(|v| v.get::<gst::Element>().ok())?;
        let factory = source.factory().map(|f| f.name().to_string()).unwrap_or_default();
        if factory == "rtspsrc" {
            let protocols = match transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
                RtspTransport::Auto => "udp+udp-mcast+tcp",
            };
            source.set_property_from_str("protocols", protocols);
            source.set_property("latency", 200u32);
            if let Some(u) = &username {
                source.set_property("user-id", u);
            }
            if let Some(p) = &password {
                source.set_property("user-pw", p.expose());
            }
        } else if factory == "souphttpsrc" {
            if let Some(u) = &username {
                source.set_property("user-id", u);
            }
            if let Some(p) = &password {
                source.set_property("user-pw", p.expose());
            }
        }
        None
    });
}

/// `fps` as a GStreamer fraction (0.5 -> 1/2, 2 -> 2/1, 7.5 -> 15/2).
fn fraction(fps: f64) -> gst::Fraction {
    gst::Fraction::approximate_f64(fps).unwrap_or_else(|| gst::Fraction::new((fps * 1000.0).round() as i32, 1000))
}

impl Pipeline {
    /// Builds the pipeline for `camera` and sets it playing.
    pub fn open(shared: &Arc<CameraShared>) -> Result<Pipeline, PipelineError> {
        let camera: &Camera = &shared.camera;
        let pipeline = gst::Pipeline::with_name(&format!("camera-{}", camera.name));
        let src = element("uridecodebin")?;
        src.set_property("uri", &camera.source.uri);
        src.set_property("caps", gst::Caps::builder("video/x-raw").any_features().build());
        src.set_property("expose-all-streams", false);
        let rate = element("videorate")?;
        rate.set_property("drop-only", true);
        let rate_caps = element("capsfilter")?;
        rate_caps
            .set_property("caps", gst::Caps::builder("video/x-raw").field("framerate", fraction(camera.fps)).build());
        let convert = element("videoconvert")?;
        let appsink = gst_app::AppSink::builder()
            .caps(&gst_video::VideoCapsBuilder::new().format(gst_video::VideoFormat::I420).build())
            .max_buffers(1)
            .drop(true)
            .sync(!camera.source.live)
            .build();
        appsink.set_property("enable-last-sample", false);

        pipeline.add_many([&src, &rate, &rate_caps, &convert, appsink.upcast_ref()]).map_err(PipelineError::Build)?;
        gst::Element::link_many([&rate, &rate_caps, &convert, appsink.upcast_ref()]).map_err(PipelineError::Build)?;

        pass_credentials(&src, camera);
        // A new stream: `auto` measures its keyframes again before skipping any.
        shared.keyframes_only.store(camera.decode == DecodeMode::Keyframes, Ordering::Relaxed);
        shared.references_only.store(false, Ordering::Relaxed);
        steer_decoding(&src, shared)?;
        // Link the first video pad uridecodebin exposes. The closure holds a weak
        // reference: a strong one would keep the pipeline alive forever.
        let rate_weak = rate.downgrade();
        src.connect_pad_added(move |_, pad| {
            let Some(rate) = rate_weak.upgrade() else { return };
            let Some(sink) = rate.static_pad("sink") else { return };
            if sink.is_linked() {
                return;
            }
            let is_video = pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                .unwrap_or(false);
            if is_video && let Err(e) = pad.link(&sink) {
                // Said on the bus, so the camera's status names this rather than
                // "no first frame".
                gst::element_error!(rate, gst::CoreError::Negotiation, ("cannot link decoded video: {e:?}"));
            }
        });

        let Some(bus) = pipeline.bus() else {
            return Err(PipelineError::Build(glib::bool_error!("the pipeline has no bus")));
        };
        let p =
            Pipeline { pipeline: Some(pipeline), appsink, bus, camera: Arc::clone(shared), frames: BytePool::new() };
        if let Err(source) = p.playing().set_state(gst::State::Playing) {
            let reason = p.take_error().unwrap_or_else(|| format!("cannot start pipeline: {source}"));
            p.close(Duration::from_secs(2));
            return Err(PipelineError::Start { reason, source });
        }
        Ok(p)
    }

    /// The first error message on the bus, if any (for start-up failures).
    fn take_error(&self) -> Option<String> {
        while let Some(msg) = self.bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(e.error().to_string());
            }
        }
        None
    }

    /// Waits up to `timeout` for the next frame.
    pub fn pull(&self, timeout: Duration) -> Option<Frame> {
        let sample = self.appsink.try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))?;
        let captured_at = SystemTime::now();
        let seen = Instant::now();
        let caps = sample.caps()?;
        let info = gst_video::VideoInfo::from_caps(caps).ok()?;
        let buffer = sample.buffer()?;
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
        let (width, height) = (frame.width(), frame.height());
        // The planes packed tightly (decoders pad rows): half the bytes of RGB, in one
        // of the camera's reused buffers. Not the decoder's buffer itself: its pool is
        // small, and frames waiting in the queue would stall the decoder.
        let mut data = self.frames.take(crate::pixels::i420_len(width, height));
        let (cw, ch) = (width.div_ceil(2) as usize, height.div_ceil(2) as usize);
        for (plane, (row, rows)) in [(width as usize, height as usize), (cw, ch), (cw, ch)].into_iter().enumerate() {
            let stride = frame.plane_stride()[plane] as usize;
            let bytes = frame.plane_data(plane as u32).ok()?;
            for y in 0..rows {
                data.extend_from_slice(bytes.get(y * stride..y * stride + row)?);
            }
        }
        let pixels = Pixels::I420 { data, matrix: matrix(&info) };
        Some(Frame { camera: Arc::clone(&self.camera), captured_at, seen, pts, width, height, pixels, boxes: None })
    }

    /// Errors and end-of-stream waiting on the bus.
    pub fn poll_bus(&self) -> Option<BusEvent> {
        while let Some(msg) =
            self.bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos, gst::MessageType::Warning])
        {
            match msg.view() {
                gst::MessageView::Eos(_) => return Some(BusEvent::Eos),
                gst::MessageView::Error(e) => {
                    let from = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                    return Some(BusEvent::Error(format!("{} (from {from})", e.error())));
                }
                gst::MessageView::Warning(w) => {
                    tracing::debug!(camera = %self.camera.name(), "GStreamer warning: {}", w.error());
                }
                _ => {}
            }
        }
        None
    }

    /// Plays a file source again from the start.
    pub fn rewind(&self) -> Result<(), PipelineError> {
        self.playing()
            .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
            .map_err(PipelineError::Rewind)
    }

    /// The pipeline, which is there until `close` or drop takes it.
    fn playing(&self) -> &gst::Pipeline {
        self.pipeline.as_ref().expect("a Pipeline holds its pipeline until closed")
    }

    /// Stops the pipeline. Setting a dead RTSP source to `Null` can block for many
    /// seconds inside GStreamer, so it happens on a thread of its own; if it has not
    /// finished within `limit` the pipeline is abandoned to that thread and we go on.
    pub fn close(mut self, limit: Duration) {
        if let Some(p) = self.pipeline.take() {
            teardown(p, self.camera.name(), Some(limit));
        }
    }
}

/// A pipeline dropped without `close` (an early return, a panic) is still set to
/// `Null`, on its own thread, without waiting.
impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            teardown(p, self.camera.name(), None);
        }
    }
}

/// Sets `pipeline` to `Null` on a `teardown:<camera>` thread, waiting at most `limit`.
fn teardown(pipeline: gst::Pipeline, name: &str, limit: Option<Duration>) {
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let spawned = std::thread::Builder::new().name(format!("teardown:{name}")).spawn(move || {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = done_tx.send(());
    });
    match (spawned, limit) {
        (Ok(_), Some(limit)) => {
            if done_rx.recv_timeout(limit).is_err() {
                tracing::warn!(camera = %name, "pipeline teardown is taking longer than {limit:?}; abandoning it");
            }
        }
        (Ok(_), None) => {}
        (Err(e), _) => tracing::error!(camera = %name, "cannot start teardown thread: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    /// Frames at 10 per second with a keyframe every `gop`; what the gate passes.
    fn run(gate: &mut DecodeGate, from: u64, frames: u64, gop: u64) -> Vec<bool> {
        (from..from + frames).map(|i| gate.pass(ms(i * 100), i % gop != 0, true)).collect()
    }

    #[test]
    fn auto_decodes_keyframes_only_when_they_come_as_often_as_frames_are_analysed() {
        // Keyframes every second, 1 frame analysed per second: keyframes are enough,
        // from the second keyframe on (the first interval has to be measured).
        let mut gate = DecodeGate::new(DecodeMode::Auto, 1.0);
        let passed = run(&mut gate, 0, 30, 10);
        assert!(passed[..10].iter().all(|p| *p), "every frame until an interval is measured");
        assert!(gate.keyframes_only());
        assert_eq!(gate.interval(), Some(Duration::from_secs(1)));
        assert_eq!(passed[10..].iter().filter(|p| **p).count(), 2, "keyframes only after that: {passed:?}");

        // 2 frames analysed per second: keyframes once a second are too few.
        let mut gate = DecodeGate::new(DecodeMode::Auto, 2.0);
        assert!(run(&mut gate, 0, 30, 10).iter().all(|p| *p));
        assert!(!gate.keyframes_only());

        // The stream's keyframes thin out (at 3 s, then 6 s): every frame again from the
        // first keyframe that came late (6 s, index 39 of this run).
        let mut gate = DecodeGate::new(DecodeMode::Auto, 1.0);
        run(&mut gate, 0, 21, 10);
        assert!(gate.keyframes_only());
        let passed = run(&mut gate, 21, 60, 30);
        assert!(!gate.keyframes_only());
        assert_eq!(passed[..39].iter().filter(|p| **p).count(), 1, "only the keyframe at 3 s before: {passed:?}");
        assert!(passed[39..].iter().all(|p| *p), "every frame from the late keyframe at 6 s: {passed:?}");

        // Without timestamps nothing can be measured: every frame.
        let mut gate = DecodeGate::new(DecodeMode::Auto, 0.5);
        assert!((0..40).all(|i| gate.pass(None, i % 10 != 0, true)));
    }

    #[test]
    fn keyframes_mode_passes_keyframes_only_from_the_start() {
        let mut gate = DecodeGate::new(DecodeMode::Keyframes, 25.0);
        let passed = run(&mut gate, 0, 30, 10);
        assert_eq!(passed.iter().filter(|p| **p).count(), 3);
        assert!(gate.keyframes_only());
    }

    /// A 25 fps stream in decode order with two B-frames (nothing refers to them)
    /// between references: I0 P3 B1 B2 P6 B4 B5 ..., a keyframe every `gop` frames (a multiple of 3).
    /// Per frame: (presentation index, passed, was a B-frame).
    fn with_b_frames(gate: &mut DecodeGate, frames: u64, gop: u64) -> Vec<(u64, bool, bool)> {
        let mut order = vec![0];
        let mut p = 0;
        while order.len() < frames as usize {
            p += 3;
            order.extend([p, p - 2, p - 1]);
        }
        order.truncate(frames as usize);
        order
            .into_iter()
            .map(|n| {
                let (key, b) = (n % gop == 0, n % 3 != 0);
                (n, gate.pass(ms(n * 40), !key, !b), b)
            })
            .collect()
    }

    #[test]
    fn frames_nothing_refers_to_are_decoded_only_when_one_is_due() {
        // 2 analysed per second of a 25 fps stream: every reference frame, and a
        // B-frame only when no frame decoded so far falls in its half second.
        for mode in [DecodeMode::Auto, DecodeMode::Cpu, DecodeMode::Nvdec] {
            let mut gate = DecodeGate::new(mode, 2.0);
            let frames = with_b_frames(&mut gate, 250, 48);
            assert!(frames.iter().filter(|f| !f.2).all(|f| f.1), "every reference frame: {mode:?}");
            let b_passed: Vec<u64> = frames.iter().filter(|f| f.2 && f.1).map(|f| f.0).collect();
            assert!(b_passed.len() <= 2, "B-frames left out: {b_passed:?}");
            assert!(gate.skips_nonreference() && !gate.keyframes_only());
            // Every half second still has a decoded frame within a frame of its start.
            for slot in 0..19 {
                let start = slot * 25 / 2;
                assert!(
                    frames.iter().any(|f| f.1 && f.0 >= start && f.0 <= start + 3),
                    "a decoded frame near {start}: {mode:?}"
                );
            }
        }
        // Analysing every frame (fps = 25): B-frames are all due.
        let mut gate = DecodeGate::new(DecodeMode::Cpu, 25.0);
        assert!(with_b_frames(&mut gate, 100, 48).iter().all(|f| f.1));
        assert!(!gate.skips_nonreference());
        // A stream played again from the start is gated as before.
        let mut gate = DecodeGate::new(DecodeMode::Cpu, 2.0);
        let first = with_b_frames(&mut gate, 240, 48);
        assert_eq!(with_b_frames(&mut gate, 240, 48), first);
        // Without timestamps nothing is known to be due already: every frame.
        let mut gate = DecodeGate::new(DecodeMode::Cpu, 2.0);
        assert!((0..30).all(|i| gate.pass(None, i != 0, i % 3 == 0)));
        // Keyframes only wins over everything.
        let mut gate = DecodeGate::new(DecodeMode::Keyframes, 2.0);
        assert_eq!(with_b_frames(&mut gate, 100, 48).iter().filter(|f| f.1).count(), 3);
        assert!(!gate.skips_nonreference());
    }
}
