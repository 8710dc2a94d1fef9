//! `carwatch watch`: the daemon, put together.
//!
//! Start-up checks everything before starting anything: config (already parsed), the
//! models' manifest, the alert file against the models' labels. Then, in order: the
//! embedded broker (when no `[mqtt]`), the MQTT client and the `publish` thread, the
//! `infer` thread (which loads the model and owns it), and one `camera:<name>` thread
//! per camera. Data then flows one way: cameras -> frame queue -> infer (batcher,
//! cascade, matcher) -> publish.
//!
//! Shutdown (SIGINT or SIGTERM) runs the other way: cameras are told to stop and their
//! pipelines torn down (bounded, see `Pipeline::close`), the worker finishes the batch
//! in hand, the publisher sends what it holds, publishes `offline` and disconnects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::alerts::{self, AlertSet, AlertsError, Reloader, Severity, Vocabulary};
use crate::batcher::{BatchSize, Batcher};
use crate::camera::supervisor::{self, GstOpener, Timing};
use crate::camera::{CameraShared, FrameQueue};
use crate::config::{Config, Problems};
use crate::infer::{Links, Worker, WorkerError};
use crate::matcher::Matcher;
use crate::metrics::{self, Metrics};
use crate::model::{Manifest, ModelError};
use crate::notify;
use crate::publish::mqtt::{Mqtt, MqttSettings};
use crate::publish::outbox::Outbox;
use crate::publish::{Event, HitCallback, Publisher, PublisherConfig, broker};
use crate::snapshot;
use crate::state_dir::{self, StateDirError};
use crate::threads::{self, Ended};

/// Options that do not belong in the config file.
#[derive(Default)]
pub struct WatchOptions {
    /// Use this models directory instead of `model.dir`.
    pub models: Option<PathBuf>,
    /// Called with every hit's JSON (for `--print-hits`).
    pub on_hit: Option<HitCallback>,
    /// Test-only: the inference loop stops after start-up (for the watchdog test).
    pub hang_inference: bool,
    /// Stops the watcher like SIGTERM does (for `bench pipeline`).
    pub stop: Option<Receiver<()>>,
    /// Receives the cameras and metrics once everything runs (for `bench pipeline`).
    pub observer: Option<Sender<Running>>,
}

/// A view of a running watcher.
pub struct Running {
    pub cameras: Vec<Arc<CameraShared>>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Alerts(#[from] AlertsError),
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("inference worker: {0}")]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{0}")]
    ThreadEnded(Ended),
    #[error("{0}")]
    Io(String),
}

/// Why the daemon is stopping.
enum Stop {
    Signal(i32),
    WorkerEnded(Result<(), WorkerError>),
    /// A supervised thread ended while everything should run.
    ThreadEnded(Ended),
}

/// Longest a camera pipeline may take to stop.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(2);

