//! carwatch watches camera feeds for wanted vehicles.
//!
//! A tour, in the order data flows through `carwatch watch` ([`watch`] puts it together):
//!
//! - [`config`] reads `carwatch.toml` into typed sections, reporting every problem with
//!   file:line:column; every stage gets its own section.
//! - [`camera`]: one GStreamer pipeline per camera on its own thread (decode, drop to the
//!   analysis rate, RGB), supervised with backoff; frames go into one bounded queue that
//!   drops the oldest (counted) rather than block a camera.
//! - [`locate`]: where the vehicles are. [`locate::motion`] boxes what moves, on the
//!   camera's thread before the frame is queued; [`locate::detector`] runs an exported
//!   TorchScript detector in the worker; `regions` and `frame` cameras classify fixed
//!   crops.
//! - [`batcher`] groups queued frames by size or deadline.
//! - [`infer`] is the one thread that owns the model: it turns frames into crops (one
//!   square per located vehicle, followed across frames by [`track`], or the regions, or
//!   the whole frame) and runs
//!   [`model::Recognizer`] — [`model::preprocess`] (crop, resize, ImageNet normalisation),
//!   [`model::backbone`] (VGG-19's frozen convolutions, CPU or CUDA) and
//!   [`model::cascade`] (heads for view -> make -> model, with marginals). Batches reach
//!   the device through [`model::feed`] (on CUDA: pinned memory, a side stream, one batch
//!   in flight), at a batch size [`model::sizing`] measured at start-up.
//! - [`example`]: alerts by photo; the worker runs an alert's example photos through the
//!   model and fills in the description (and embedding) it derives.
//! - [`matcher`] compares predictions with the active [`alerts`]: per tracked vehicle on
//!   the mean of its looks, one hit per (alert, vehicle); per region, confirming over
//!   several frames with cooldowns ([`rule`]).
//! - [`sightings`] remembers every tracked vehicle when its track ends (SQLite in the
//!   state directory, its own thread), for `carwatch search`.
//! - [`publish`] writes each hit's [`snapshot`] and publishes hits, camera status and the
//!   active alerts over MQTT (to a configured broker, or an embedded one).
//!
//! Around the flow: [`state_dir`] holds what an instance writes, locked against a second
//! instance; [`threads`] names and supervises every long-lived thread. Small shared
//! homes that nothing downstream reaches back into: [`values`] (durations, names,
//! secrets, credentials), [`document`] (TOML with positions, `Problem`s), [`time`]
//! (how times are written), [`model::labels`] (labels compared case-insensitively).
//!
//! Beside the daemon: [`train`] builds a cascade from labelled photos (backbone features
//! computed once and cached), [`input`] reads images for `classify`, and [`synthetic`]
//! draws generated vehicles, streets, clips and RTSP cameras: the test data and the
//! demo, since no real weights or photos can be shipped. [`bench`](mod@bench) measures throughput
//! and, on generated streets with known truth, accuracy.
//!
//! The binary (`main.rs`, `cli/`, one file per subcommand) is thin: it parses
//! arguments, installs signals, sets up logging and calls into this library, so tests
//! and benchmarks run the same code. The library never writes to stdout (a lint forbids
//! it) and logs through `tracing`; the one thing it draws itself is `train`'s progress
//! bars, on stderr, when its caller asks (`TrainOptions::progress`).

#![forbid(clippy::print_stdout)]

pub mod alerts;
pub mod batcher;
pub mod bench;
pub mod camera;
pub mod colour;
pub mod config;
pub mod document;
pub mod example;
#[cfg(test)]
mod fuzz;
pub mod infer;
pub mod input;
pub mod locate;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pixels;
pub mod publish;
pub mod rule;
pub mod sightings;
pub mod snapshot;
pub mod state_dir;
pub mod synthetic;
pub mod threads;
pub mod time;
pub mod track;
pub mod train;
pub mod values;
pub mod watch;
