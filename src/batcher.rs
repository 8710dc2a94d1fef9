//! Forming batches from the frame queue, by size or deadline.
//!
//! Like DeepStream's streammux: a batch closes when it holds `max_size` frames, or
//! `max_wait` after its first frame arrived, whichever comes first. Batching amortises
//! the backbone's per-call cost over cameras without adding more than `max_wait` of
//! latency when traffic is light. The batcher owns no model; the inference worker
//! calls [`Batcher::next`] in its loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select};
use serde::Deserialize;

use crate::camera::{Frame, Frames};
use crate::values::{bounded, millis};

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most frames per backbone call, or measured at start-up.
    #[serde(default)]
    pub max_size: BatchSize,
    /// Longest a frame waits for others to join its batch.
    #[serde(default = "default_max_wait", deserialize_with = "millis", rename = "max_wait_ms")]
    pub max_wait: Duration,
    /// Frames queued between cameras and the worker; beyond it the oldest are dropped.
    /// Unset: [`BatchConfig::queue_len`].
    #[serde(default, deserialize_with = "queue_opt")]
    pub queue: Option<u32>,
    /// Most bytes of frames queued (decoded RGB); beyond it the oldest are dropped.
    #[serde(default = "default_queue_bytes", deserialize_with = "crate::values::byte_count")]
    pub queue_bytes: u64,
}

fn default_queue_bytes() -> u64 {
    2 << 30
}

/// `batch.max_size`: a number of frames, or `"auto"`, the smallest batch within 5% of
/// the best throughput measured at start-up (see [`crate::model::sizing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    #[default]
    Auto,
    Fixed(u32),
}

/// The largest batch `auto` tries: a 2-core CPU gains nothing past 16, a GPU needs
/// 64-256 to be busy.
pub const AUTO_CAP_CPU: u32 = 16;
pub const AUTO_CAP_GPU: u32 = 256;

impl BatchSize {
    /// The largest batch this can form, on a GPU or not.
    pub fn cap(self, gpu: bool) -> u32 {
        match self {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto if gpu => AUTO_CAP_GPU,
            BatchSize::Auto => AUTO_CAP_CPU,
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let expected = format!("expected a number of frames from 1 to {MAX_BATCH} or \"auto\"");
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(&expected))? {
            Raw::Number(n) if n > 0 && n <= MAX_BATCH as i64 => Ok(BatchSize::Fixed(n as u32)),
            Raw::Text(t) if t == "auto" => Ok(BatchSize::Auto),
            Raw::Number(n) => Err(serde::de::Error::custom(format!("{expected}, found {n}"))),
            Raw::Text(t) => Err(serde::de::Error::custom(format!("{expected}, found \"{t}\""))),
        }
    }
}

/// The largest batch and frame queue accepted: both preallocate, and far larger values
/// are typos that would abort the process on allocation.
pub const MAX_BATCH: u32 = 1024;
pub const MAX_QUEUE: u32 = 16_384;

fn queue_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, MAX_QUEUE).map(Some)
}

fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

impl BatchConfig {
    /// Frames the queue holds: as set, or room for two of the largest batches and at
    /// least 32.
    pub fn queue_len(&self, gpu: bool) -> usize {
        match self.queue {
            Some(q) => q as usize,
            None => (2 * self.max_size.cap(gpu) as usize).max(32),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_size: BatchSize::default(),
            max_wait: default_max_wait(),
            queue: None,
            queue_bytes: default_queue_bytes(),
        }
    }
}

/// What [`Batcher::next`] returns.
#[derive(Debug)]
pub enum Next {
    Batch(Vec<Arc<Frame>>),
    /// Nothing arrived within the idle timeout: a chance for periodic work.
    Idle,
    /// The stop channel fired (or every frame sender is gone).
    Stop,
}

/// Batches frames from a queue.
pub struct Batcher {
    frames: Frames,
    stop: Receiver<()>,
    max_size: usize,
    max_wait: Duration,
}

impl Batcher {
    /// Batches of at most `max_size` frames (with `auto`, the largest size it may
    /// choose until the worker sets the measured one).
    pub fn new(frames: Frames, stop: Receiver<()>, max_size: usize, max_wait: Duration) -> Batcher {
        Batcher { frames, stop, max_size: max_size.max(1), max_wait }
    }

