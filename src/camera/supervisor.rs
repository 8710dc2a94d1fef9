//! One camera's life: open, stream, and on any failure tear down and try again.
//!
//! Runs on the camera's own thread (`camera:<name>`), as moonfire-nvr's streamer does:
//! everything it needs is passed in, including the [`Opener`] that makes streams, so
//! tests drive it with a scripted opener. A stream that errors, ends (unless it is a
//! looping file), or delivers no frame for `stall_timeout` is closed and reopened after
//! an exponential backoff (1 s doubling to 30 s, with jitter), forever. A successful
//! frame resets the backoff. Stopping is a message on `stop` (or its sender dropped).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use rand::RngExt;

use super::pipeline::{BusEvent, Pipeline};
use super::{CameraShared, Frame, FrameQueue, State};
use crate::locate::Bounds;
use crate::locate::motion::{Motion, MotionLocator};

/// What a stream does next.
pub enum Step {
    Frame(Frame),
    /// Nothing within the timeout (or a rewind); not an error by itself.
    Idle,
    Ended,
    Failed(String),
}

/// An open stream of frames.
pub trait Stream {
    fn next(&mut self, timeout: Duration) -> Step;
    /// Releases the stream; must not block for long (see [`Pipeline::close`]).
    fn close(self: Box<Self>);
}

/// Opens streams for a camera.
pub trait Opener: Send {
    fn open(&self, camera: &Arc<CameraShared>) -> Result<Box<dyn Stream>, String>;
}

/// Streams from GStreamer pipelines.
pub struct GstOpener {
    /// How long a pipeline may take to stop before it is abandoned.
    pub teardown_limit: Duration,
}

struct GstStream {
    pipeline: Pipeline,
    looping: bool,
    teardown_limit: Duration,
}

impl Opener for GstOpener {
    fn open(&self, camera: &Arc<CameraShared>) -> Result<Box<dyn Stream>, String> {
        let pipeline = Pipeline::open(camera).map_err(|e| e.to_string())?;
        let looping = camera.camera.looping && !camera.camera.source.live;
        Ok(Box::new(GstStream { pipeline, looping, teardown_limit: self.teardown_limit }))
    }
}

impl Stream for GstStream {
    fn next(&mut self, timeout: Duration) -> Step {
        if let Some(frame) = self.pipeline.pull(timeout) {
            return Step::Frame(frame);
        }
        match self.pipeline.poll_bus() {
            None => Step::Idle,
            Some(BusEvent::Error(e)) => Step::Failed(e),
            Some(BusEvent::Eos) if self.looping => match self.pipeline.rewind() {
                Ok(()) => Step::Idle,
                Err(e) => Step::Failed(e.to_string()),
            },
            Some(BusEvent::Eos) => Step::Ended,
        }
    }

    fn close(self: Box<Self>) {
        self.pipeline.close(self.teardown_limit);
    }
}

