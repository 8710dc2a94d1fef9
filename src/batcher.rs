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

use crate::camera::Frame;
use crate::config::values::{millis, positive};

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most frames per backbone call.
    #[serde(default = "default_max_size", deserialize_with = "positive")]
    pub max_size: u32,
    /// Longest a frame waits for others to join its batch.
    #[serde(default = "default_max_wait", deserialize_with = "millis", rename = "max_wait_ms")]
    pub max_wait: Duration,
    /// Frames queued between cameras and the worker; beyond it the oldest are dropped.
    #[serde(default = "default_queue", deserialize_with = "positive")]
    pub queue: u32,
}

fn default_max_size() -> u32 {
    8
}

fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

fn default_queue() -> u32 {
    32
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_size: default_max_size(), max_wait: default_max_wait(), queue: default_queue() }
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
    frames: Receiver<Arc<Frame>>,
    stop: Receiver<()>,
    max_size: usize,
    max_wait: Duration,
}

impl Batcher {
    pub fn new(frames: Receiver<Arc<Frame>>, stop: Receiver<()>, config: &BatchConfig) -> Batcher {
        Batcher { frames, stop, max_size: config.max_size as usize, max_wait: config.max_wait }
    }

    /// The next batch; waits at most `idle` for its first frame.
    pub fn next(&self, idle: Duration) -> Next {
        let mut sel = Select::new();
        let frames_i = sel.recv(&self.frames);
        let stop_i = sel.recv(&self.stop);
        let first = match sel.select_timeout(idle) {
            Err(_) => return Next::Idle,
            Ok(op) if op.index() == stop_i => {
                let _ = op.recv(&self.stop);
                return Next::Stop;
            }
            Ok(op) => {
                debug_assert_eq!(op.index(), frames_i);
                match op.recv(&self.frames) {
                    Ok(f) => f,
                    Err(_) => return Next::Stop,
                }
            }
        };
        let deadline = Instant::now() + self.max_wait;
        let mut batch = Vec::with_capacity(self.max_size);
        batch.push(first);
        while batch.len() < self.max_size {
            match self.frames.recv_deadline(deadline) {
                Ok(f) => batch.push(f),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Next::Batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{Camera, CameraConfig, CameraShared, FrameQueue};
    use std::time::SystemTime;

    fn frame(cam: &Arc<CameraShared>) -> Arc<Frame> {
        Arc::new(Frame {
            camera: cam.clone(),
            captured_at: SystemTime::now(),
            seen: Instant::now(),
            pts: None,
            width: 1,
            height: 1,
            rgb: vec![0; 3],
        })
    }

    fn setup(max_size: u32, wait_ms: u64) -> (FrameQueue, Batcher, crossbeam_channel::Sender<()>, Arc<CameraShared>) {
        let cfg: CameraConfig = toml::from_str("name = \"c\"\nurl = \"rtsp://h/\"").unwrap();
        let cam = CameraShared::new(Camera::from_config(&cfg).unwrap());
        let (q, rx) = FrameQueue::bounded(64);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let config = BatchConfig { max_size, max_wait: Duration::from_millis(wait_ms), queue: 64 };
        (q, Batcher::new(rx, stop_rx, &config), stop_tx, cam)
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
    fn idle_and_stop() {
        let (_q, b, stop, _cam) = setup(8, 30);
        assert!(matches!(b.next(Duration::from_millis(10)), Next::Idle));
        stop.send(()).unwrap();
        assert!(matches!(b.next(Duration::from_secs(5)), Next::Stop));
    }
}
