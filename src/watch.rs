//! `carwatch watch`: the daemon, put together.
//!
//! [`Daemon::start`] checks everything before starting anything: config (already
//! parsed), the models' manifest, the alert file against the models' labels, the lock
//! on `state_dir`. Then, in order: the embedded broker (when no `[mqtt]`), the MQTT
//! client and the `publish` thread, the `infer` thread (which loads the model and owns
//! it), the `alerts` thread, and one `camera:<name>` thread per camera. Data then flows
//! one way: cameras -> frame queue -> infer (batcher, cascade, matcher) -> publish.
//! Every thread is started through [`crate::threads`], so the daemon hears when any of
//! them ends.
//!
//! [`Daemon::wait`] runs until the [`Shutdown`] it was given fires (the binary installs
//! SIGINT/SIGTERM there, as mini-redis passes `ctrl_c` into its server), the inference
//! worker fails, or a thread ends or panics. Shutdown then runs the other way: cameras
//! are told to stop and their pipelines torn down (bounded, see `Pipeline::close`), the
//! worker finishes the batch in hand, the publisher stores what it holds, delivers for
//! a bounded time, publishes `offline` and disconnects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::alerts::{self, AlertSet, AlertsError, Reloader, Severity, Vocabulary, remote};
use crate::batcher::{BatchSize, Batcher};
use crate::camera::supervisor::{self, GstOpener, Timing};
use crate::camera::{CameraShared, FrameQueue};
use crate::config::{Config, Problems};
use crate::infer::{Links, Wiring, Worker, WorkerError};
use crate::locate::Method;
use crate::locate::motion::{MotionConfig, MotionLocator};
use crate::matcher::Matcher;
use crate::metrics::Metrics;
use crate::model::{Manifest, ModelError};
use crate::notify;
use crate::publish::homeassistant::Discovery;
use crate::publish::inbound::{self, HomeAssistant};
use crate::publish::mqtt::{Mqtt, MqttSettings};
use crate::publish::outbox::{Outbox, OutboxError};
use crate::publish::{Event, HitCallback, PublishError, Publisher, PublisherConfig, broker, http};
use crate::sightings::{self, Recorder};
use crate::snapshot;
use crate::state_dir::{self, StateDirError, StateLock};
use crate::threads::{self, Ended};

/// Options that do not belong in the config file.
#[derive(Default)]
pub struct WatchOptions {
    /// Use this models directory instead of `model.dir`.
    pub models: Option<PathBuf>,
    /// Called with every hit's JSON (for `--print-hits`).
    pub on_hit: Option<HitCallback>,
    /// What tests and benchmarks reach into; nothing an operator sets.
    pub seam: Seam,
}

/// The one test seam: how tests and `bench pipeline` look into a running daemon.
#[derive(Default)]
pub struct Seam {
    /// The inference loop stops after start-up (the watchdog test).
    pub hang_inference: bool,
    /// The model takes a minute to load (the test of stopping meanwhile).
    pub slow_load: bool,
    /// Receives the cameras and metrics once everything runs.
    pub running: Option<Sender<Running>>,
    /// The supervised thread of this name panics once everything runs (the
    /// supervision test).
    pub panic_thread: Option<String>,
}

/// A view of a running watcher.
pub struct Running {
    pub cameras: Vec<Arc<CameraShared>>,
    pub metrics: Arc<Metrics>,
}

/// What stops the daemon (a signal number; 0 when asked otherwise) and what asks it to
/// read its alert file again.
pub struct Shutdown {
    pub stop: Receiver<i32>,
    pub reload: Receiver<()>,
}