    /// The next batch; waits at most `idle` for its first frame.
    pub fn next(&self, idle: Duration) -> Next {
        let rx = self.frames.receiver();
        let mut sel = Select::new();
        let frames_i = sel.recv(rx);
        let stop_i = sel.recv(&self.stop);
        let first = match sel.select_timeout(idle) {
            Err(_) => return Next::Idle,
            Ok(op) if op.index() == stop_i => {
                let _ = op.recv(&self.stop);
                return Next::Stop;
            }
            Ok(op) => {
                debug_assert_eq!(op.index(), frames_i);
                match op.recv(rx) {
                    Ok(f) => f,
                    Err(_) => return Next::Stop,
                }
            }
        };
        let deadline = crate::values::later(Instant::now(), self.max_wait);
        let mut batch = Vec::with_capacity(self.max_size);
        self.frames.taken(&first);
        batch.push(first);
        while batch.len() < self.max_size {
            match rx.recv_deadline(deadline) {
                Ok(f) => {
                    self.frames.taken(&f);
                    batch.push(f);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Next::Batch(batch)
    }

    /// The frames queued right now, up to a full batch, without waiting (`Idle` when
    /// there are none): for a worker that has a batch in flight on a GPU and should not
    /// keep it waiting for a deadline.
    pub fn queued(&self) -> Next {
        if self.stop.try_recv().is_ok() {
            return Next::Stop;
        }
        let batch: Vec<Arc<Frame>> = self.frames.receiver().try_iter().take(self.max_size).collect();
        for f in &batch {
            self.frames.taken(f);
        }
        if batch.is_empty() { Next::Idle } else { Next::Batch(batch) }
    }

    /// Most frames per batch.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Changes the batch size (chosen by measurement at start-up, `max_size = "auto"`).
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{CameraShared, FrameQueue};

    fn frame(cam: &Arc<CameraShared>) -> Arc<Frame> {
        Arc::new(crate::camera::testing::frame(cam, 1, 1))
    }

    fn setup(max_size: u32, wait_ms: u64) -> (FrameQueue, Batcher, crossbeam_channel::Sender<()>, Arc<CameraShared>) {
        let cam = crate::camera::testing::camera("c");
        let (q, rx) = FrameQueue::bounded(64, u64::MAX);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        (q, Batcher::new(rx, stop_rx, max_size as usize, Duration::from_millis(wait_ms)), stop_tx, cam)
    }

    #[test]
    fn a_full_batch_closes_at_once() {
        let (q, b, _stop, cam) = setup(4, 10_000);
        for _ in 0..6 {
            q.push(frame(&cam));
        }
        let start = Instant::now();
        match b.next(Duration::from_secs(1)) {
            Next::Batch(v) => assert_eq!(v.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(1), "waited for the deadline despite a full batch");
        match b.next(Duration::from_secs(1)) {
            Next::Batch(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partial_batch_closes_at_the_deadline() {
        let (q, b, _stop, cam) = setup(8, 30);
        q.push(frame(&cam));
        let start = Instant::now();
        match b.next(Duration::from_secs(1)) {
            Next::Batch(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_millis(1000), "{waited:?}");
    }

    #[test]
    fn max_size_is_a_number_or_auto() {
        let parse = |s: &str| toml::from_str::<BatchConfig>(s);
        assert_eq!(parse("").unwrap().max_size, BatchSize::Auto);
        assert_eq!(parse("max_size = \"auto\"").unwrap().max_size, BatchSize::Auto);
        assert_eq!(parse("max_size = 8").unwrap().max_size, BatchSize::Fixed(8));
        for bad in ["max_size = 0", "max_size = -3", "max_size = \"big\"", "max_size = 1.5", "max_size = 4000000000"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("number of frames from 1 to 1024 or \"auto\""), "{bad}: {e}");
        }
        // Sizes that would preallocate gigabytes are refused, with the range.
        let e = parse("queue = 100000000").unwrap_err().to_string();
        assert!(e.contains("from 1 to 16384"), "{e}");
        let auto = parse("").unwrap();
        assert_eq!((auto.queue_len(false), auto.queue_len(true)), (32, 512));
        assert_eq!(parse("max_size = 64").unwrap().queue_len(false), 128);
        assert_eq!(parse("queue = 10").unwrap().queue_len(true), 10);
    }

    #[test]
    fn queued_takes_what_is_there_without_waiting() {
        let (q, b, stop, cam) = setup(4, 10_000);
        assert!(matches!(b.queued(), Next::Idle));
        for _ in 0..6 {
            q.push(frame(&cam));
        }
        let start = Instant::now();
        match b.queued() {
            Next::Batch(v) => assert_eq!(v.len(), 4),
            other => panic!("{other:?}"),
        }
        match b.queued() {
            Next::Batch(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        stop.send(()).unwrap();
        assert!(matches!(b.queued(), Next::Stop));
    }

    #[test]
    fn idle_and_stop() {
        let (_q, b, stop, _cam) = setup(8, 30);
        assert!(matches!(b.next(Duration::from_millis(10)), Next::Idle));
        stop.send(()).unwrap();
        assert!(matches!(b.next(Duration::from_secs(5)), Next::Stop));
    }
}