/// Runs until SIGINT/SIGTERM (Ok) or until the inference worker fails (Err).
pub fn run(config: &Config, mut options: WatchOptions) -> Result<(), WatchError> {
    gstreamer::init().map_err(|e| WatchError::Gstreamer(e.to_string()))?;
    let generation = threads::begin();
    let thread_ends = threads::ended();
    let (signals, hup) = signals()?;

    let models = options.models.take().unwrap_or_else(|| config.model.dir.clone());
    let manifest = Manifest::load(&models)?;
    let vocabulary =
        Vocabulary { leaves: manifest.leaves(), cameras: config.cameras.iter().map(|c| c.name.clone()).collect() };
    let alerts_stamp = alerts::stamp(&config.alerts);
    let alerts_text = std::fs::read_to_string(&config.alerts)
        .map_err(|source| AlertsError::Read { path: config.alerts.clone(), source })?;
    let alerts =
        AlertSet::parse(&config.alerts, &alerts_text, &vocabulary, &config.matcher).map_err(AlertsError::Invalid)?;
    tracing::info!("{} alert(s) from {}", alerts.alerts.len(), config.alerts.display());
    // Fail early, before anything starts, on a device that is not there.
    config.model.device.resolve()?;
    let _state_lock = state_dir::lock(&config.state_dir)?;
    let removed = snapshot::remove_temporaries(&config.snapshot_dir());
    if removed > 0 {
        tracing::warn!("removed {removed} partial snapshot file(s) left by an earlier run (crash or full disk)");
    }

    let settings = match &config.mqtt {
        Some(s) => s.clone(),
        None => {
            if let Some(warning) = config.broker.exposure_warning() {
                tracing::warn!("{warning}");
            }
            let account = config.broker.account().map_err(WatchError::Mqtt)?;
            broker::start(config.broker.listen, account.as_ref()).map_err(WatchError::Mqtt)?;
            MqttSettings::local(config.broker.listen, account)
        }
    };
    let (outbox, recovery) = Outbox::open(&config.state_dir.join("outbox"), config.outbox.bounds())
        .map_err(|e| WatchError::Io(format!("{e}; check that state_dir is writable")))?;
    if recovery.pending > 0 {
        tracing::info!("{} undelivered hit(s) found in the outbox; they will be delivered again", recovery.pending);
    }
    if recovery.corrupt > 0 || recovery.truncated > 0 {
        tracing::error!(
            "outbox: skipped {} damaged record(s) and {} torn byte(s) at its end; the rest was kept",
            recovery.corrupt,
            recovery.truncated
        );
    }
    let mqtt = Mqtt::start(&settings, &config.topics).map_err(WatchError::Mqtt)?;
    let cameras: Vec<Arc<CameraShared>> = config.cameras.iter().cloned().map(CameraShared::new).collect();
    let metrics = Metrics::new(&cameras);
    if let Some(listen) = config.metrics.listen {
        metrics::serve(listen, Arc::clone(&metrics), Duration::from_secs(30)).map_err(WatchError::Io)?;
    }
    let (events_tx, events_rx) = crossbeam_channel::bounded(256);
    let publisher = Publisher::spawn(
        mqtt,
        outbox,
        PublisherConfig {
            topics: config.topics.clone(),
            snapshot_dir: config.snapshot_dir(),
            snapshot_inline: config.snapshots.inline,
            snapshot_quality: config.snapshots.quality,
            status_interval: config.status_interval,
            on_hit: options.on_hit.take(),
            metrics: Arc::clone(&metrics),
            stats_interval: config.metrics.stats_interval,
        },
        cameras.clone(),
        events_rx,
    )
    .map_err(|e| WatchError::Io(format!("cannot start publish thread: {e}")))?;

    // The worker loads the model on its own thread and says when it is ready.
    // On a GPU the worker measures batches up to 256 (`max_size = "auto"`), and the
    // queue must be able to hold them.
    let gpu = config.model.device.resolve().map(|d| d.is_cuda()).unwrap_or(false);
    let (queue, frames) = FrameQueue::bounded(config.batch.queue_len(gpu));
    let (infer_stop_tx, infer_stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let (ended_tx, ended_rx) = crossbeam_channel::bounded::<Result<(), WorkerError>>(1);
    let cap = config.batch.max_size.cap(gpu) as usize;
    let batcher = Batcher::new(frames, infer_stop_rx, cap, config.batch.max_wait);
    let auto_batch = (config.batch.max_size == BatchSize::Auto).then_some(cap.min(config.batch.queue_len(gpu)));
    let matcher = Matcher::new(alerts);
    let worker_models = models.clone();
    let (device, precision, threads) = (config.model.device, config.model.precision, config.model.threads);
    let (updates_tx, updates_rx) = crossbeam_channel::bounded(4);
    let (problems_tx, problems_rx) = crossbeam_channel::bounded::<(Severity, Problems)>(16);
    let (reload_stop_tx, reload_stop_rx) = crossbeam_channel::bounded::<()>(1);
    let reloader = Reloader {
        path: config.alerts.clone(),
        vocabulary,
        defaults: config.matcher.clone(),
        updates: updates_tx,
        errors: problems_tx,
        hup,
        stop: reload_stop_rx,
        poll: Duration::from_secs(2),
        settle: Duration::from_millis(300),
        empty_settle: Duration::from_secs(3),
    };
    let error_events = events_tx.clone();
    let links = Links {
        batcher,
        matcher,
        events: events_tx,
        alert_updates: updates_rx,
        metrics: Arc::clone(&metrics),
        hang: options.hang_inference,
        auto_batch,
    };
    threads::spawn("infer", move || {
        // libtorch's intra-op thread count is per calling thread: set it here, on the
        // thread that runs the model.
        if let Some(n) = threads {
            tch::set_num_threads(n.get() as i32);
        }
        tracing::info!("model runs on {} intra-op thread(s)", tch::get_num_threads());
        let result = match Worker::load(&worker_models, device, precision, links) {
            Ok(worker) => {
                let _ = ready_tx.send(Ok(()));
                worker.run()
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                Err(e)
            }
        };
        let _ = ended_tx.send(result);
    })
    .map_err(|e| WatchError::Io(format!("cannot start infer thread: {e}")))?;
    // Wait for the model, still answering SIGTERM: loading can take minutes on a slow
    // disk. A model that fails to load ends the process at once (exit 2, as for any
    // problem the operator must fix in files), after the publisher has said `offline`.
    let loaded = crossbeam_channel::select! {
        recv(ready_rx) -> r => match r {
            Ok(Ok(())) => None,
            _ => Some(match ended_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Err(e)) => Err(WatchError::from(e)),
                _ => Err(WatchError::Io("the inference thread ended while loading the model".into())),
            }),
        },
        recv(signals) -> s => {
            tracing::info!("signal {}: stopping while the model loads", s.unwrap_or(0));
            Some(Ok(()))
        }
    };
    if let Some(result) = loaded {
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        // Every sender of the publisher's events must go for it to finish.
        drop((error_events, infer_stop_tx));
        wait_for(publisher, Duration::from_millis(2500));
        return result;
    }
    threads::spawn("alerts", move || reloader.run(&alerts_text, alerts_stamp))
        .map_err(|e| WatchError::Io(format!("cannot start alerts thread: {e}")))?;
    // Alert file problems go out on {prefix}/errors through the publisher.
    threads::spawn("alert-errors", move || {
        for (severity, problems) in problems_rx {
            if error_events.send(Event::Error { source: "alerts", severity, problems }).is_err() {
                return;
            }
        }
    })
    .map_err(|e| WatchError::Io(format!("cannot start thread: {e}")))?;
    let mut camera_threads = Vec::new();
    for cam in &cameras {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let (c, q) = (Arc::clone(cam), queue.clone());
        let timing = Timing { stall_timeout: cam.camera.stall_timeout, ..Timing::default() };
        let spawned = threads::spawn(format!("camera:{}", cam.name()), move || {
            supervisor::run(c, q, stop_rx, Box::new(GstOpener { teardown_limit: TEARDOWN_LIMIT }), timing);
            let _ = done_tx.send(());
        });
        spawned.map_err(|e| WatchError::Io(format!("cannot start camera thread: {e}")))?;
        tracing::info!(camera = %cam.name(), "camera {} watching {}", cam.name(), cam.camera.source.redacted);
        camera_threads.push((cam.name().to_string(), stop_tx, done_rx));
    }
    drop(queue);
    tracing::info!("watching {} camera(s)", cameras.len());
    // Cameras started, model warmed up: tell systemd, and keep telling it we are alive.
    notify::ready();
    let (notify_stop_tx, notify_stop_rx) = crossbeam_channel::bounded::<()>(1);
    {
        let (cams, m) = (cameras.clone(), Arc::clone(&metrics));
        threads::spawn("notify", move || {
            let counter = Arc::clone(&m);
            notify::run(cams, m, move || counter.hits_total.load(std::sync::atomic::Ordering::Relaxed), notify_stop_rx)
        })
        .map_err(|e| WatchError::Io(format!("cannot start notify thread: {e}")))?;
    }

    if let Some(observer) = options.observer.take() {
        let _ = observer.send(Running { cameras: cameras.clone(), metrics: Arc::clone(&metrics) });
    }
    let external = options.stop.take().unwrap_or_else(crossbeam_channel::never);
    let stop = loop {
        break crossbeam_channel::select! {
            recv(external) -> _ => Stop::Signal(0),
            recv(signals) -> s => Stop::Signal(s.unwrap_or(0)),
            recv(ended_rx) -> r => Stop::WorkerEnded(r.unwrap_or(Err(WorkerError::PublisherGone))),
            recv(thread_ends) -> e => match e {
                Ok(e) if e.generation != generation => continue,
                // The worker's own report says why it ended.
                Ok(e) if e.name == "infer" && !e.panicked => {
                    Stop::WorkerEnded(ended_rx.recv_timeout(Duration::from_secs(1)).unwrap_or(Err(WorkerError::PublisherGone)))
                }
                Ok(e) => {
                    tracing::error!("{e} while the daemon runs; stopping (exit status 1, so systemd restarts carwatch)");
                    Stop::ThreadEnded(e)
                }
                Err(_) => continue,
            },
        };
    };
    let started = Instant::now();
    notify::stopping();
    drop(notify_stop_tx);
    if let Stop::Signal(s) = &stop {
        tracing::info!("signal {s}: shutting down");
    }
    for (_, stop_tx, _) in &camera_threads {
        let _ = stop_tx.send(());
    }
    let deadline = Instant::now() + TEARDOWN_LIMIT + Duration::from_millis(500);
    for (name, _, done) in &camera_threads {
        if done.recv_deadline(deadline).is_err() {
            tracing::warn!(camera = %name, "camera {name} did not stop in time; leaving it");
        }
    }
    let result = match stop {
        Stop::WorkerEnded(r) => r.map_err(WatchError::from),
        Stop::ThreadEnded(e) => Err(WatchError::ThreadEnded(e)),
        Stop::Signal(_) => {
            let _ = infer_stop_tx.send(());
            ended_rx.recv_timeout(Duration::from_secs(2)).unwrap_or(Ok(())).map_err(WatchError::from)
        }
    };
    drop(infer_stop_tx);
    drop(reload_stop_tx);
    // The publisher stores what the worker handed over, delivers for up to 1.5 s, says
    // `offline` (up to 1 s for its acknowledgement) and disconnects (0.5 s).
    wait_for(publisher, Duration::from_secs(5));
    tracing::info!("stopped in {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn wait_for(thread: std::thread::JoinHandle<()>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if thread.is_finished() {
        let _ = thread.join();
    } else {
        tracing::warn!("publisher did not finish within {limit:?}");
    }
}

/// SIGINT and SIGTERM (stop) and SIGHUP (re-read the alert file), as channels.
fn signals() -> Result<(Receiver<i32>, Receiver<()>), WatchError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| WatchError::Io(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx): (Sender<i32>, Receiver<i32>) = crossbeam_channel::bounded(4);
    let (hup_tx, hup_rx) = crossbeam_channel::bounded::<()>(4);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if s == SIGHUP {
                    // A full queue already holds a pending re-read.
                    let _ = hup_tx.try_send(());
                } else if tx.send(s).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| WatchError::Io(format!("cannot start signal thread: {e}")))?;
    Ok((rx, hup_rx))
}

/// The models directory `watch` would use (for `check`).
pub fn models_dir<'a>(config: &'a Config, override_: Option<&'a Path>) -> &'a Path {
    override_.unwrap_or(&config.model.dir)
}