impl Shutdown {
    /// SIGINT and SIGTERM stop, SIGHUP re-reads the alert file (thread `signals`).
    /// Installed by the binary: a library that grabbed signals would surprise its caller.
    pub fn signals() -> std::io::Result<Shutdown> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let (tx, stop) = crossbeam_channel::bounded(4);
        let (hup_tx, reload) = crossbeam_channel::bounded(4);
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for s in signals.forever() {
                if s == SIGHUP {
                    // A full queue already holds a pending re-read.
                    let _ = hup_tx.try_send(());
                } else if tx.send(s).is_err() {
                    return;
                }
            }
        })?;
        Ok(Shutdown { stop, reload })
    }

    /// A shutdown fired by sending on (or dropping) the returned sender.
    pub fn channel() -> (Sender<i32>, Shutdown) {
        let (tx, stop) = crossbeam_channel::bounded(1);
        (tx, Shutdown { stop, reload: crossbeam_channel::never() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Alerts(#[from] AlertsError),
    #[error("GStreamer: {0}")]
    Gstreamer(#[source] gstreamer::glib::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Http(#[from] crate::publish::http::HttpError),
    #[error("[broker]: {0}")]
    BrokerConfig(String),
    #[error("cannot start thread `{thread}`: {source}")]
    Spawn { thread: String, source: std::io::Error },
    #[error("inference worker: {0}")]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{0}")]
    ThreadEnded(Ended),
    #[error("the inference thread ended while loading the model")]
    LoadAbandoned,
}

fn spawn_err(thread: impl Into<String>) -> impl FnOnce(std::io::Error) -> WatchError {
    let thread = thread.into();
    move |source| WatchError::Spawn { thread, source }
}

/// Why the daemon is stopping.
enum Stop {
    Signal(i32),
    WorkerEnded(Result<(), WorkerError>),
    /// A supervised thread ended (returned or panicked) while everything should run.
    ThreadEnded(Ended),
}

/// Longest a camera pipeline may take to stop.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(2);

/// Runs until `shutdown` fires (Ok), or until the worker fails or a thread ends (Err).
pub fn run(config: &Config, options: WatchOptions, shutdown: Shutdown) -> Result<(), WatchError> {
    match Daemon::start(config, options, shutdown)? {
        Some(daemon) => daemon.wait(),
        None => Ok(()),
    }
}

/// A camera thread and how to stop it.
struct CameraThread {
    name: String,
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

/// The running daemon: every thread it started, by name, and how to stop each.
pub struct Daemon {
    generation: u64,
    thread_ends: Receiver<Ended>,
    stop: Receiver<i32>,
    cameras: Vec<CameraThread>,
    infer: JoinHandle<()>,
    infer_stop: Sender<()>,
    /// The worker's own account of why it ended.
    infer_ended: Receiver<Result<(), WorkerError>>,
    alerts: JoinHandle<()>,
    alerts_stop: Sender<()>,
    /// Receives alerts set over MQTT; stops with `alerts`.
    inbound: JoinHandle<()>,
    notify: JoinHandle<()>,
    notify_stop: Sender<()>,
    /// Removes snapshot files past `[snapshots] retain_days`.
    pruner: JoinHandle<()>,
    prune_stop: Sender<()>,
    publisher: JoinHandle<()>,
    /// Ends once the worker (its only sender) has: then it has stored what it was given.
    sightings: Option<JoinHandle<()>>,
    _state_lock: StateLock,
}

/// What start-up read and checked before starting anything.
struct Checked {
    models: PathBuf,
    alerts: AlertFile,
    state_lock: StateLock,
}

/// The alert file as read at start, for the `alerts` thread to carry on from.
struct AlertFile {
    set: AlertSet,
    vocabulary: Vocabulary,
    text: String,
    stamp: alerts::Stamp,
}

/// The output side, running: the publisher and what feeds it.
struct Output {
    publisher: JoinHandle<()>,
    events: Sender<Event>,
    /// The broker, for connections of other stages (alerts set over MQTT).
    mqtt: MqttSettings,
    /// Home Assistant discovery, when on; `births` tells the publisher to send it again.
    discovery: Option<Discovery>,
    births: Sender<()>,
    cameras: Vec<Arc<CameraShared>>,
    metrics: Arc<Metrics>,
}

/// The `alerts` thread, how to stop it, and the `inbound` thread (which stops with it).
struct AlertThreads {
    handle: JoinHandle<()>,
    stop: Sender<()>,
    inbound: JoinHandle<()>,
}

/// The inference thread, started; `ready` says whether the model loaded.
struct Inference {
    handle: JoinHandle<()>,
    stop: Sender<()>,
    ready: Receiver<Result<(), String>>,
    /// Hands the loaded worker its [`Wiring`]; dropped unsent when the daemon stops
    /// while the model loads.
    wire: Sender<Wiring>,
    ended: Receiver<Result<(), WorkerError>>,
    queue: FrameQueue,
    alert_updates: Sender<AlertSet>,
}

impl Daemon {
    /// Checks, then starts every stage. `None`: `shutdown` fired while the model loaded.
    pub fn start(config: &Config, options: WatchOptions, shutdown: Shutdown) -> Result<Option<Daemon>, WatchError> {
        let WatchOptions { models, on_hit, seam } = options;
        gstreamer::init().map_err(WatchError::Gstreamer)?;
        let generation = threads::begin();
        let thread_ends = threads::ended();
        let Checked { models, alerts: alert_file, state_lock } = check(config, models)?;
        let output = start_output(config, on_hit)?;
        let matcher = Matcher::new(alert_file.set.clone());
        let (recorder, sightings) = start_sightings(config, &output)?;
        let inference = start_inference(config, &models, matcher, &output, &seam)?;
        // Wait for the model, still answering SIGTERM: loading can take minutes on a slow
        // disk. A model that fails to load ends the process at once (exit 2, as for any
        // problem the operator must fix in files), after the publisher has said `offline`.
        let loaded = crossbeam_channel::select! {
            recv(inference.ready) -> r => match r {
                Ok(Ok(())) => None,
                _ => Some(match inference.ended.recv_timeout(Duration::from_secs(5)) {
                    Ok(Err(e)) => Err(WatchError::from(e)),
                    _ => Err(WatchError::LoadAbandoned),
                }),
            },
            recv(shutdown.stop) -> s => {
                tracing::info!("signal {}: stopping while the model loads", s.unwrap_or(0));
                Some(Ok(()))
            }
        };
        if let Some(result) = loaded {
            if let Err(e) = &result {
                tracing::error!("{e}");
            }
            // Every sender of the publisher's events must go for it to finish (the
            // worker has none yet: it gets one once loaded and wired).
            drop((output.events, recorder, inference.stop, inference.wire));
            join_within("publish", output.publisher, Duration::from_millis(2500));
            // A load cannot be interrupted: one still under way is left behind, and the
            // process must then leave without running libtorch's destructors under it
            // (see `threads::leave_if_any_running`).
            match inference.ended.recv_timeout(Duration::from_secs(2)) {
                Ok(_) => join_within("infer", inference.handle, Duration::from_millis(500)),
                Err(_) => tracing::info!("the model is still loading: not waiting for it"),
            }
            return result.map(|()| None);
        }
        if inference.wire.send(Wiring { events: output.events.clone(), sightings: recorder }).is_err() {
            return Err(WatchError::LoadAbandoned);
        }
        let AlertThreads { handle: alerts, stop: alerts_stop, inbound } =
            start_alerts(config, alert_file, shutdown.reload, inference.alert_updates, &output)?;
        let cameras = start_cameras(&output.cameras, &inference.queue, config.locate.motion)?;
        drop(inference.queue);
        tracing::info!("watching {} camera(s)", cameras.len());
        // Cameras started, model warmed up: tell systemd, and keep telling it we are alive.
        notify::ready();
        let (notify_stop, notify_stop_rx) = crossbeam_channel::bounded::<()>(1);
        // Old snapshot files go in the background, hourly.
        let (prune_stop, prune_stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (dir, days) = (config.snapshot_dir(), config.snapshots.retain_days);
        let pruner = threads::spawn("snapshots", move || snapshot::run_pruner(dir, days, prune_stop_rx))
            .map_err(spawn_err("snapshots"))?;
        let (cams, m) = (output.cameras.clone(), Arc::clone(&output.metrics));
        let notify = threads::spawn("notify", move || {
            let counter = Arc::clone(&m);
            notify::run(cams, m, move || counter.hits_total.load(std::sync::atomic::Ordering::Relaxed), notify_stop_rx)
        })
        .map_err(spawn_err("notify"))?;
        if let Some(name) = seam.panic_thread {
            threads::inject_panic(&name);
        }
        if let Some(running) = seam.running {
            let _ = running.send(Running { cameras: output.cameras.clone(), metrics: Arc::clone(&output.metrics) });
        }
        Ok(Some(Daemon {
            generation,
            thread_ends,
            stop: shutdown.stop,
            cameras,
            infer: inference.handle,
            infer_stop: inference.stop,
            infer_ended: inference.ended,
            alerts,
            alerts_stop,
            inbound,
            notify,
            notify_stop,
            pruner,
            prune_stop,
            publisher: output.publisher,
            sightings,
            _state_lock: state_lock,
        }))
    }

    /// Runs until the shutdown fires, the worker fails or a thread ends; then stops
    /// every stage, last to first.
    pub fn wait(self) -> Result<(), WatchError> {
        let stop = self.stop_reason();
        let started = Instant::now();
        notify::stopping();
        drop((self.notify_stop, self.prune_stop));
        if let Stop::Signal(s) = &stop {
            tracing::info!("signal {s}: shutting down");
        }
        for cam in &self.cameras {
            let _ = cam.stop.send(());
        }
        let deadline = Instant::now() + TEARDOWN_LIMIT + Duration::from_millis(500);
        for cam in self.cameras {
            if !join_before(&cam.name, cam.handle, deadline) {
                tracing::warn!(camera = %cam.name, "camera {} did not stop in time; leaving it", cam.name);
            }
        }
        let result = match stop {
            Stop::WorkerEnded(r) => r.map_err(WatchError::from),
            Stop::ThreadEnded(e) => Err(WatchError::ThreadEnded(e)),
            Stop::Signal(_) => {
                let _ = self.infer_stop.send(());
                self.infer_ended.recv_timeout(Duration::from_secs(2)).unwrap_or(Ok(())).map_err(WatchError::from)
            }
        };
        drop((self.infer_stop, self.alerts_stop));
        join_within("infer", self.infer, Duration::from_millis(500));
        if let Some(s) = self.sightings {
            join_within("sightings", s, Duration::from_secs(2));
        }
        join_within("alerts", self.alerts, Duration::from_millis(500));
        join_within("inbound", self.inbound, Duration::from_millis(800));
        join_within("notify", self.notify, Duration::from_millis(500));
        join_within("snapshots", self.pruner, Duration::from_millis(500));
        // The publisher stores what the worker handed over, delivers for up to 1.5 s,
        // says `offline` (up to 1 s for its acknowledgement) and disconnects (0.5 s).
        join_within("publish", self.publisher, Duration::from_secs(5));
        tracing::info!("stopped in {:.1} s", started.elapsed().as_secs_f64());
        result
    }

    /// Waits for the first reason to stop. A thread of this run that ends is one,
    /// except the worker, whose own report says why it ended.
    fn stop_reason(&self) -> Stop {
        loop {
            return crossbeam_channel::select! {
                recv(self.stop) -> s => Stop::Signal(s.unwrap_or(0)),
                recv(self.infer_ended) -> r => Stop::WorkerEnded(r.unwrap_or(Err(WorkerError::PublisherGone))),
                recv(self.thread_ends) -> e => match e {
                    Ok(e) if e.generation != self.generation => continue,
                    Ok(e) if e.name == "infer" && !e.panicked => Stop::WorkerEnded(
                        self.infer_ended.recv_timeout(Duration::from_secs(1)).unwrap_or(Err(WorkerError::PublisherGone)),
                    ),
                    Ok(e) => {
                        tracing::error!("{e} while the daemon runs; stopping (exit status 1, so systemd restarts carwatch)");
                        Stop::ThreadEnded(e)
                    }
                    Err(_) => continue,
                },
            };
        }
    }
}

/// Everything checked before anything starts: manifest, alerts against its labels,
/// the device, the lock on `state_dir`.
fn check(config: &Config, models: Option<PathBuf>) -> Result<Checked, WatchError> {
    let models = models.unwrap_or_else(|| config.model.dir.clone());
    let manifest = Manifest::load(&models)?;
    let vocabulary =
        Vocabulary { leaves: manifest.leaves(), cameras: config.cameras.iter().map(|c| c.name.clone()).collect() };
    // The stamp before the text: an edit in between is then seen as a change.
    let stamp = alerts::stamp(&config.alerts);
    let text = std::fs::read_to_string(&config.alerts)
        .map_err(|source| AlertsError::Read { path: config.alerts.clone(), source })?;
    let set = AlertSet::parse(&config.alerts, &text, &vocabulary, &config.matcher).map_err(AlertsError::Invalid)?;
    tracing::info!("{} alert(s) from {}", set.alerts.len(), config.alerts.display());
    // Fail early, before anything starts, on a device that is not there.
    config.model.device.resolve()?;
    let state_lock = state_dir::lock(&config.state_dir)?;
    let removed = snapshot::remove_temporaries(&config.snapshot_dir());
    if removed > 0 {
        tracing::warn!("removed {removed} partial snapshot file(s) left by an earlier run (crash or full disk)");
    }
    Ok(Checked { models, alerts: AlertFile { set, vocabulary, text, stamp }, state_lock })
}

/// The broker connection (and the embedded broker), the outbox, metrics and the
/// `publish` thread.
fn start_output(config: &Config, on_hit: Option<HitCallback>) -> Result<Output, WatchError> {
    let settings = match &config.mqtt {
        Some(s) => s.clone(),
        None => {
            if let Some(warning) = config.broker.exposure_warning() {
                tracing::warn!("{warning}");
            }
            let account = config.broker.account().map_err(WatchError::BrokerConfig)?;
            broker::start(config.broker.listen, account.as_ref())?;
            MqttSettings::local(config.broker.listen, account)
        }
    };
    let (outbox, recovery) = Outbox::open(&config.state_dir.join("outbox"), config.outbox.bounds())?;
    if recovery.pending > 0 {
        tracing::info!("{} undelivered hit(s) found in the outbox; they will be delivered again", recovery.pending);
    }
    if recovery.corrupt > 0 || recovery.truncated > 0 {
        tracing::error!(
            "outbox: skipped {} damaged stretch(es) and {} torn byte(s) at its end; every valid record was kept",
            recovery.corrupt,
            recovery.truncated
        );
    }
    let mqtt = Mqtt::start(&settings, &config.topics)?;
    let cameras: Vec<Arc<CameraShared>> = config.cameras.iter().cloned().map(CameraShared::new).collect();
    let metrics = Metrics::new(&cameras);
    let names: Vec<String> = config.cameras.iter().map(|c| c.name.to_string()).collect();
    let board = http::Board::new(&names);
    if let Some(listen) = config.http.listen.or(config.metrics.listen) {
        let roots = http::Roots {
            snapshots: config.snapshot_dir(),
            thumbnails: config.sightings.enabled.then(|| config.sightings.thumbnails(&config.state_dir)),
        };
        http::serve(listen, &config.http, Arc::clone(&metrics), Arc::clone(&board), roots)?;
    }
    let (events, events_rx) = crossbeam_channel::bounded(256);
    let discovery = config
        .homeassistant
        .enabled
        .then(|| Discovery::new(&config.homeassistant, &config.topics, &names, config.snapshots.mqtt));
    let (births, births_rx) = crossbeam_channel::bounded(1);
    let publisher_config = PublisherConfig {
        discovery: discovery.clone(),
        births: births_rx,
        topics: config.topics.clone(),
        snapshot_dir: config.snapshot_dir(),
        snapshots: config.snapshots.clone(),
        status_interval: config.status_interval,
        on_hit,
        metrics: Arc::clone(&metrics),
        stats_interval: config.metrics.stats_interval,
        board,
    };
    let publisher =
        Publisher::spawn(mqtt, outbox, publisher_config, cameras.clone(), events_rx).map_err(spawn_err("publish"))?;
    Ok(Output { publisher, events, mqtt: settings, discovery, births, cameras, metrics })
}

/// The frame queue and the `infer` thread, which loads the model and says when it is
/// ready. On a GPU the worker measures batches up to 256 (`max_size = "auto"`), and the
/// queue must be able to hold them.
fn start_inference(
    config: &Config,
    models: &Path,
    matcher: Matcher,
    output: &Output,
    seam: &Seam,
) -> Result<Inference, WatchError> {
    let (hang, slow_load) = (seam.hang_inference, seam.slow_load);
    let gpu = config.model.device.resolve().map(|d| d.is_cuda()).unwrap_or(false);
    let (queue, frames) = FrameQueue::bounded(config.batch.queue_len(gpu), config.batch.queue_bytes);
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (ready_tx, ready) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let (wire, wire_rx) = crossbeam_channel::bounded::<Wiring>(1);
    let (ended_tx, ended) = crossbeam_channel::bounded::<Result<(), WorkerError>>(1);
    let (alert_updates, updates_rx) = crossbeam_channel::bounded(4);
    let cap = config.batch.max_size.cap(gpu) as usize;
    let auto_batch = (config.batch.max_size == BatchSize::Auto).then_some(cap.min(config.batch.queue_len(gpu)));
    let links = Links {
        batcher: Batcher::new(frames, stop_rx, cap, config.batch.max_wait),
        matcher,
        alert_updates: updates_rx,
        metrics: Arc::clone(&output.metrics),
        hang,
        auto_batch,
        locate: config.locate.clone(),
        detector: config
            .cameras
            .iter()
            .any(|c| c.enabled && c.locate == Method::Detector)
            .then(|| config.detector.clone())
            .flatten(),
    };
    let (models, device, precision, n) =
        (models.to_path_buf(), config.model.device, config.model.precision, config.model.threads);
    let handle = threads::spawn("infer", move || {
        // libtorch's intra-op thread count is per calling thread: set it here, on the
        // thread that runs the model.
        if let Some(n) = n {
            tch::set_num_threads(n.get() as i32);
        }
        tracing::info!("model runs on {} intra-op thread(s)", tch::get_num_threads());
        if slow_load {
            tracing::warn!("test fault: the model takes a minute to load");
            std::thread::sleep(Duration::from_secs(60));
        }
        let result = match Worker::load(&models, device, precision, links) {
            Ok(worker) => {
                let _ = ready_tx.send(Ok(()));
                match wire_rx.recv() {
                    Ok(wiring) => worker.run(wiring),
                    // The daemon stopped while the model loaded.
                    Err(_) => Ok(()),
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                Err(e)
            }
        };
        let _ = ended_tx.send(result);
    })
    .map_err(spawn_err("infer"))?;
    Ok(Inference { handle, stop, ready, wire, ended, queue, alert_updates })
}

/// The `alerts` thread (the file, re-read when it changes) and `alert-errors`, which
/// hands its problems to the publisher for `{prefix}/errors`.
fn start_alerts(
    config: &Config,
    file: AlertFile,
    reload: Receiver<()>,
    updates: Sender<AlertSet>,
    output: &Output,
) -> Result<AlertThreads, WatchError> {
    let (problems_tx, problems_rx) = crossbeam_channel::bounded::<(Severity, Problems)>(16);
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
    // Retained alerts arrive together at each connection: room for a fleet's worth.
    let (remote_tx, remote_rx) = crossbeam_channel::bounded::<remote::Message>(1024);
    let (settings, topics, stop_sets) = (output.mqtt.clone(), config.topics.clone(), stop_rx.clone());
    let ha = output.discovery.clone().map(|discovery| HomeAssistant { discovery, births: output.births.clone() });
    let inbound = threads::spawn("inbound", move || inbound::run(&settings, &topics, remote_tx, ha, stop_sets))
        .map_err(spawn_err("inbound"))?;
    let reloader = Reloader {
        path: config.alerts.clone(),
        vocabulary: file.vocabulary,
        defaults: config.matcher.clone(),
        updates,
        errors: problems_tx,
        hup: reload,
        stop: stop_rx,
        remote: remote_rx,
        poll: Duration::from_secs(2),
        settle: Duration::from_millis(300),
        empty_settle: Duration::from_secs(3),
    };
    let (text, stamp, set) = (file.text, file.stamp, file.set);
    let handle = threads::spawn("alerts", move || reloader.run(&text, stamp, set)).map_err(spawn_err("alerts"))?;
    let events = output.events.clone();
    threads::spawn("alert-errors", move || {
        for (severity, problems) in problems_rx {
            if events.send(Event::Error { source: "alerts", severity, problems }).is_err() {
                return;
            }
        }
    })
    .map_err(spawn_err("alert-errors"))?;
    Ok(AlertThreads { handle, stop, inbound })
}

/// The `sightings` thread, when `[sightings]` is enabled and some camera is; the
/// worker's end of its channel.
fn start_sightings(config: &Config, output: &Output) -> Result<(Option<Recorder>, Option<JoinHandle<()>>), WatchError> {
    if !config.sightings.enabled || !config.cameras.iter().any(|c| c.enabled) {
        return Ok((None, None));
    }
    let counters = Arc::clone(&output.metrics.sightings);
    let (recorder, rx) = sightings::channel(Arc::clone(&counters), config.sightings.refresh);
    let path = config.sightings.path(&config.state_dir);
    let c = config.sightings.clone();
    let events = output.events.clone();
    let found = move |f| {
        let event = match f {
            sightings::Found::Retrospective(r) => Event::Retrospective(Box::new(r)),
            sightings::Found::Sighting(s) => Event::Sighting(Box::new(s)),
        };
        events.send(event).is_ok()
    };
    let handle = threads::spawn("sightings", move || sightings::run(c, path, rx, counters, found))
        .map_err(spawn_err("sightings"))?;
    Ok((Some(recorder), Some(handle)))
}

/// One `camera:<name>` thread per camera, each supervising its pipeline.
fn start_cameras(
    cameras: &[Arc<CameraShared>],
    queue: &FrameQueue,
    motion: MotionConfig,
) -> Result<Vec<CameraThread>, WatchError> {
    let mut started = Vec::with_capacity(cameras.len());
    for cam in cameras {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (c, q) = (Arc::clone(cam), queue.clone());
        let timing = Timing { stall_timeout: cam.camera.stall_timeout, ..Timing::default() };
        let opener = Box::new(GstOpener { teardown_limit: TEARDOWN_LIMIT });
        let locator = (cam.camera.locate == Method::Motion).then(|| MotionLocator::new(motion));
        let handle = threads::spawn(format!("camera:{}", cam.name()), move || {
            supervisor::run(c, q, stop_rx, opener, timing, locator);
        })
        .map_err(spawn_err(format!("camera:{}", cam.name())))?;
        tracing::info!(camera = %cam.name(), "camera {} watching {}", cam.name(), cam.camera.source.redacted);
        started.push(CameraThread { name: cam.name().to_string(), stop, handle });
    }
    Ok(started)
}

/// Joins `thread` if it ends before `deadline`; true if it did.
fn join_before(name: &str, thread: JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !thread.is_finished() {
        return false;
    }
    if thread.join().is_err() {
        tracing::error!("thread `{name}` panicked while stopping");
    }
    true
}

/// Joins `thread` within `limit`, or leaves it (logged).
fn join_within(name: &str, thread: JoinHandle<()>, limit: Duration) {
    if !join_before(name, thread, Instant::now() + limit) {
        tracing::warn!("thread `{name}` did not finish within {limit:?}");
    }
}