/// Timing of supervision.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No frame for this long: the stream is declared stalled and reopened.
    pub stall_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stall_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }

    /// The delay before the next attempt: the current step with +-20% jitter (so that
    /// many cameras behind one failed switch do not retry in lockstep); the step then
    /// doubles, up to the maximum.
    pub fn next_delay(&mut self, rng: &mut impl rand::Rng) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rng.random_range(0.8..1.2))
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Runs `camera` until told to stop. With a `motion` locator (cameras with `locate =
/// "motion"`), every frame is located here, on the camera's own thread, before it is
/// queued.
pub fn run(
    camera: Arc<CameraShared>,
    queue: FrameQueue,
    stop: Receiver<()>,
    opener: Box<dyn Opener>,
    timing: Timing,
    mut motion: Option<MotionLocator>,
) {
    if !camera.camera.enabled {
        camera.set_state(State::Disabled, Some("enabled = false".into()));
        let _ = stop.recv();
        return;
    }
    let mut rng = rand::rng();
    let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
    let poll = Duration::from_millis(100).min(timing.stall_timeout);
    let mut attempts: u64 = 0;
    let mut masks_checked = false;
    loop {
        if attempts > 0 {
            camera.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        attempts += 1;
        camera.set_state(State::Connecting, None);
        let reason = match opener.open(&camera) {
            Err(e) => e,
            Ok(mut stream) => {
                let mut last_frame = Instant::now();
                let mut streaming = false;
                let outcome = loop {
                    match stop.try_recv() {
                        Ok(()) | Err(TryRecvError::Disconnected) => {
                            stream.close();
                            camera.set_state(State::Stopped, None);
                            return;
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    match stream.next(poll) {
                        Step::Frame(frame) => {
                            last_frame = Instant::now();
                            if !streaming {
                                streaming = true;
                                backoff.reset();
                                camera.set_state(State::Streaming, None);
                            }
                            camera.frames_in.fetch_add(1, Ordering::Relaxed);
                            let mut frame = frame;
                            if let Some(m) = motion.as_mut() {
                                if !masks_checked {
                                    masks_checked = true;
                                    check_masks(&camera, frame.width, frame.height);
                                }
                                locate(m, &camera, &mut frame);
                            }
                            queue.push(Arc::new(frame));
                        }
                        Step::Idle => {
                            if last_frame.elapsed() >= timing.stall_timeout {
                                let what = if streaming { "no frame" } else { "no first frame" };
                                let reason = format!("{what} for {:.1} s", timing.stall_timeout.as_secs_f64());
                                camera.set_state(State::Stalled, Some(reason.clone()));
                                break reason;
                            }
                        }
                        Step::Ended => break "end of stream".to_string(),
                        Step::Failed(e) => break e,
                    }
                };
                stream.close();
                outcome
            }
        };
        let delay = backoff.next_delay(&mut rng);
        camera.set_state(State::BackingOff, Some(format!("{reason}; retrying in {:.1} s", delay.as_secs_f64())));
        match stop.recv_timeout(delay) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                camera.set_state(State::Stopped, None);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Regions that do not fit the camera's frames mask nothing: said once, at the first
/// frame (regions in fractions are checked with the config; pixels need the frame size).
fn check_masks(camera: &CameraShared, width: u32, height: u32) {
    for (i, r) in camera.camera.regions.iter().enumerate() {
        if let Err(e) = r.resolve(width, height) {
            tracing::error!(
                camera = %camera.name(),
                "regions[{i}] as a mask: {e}; vehicles there are ignored. Fix the region for {width}x{height} frames"
            );
        }
    }
}

/// Motion boxes of `frame`, inside the camera's regions (masks), largest first.
fn locate(motion: &mut MotionLocator, camera: &CameraShared, frame: &mut Frame) {
    let t = Instant::now();
    let boxes = match motion.observe_pixels(&frame.pixels, frame.width, frame.height) {
        Motion::Boxes(b) => b,
        Motion::Seeded | Motion::SceneChanged => Vec::new(),
    };
    let cam = &camera.camera;
    let boxes: Vec<Bounds> = boxes
        .into_iter()
        .filter(|b| cam.admits(b.x + b.width / 2, b.y + b.height / 2, frame.width, frame.height))
        .collect();
    camera.locate_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    camera.located.fetch_add(1, Ordering::Relaxed);
    frame.boxes = Some(boxes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let steps: Vec<f64> = (0..8).map(|_| b.next_delay(&mut rng).as_secs_f64()).collect();
        let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for (s, n) in steps.iter().zip(nominal) {
            assert!(*s >= n * 0.8 && *s <= n * 1.2, "{steps:?}");
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_secs_f64(1.2));
    }

    /// Scripted streams: each open pops a script of steps.
    struct Scripted(Mutex<VecDeque<Result<Vec<&'static str>, String>>>);

    struct ScriptStream {
        steps: VecDeque<&'static str>,
        camera: Arc<CameraShared>,
    }

    impl Stream for ScriptStream {
        fn next(&mut self, _timeout: Duration) -> Step {
            match self.steps.pop_front() {
                Some("frame") => Step::Frame(crate::camera::testing::frame(&self.camera, 1, 1)),
                Some("fail") => Step::Failed("boom".into()),
                Some("end") => Step::Ended,
                _ => {
                    std::thread::sleep(Duration::from_millis(5));
                    Step::Idle
                }
            }
        }
        fn close(self: Box<Self>) {}
    }

    impl Opener for Scripted {
        fn open(&self, camera: &Arc<CameraShared>) -> Result<Box<dyn Stream>, String> {
            match self.0.lock().unwrap().pop_front() {
                Some(Ok(steps)) => Ok(Box::new(ScriptStream { steps: steps.into(), camera: camera.clone() })),
                Some(Err(e)) => Err(e),
                None => Err("no more scripts".into()),
            }
        }
    }

    #[test]
    fn failures_are_retried_and_frames_flow_after_recovery() {
        let cam = crate::camera::testing::camera("t");
        let (queue, frames) = FrameQueue::bounded(16, u64::MAX);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let script = Scripted(Mutex::new(
            vec![Err("refused".to_string()), Ok(vec!["frame", "fail"]), Ok(vec!["frame", "frame", "frame"])].into(),
        ));
        let timing = Timing {
            stall_timeout: Duration::from_millis(200),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
        };
        let c = cam.clone();
        let t = std::thread::spawn(move || run(c, queue, stop_rx, Box::new(script), timing, None));
        // Four frames arrive in all: one before the failure, three after.
        for _ in 0..4 {
            frames.receiver().recv_timeout(Duration::from_secs(5)).expect("frame");
        }
        assert_eq!(cam.frames_in.load(Ordering::Relaxed), 4);
        // The third stream goes quiet: the camera is declared stalled, then backs off.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cam.state().state != State::BackingOff && cam.state().state != State::Connecting {
            assert!(Instant::now() < deadline, "never left streaming: {:?}", cam.state());
            std::thread::sleep(Duration::from_millis(5));
        }
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(cam.state().state, State::Stopped);
    }
}
