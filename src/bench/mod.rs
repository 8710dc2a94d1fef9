//! `carwatch bench`: measurements that tell the truth about throughput.
//!
//! - [`model`]: backbone plus cascade on the real VGG-19 shape (random weights when no
//!   real ones are given), for each precision the device supports and several batch
//!   sizes, after a warm-up, each timed for at least a minimum duration. The input is an
//!   already-normalised batch on the device; the cascade's output is copied back to the
//!   host, as the worker does.
//! - [`pipeline`]: N synthetic RTSP cameras (served by a child `carwatch synth rtsp`
//!   process, so that encoding them is not counted) through the whole watch path, up to
//!   the matcher and a real MQTT publish to the embedded broker: sustained analysed
//!   frames per second, drops, capture-to-PUBACK latency, CPU time per analysed frame
//!   split between decoding and inference (from per-thread CPU clocks), peak RSS.
//!
//! - [`accuracy`]: wide views located, tracked and decided, against generated truth.
//!
//! Results are plain structs; the CLI prints them as a table or as JSON.

pub mod accuracy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::model::backbone::{Backbone, VggSpec};
use crate::model::cascade::Cascade;
use crate::model::feed::Feeder;
use crate::model::manifest::{BackboneEntry, FORMAT, HeadEntry, Manifest};
use crate::model::weights::write_atomic;
use crate::model::{Level, Placement, Precision};

/// One `bench model` measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub device: String,
    pub precision: String,
    pub batch: usize,
    pub img_per_s: f64,
    pub ms_per_batch: f64,
    /// GFLOP/s achieved by the backbone's convolutions.
    pub gflops: f64,
    pub iterations: usize,
    /// `random` (13 uncertain heads on noise: every head runs) or the models directory
    /// measured on generated vehicle photos.
    pub cascade: String,
    /// The backbone alone on the same input: with `img_per_s`, what the heads and the
    /// copy of predictions back to the host cost.
    pub backbone_img_per_s: f64,
    /// From 224x224 RGB frames in host memory (uint8, HWC) to predictions on the host,
    /// as `watch` runs it: upload (pinned, on a side stream, overlapping the previous
    /// batch on CUDA), normalisation, backbone, heads.
    pub from_frames_img_per_s: f64,
}

/// Runs `step` `opts.warmup` times, then until `opts.min_time` has passed (at least 3
/// times): (timed runs, seconds).
fn timed(opts: &ModelOptions, mut step: impl FnMut() -> Result<(), String>) -> Result<(usize, f64), String> {
    for _ in 0..opts.warmup {
        step()?;
    }
    let start = Instant::now();
    let mut n = 0;
    while n < 3 || start.elapsed() < opts.min_time {
        step()?;
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// What `bench model` measures.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Backbone weights; random VGG-19 weights when absent.
    pub backbone: Option<PathBuf>,
    /// A trained models directory: its backbone (and int8 copy) and its cascade, fed
    /// generated vehicle photos, so heads the photos cannot reach are skipped as in
    /// `watch`. Overrides `backbone`.
    pub models: Option<PathBuf>,
    pub device: Device,
    pub precisions: Vec<Precision>,
    pub batches: Vec<usize>,
    /// Each measurement runs at least this long (and at least 3 batches).
    pub min_time: Duration,
    pub warmup: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A cascade like a real one (3 views, 3 makes per view, 3 models per make) with random
/// weights, written to `dir`: what the heads cost does not depend on their values.
pub fn random_cascade(dir: &Path, backbone_file: &Path, spec: VggSpec) -> Result<Manifest, String> {
    std::fs::create_dir_all(dir.join("heads")).map_err(err)?;
    let labels = |p: &str| (0..3).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let mut heads = Vec::new();
    let mut head =
        |id: String, level: Level, labels: Vec<String>, next: BTreeMap<String, String>| -> Result<(), String> {
            let k = labels.len() as i64;
            let hidden = 256;
            let rel = PathBuf::from(format!("heads/{}.safetensors", id.replace('/', "_")));
            let t = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.01;
            let tensors = vec![
                ("0.weight".to_string(), t(&[hidden, spec.feature_len()])),
                ("0.bias".to_string(), t(&[hidden])),
                ("3.weight".to_string(), t(&[k, hidden])),
                ("3.bias".to_string(), t(&[k])),
            ];
            write_atomic(&dir.join(&rel), &tensors).map_err(err)?;
            heads.push(HeadEntry { id, level, labels, weights: Some(rel), hidden, next, validation_accuracy: None });
            Ok(())
        };
    let views = labels("view");
    head("view".into(), Level::View, views.clone(), views.iter().map(|v| (v.clone(), format!("{v}/make"))).collect())?;
    for v in &views {
        let makes = labels("make");
        head(
            format!("{v}/make"),
            Level::Make,
            makes.clone(),
            makes.iter().map(|m| (m.clone(), format!("{v}/{m}/model"))).collect(),
        )?;
        for m in &makes {
            head(format!("{v}/{m}/model"), Level::Model, labels("model"), BTreeMap::new())?;
        }
    }
    let manifest = Manifest {
        dir: dir.to_path_buf(),
        format: FORMAT,
        notice: Some("random cascade for benchmarks".into()),
        root: "view".into(),
        backbone: BackboneEntry { file: backbone_file.to_path_buf(), widths: spec, int8: None, int8_agreement: None },
        heads,
    };
    manifest.save(dir).map_err(err)?;
    Ok(manifest)
}

/// `n` generated vehicle photos (every class in turn), preprocessed for the CPU in fp32.
fn generated_photos(n: usize) -> Result<Tensor, String> {
    let images = crate::synthetic::photos(n, 11, 160, 128);
    let views = crate::model::preprocess::whole(&images);
    let cpu = Placement { device: Device::Cpu, precision: Precision::Fp32 };
    crate::model::preprocess::batch(&views, cpu).map_err(err)
}

/// The benchmark backbone quantized to int8, calibrated on generated photos.
fn int8_backbone(weights: &Path, scratch: &Path) -> Result<Backbone, String> {
    let spec = {
        let f = crate::model::weights::WeightFile::open(weights).map_err(err)?;
        VggSpec::infer(&f).map_err(err)?
    };
    let calibration = generated_photos(48)?;
    let out = scratch.join("int8.pt");
    tracing::info!("quantizing the benchmark backbone to int8 (calibrated on 48 generated photos)");
    crate::model::int8::quantize(weights, spec, &calibration, crate::model::int8::FirstConv::Int8, &out)
        .map_err(err)?;
    Backbone::load_int8(&out, spec).map_err(err)
}

/// Runs `bench model`.
pub fn model(opts: &ModelOptions) -> Result<Vec<ModelResult>, String> {
    let scratch = tempfile::Builder::new().prefix("carwatch-bench-").tempdir().map_err(err)?;
    let backbone_file = match &opts.backbone {
        Some(f) => f.clone(),
        None => {
            let f = scratch.path().join("vgg19-random.safetensors");
            write_atomic(&f, &VggSpec::VGG19.random_state_dict(7)).map_err(err)?;
            f
        }
    };
    let trained = match &opts.models {
        Some(dir) => Some(Manifest::load(dir).map_err(err)?),
        None => None,
    };
    let photos = if trained.is_some() { Some(generated_photos(64)?) } else { None };
    let largest = opts.batches.iter().copied().max().unwrap_or(1);
    let frames = crate::synthetic::photos(largest, 13, 224, 224);
    let mut results = Vec::new();
    for &precision in &opts.precisions {
        let placement = Placement { device: opts.device, precision };
        let (backbone, manifest, cascade_name) =
            load_models(opts, placement, trained.as_ref(), &backbone_file, scratch.path())?;
        let spec = backbone.spec();
        let cascade = Cascade::load(&manifest, spec.feature_len(), placement).map_err(err)?;
        let flops = spec.flops_per_image();
        let models = Loaded { backbone: &backbone, cascade: &cascade, name: &cascade_name, flops };
        for &batch in &opts.batches {
            let r = measure(opts, placement, &models, photos.as_ref(), &frames, batch)?;
            tracing::info!("{} batch {batch}: {:.1} img/s", placement.describe(), r.img_per_s);
            results.push(r);
        }
    }
    Ok(results)
}

/// The backbone and cascade `bench model` measures at one precision, and their name.
struct Loaded<'a> {
    backbone: &'a Backbone,
    cascade: &'a Cascade,
    name: &'a str,
    flops: f64,
}

/// The backbone (in `placement`) and cascade: the trained ones, or random VGG-19
/// weights with a random cascade.
fn load_models(
    opts: &ModelOptions,
    placement: Placement,
    trained: Option<&Manifest>,
    backbone_file: &Path,
    scratch: &Path,
) -> Result<(Backbone, Manifest, String), String> {
    let precision = placement.precision;
    Ok(match trained {
        Some(m) => {
            let backbone = match precision {
                Precision::Int8 => {
                    let path = m.int8_path().ok_or("these models have no int8 backbone (train with --int8)")?;
                    Backbone::load_int8(&path, m.backbone.spec()).map_err(err)?
                }
                _ => Backbone::load(&m.backbone_path(), Some(m.backbone.spec()), placement).map_err(err)?,
            };
            let name = opts.models.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
            (backbone, m.clone(), name)
        }
        None => {
            let backbone = match precision {
                Precision::Int8 => int8_backbone(backbone_file, scratch)?,
                _ => Backbone::load(backbone_file, None, placement).map_err(err)?,
            };
            let spec = backbone.spec();
            let manifest = random_cascade(&scratch.join("cascade"), backbone_file, spec)?;
            (backbone, manifest, "random".to_string())
        }
    })
}

/// One batch size measured three ways: backbone and heads, the backbone alone, and
/// from frames through the feeder (as the worker runs).
fn measure(
    opts: &ModelOptions,
    placement: Placement,
    models: &Loaded,
    photos: Option<&Tensor>,
    frames: &[image::RgbImage],
    batch: usize,
) -> Result<ModelResult, String> {
    let precision = placement.precision;
    let input = match photos {
        // Photos in turn, as many as the batch holds.
        Some(p) => {
            let index = Tensor::arange(batch as i64, (Kind::Int64, Device::Cpu)).remainder(p.size()[0]);
            p.f_index_select(0, &index).map_err(err)?.to_device(opts.device).to_kind(precision.kind())
        }
        None => Tensor::randn([batch as i64, 3, 224, 224], (Kind::Float, opts.device)).to_kind(precision.kind()),
    };
    let sync = || {
        if let Device::Cuda(n) = opts.device {
            tch::Cuda::synchronize(n as i64);
        }
    };
    let (iterations, secs) = timed(opts, || {
        let f = models.backbone.features(&input).map_err(err)?;
        models.cascade.run(&f).map_err(err)?;
        Ok(())
    })?;
    let img_per_s = (iterations * batch) as f64 / secs;
    let (n, backbone_secs) = timed(opts, || {
        let _features = models.backbone.features(&input).map_err(err)?;
        sync();
        Ok(())
    })?;
    let backbone_img_per_s = (n * batch) as f64 / backbone_secs;
    // Frames as the worker gets them: 224x224 RGB bytes in host memory, staged
    // through the feeder (pinned memory and a side stream on CUDA) while the
    // previous batch is in the backbone, predictions back on the host.
    let views = crate::model::preprocess::whole(&frames[..batch]);
    let mut feeder = Feeder::new(placement).map_err(err)?;
    let mut flight: Option<Tensor> = None;
    let (n, frames_secs) = timed(opts, || {
        let staged = feeder.stage(&views).map_err(err)?;
        if let Some(f) = flight.take() {
            models.cascade.run(&f).map_err(err)?;
        }
        let input = feeder.input(staged).map_err(err)?;
        flight = Some(models.backbone.features(&input).map_err(err)?);
        Ok(())
    })?;
    if let Some(f) = flight.take() {
        models.cascade.run(&f).map_err(err)?;
    }
    let from_frames_img_per_s = (n * batch) as f64 / frames_secs;
    Ok(ModelResult {
        device: placement.describe().split('/').next().unwrap_or("cpu").to_string(),
        precision: precision.name().to_string(),
        batch,
        img_per_s,
        ms_per_batch: 1000.0 * secs / iterations as f64,
        gflops: img_per_s * models.flops / 1e9,
        iterations,
        cascade: models.name.to_string(),
        backbone_img_per_s,
        from_frames_img_per_s,
    })
}

/// One `bench pipeline` measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineResult {
    pub cameras: usize,
    pub fps: f64,
    pub resolution: String,
    /// Frames classified per second, all cameras together, over the measured span.
    pub analysed_fps: f64,
    /// Frames dropped (oldest first) because inference was behind, during the span.
    pub dropped: u64,
    /// Capture of a frame to the broker's PUBACK of the hit it produced.
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    /// CPU time (all threads of decoding, conversion and the cameras) per analysed frame.
    pub cpu_ms_per_frame_decode: f64,
    /// CPU time of the inference thread (and libtorch's pool) per analysed frame.
    pub cpu_ms_per_frame_infer: f64,
    pub peak_rss_mb: f64,
    pub decoder: String,
    pub device: String,
    /// Where and in which precision the model ran (`cpu/int8`).
    pub model: String,
    /// Most frames per batch (measured at start-up: `batch.max_size = "auto"`).
    pub batch_max: usize,
    /// Regions answered from the previous prediction because nothing moved (motion
    /// gating), during the span; included in `analysed_fps`.
    pub motion_skipped: u64,
    /// How the cameras located vehicles (`frame`, `motion`...).
    pub locate: String,
    /// CPU time of the motion locator per located frame, on the camera threads (0 unless
    /// `locate = "motion"`).
    pub cpu_ms_per_frame_locate: f64,
    pub seconds: f64,
    /// The Python peer's analysed frames/s on the same cameras, right after carwatch's
    /// span (`--peer`); `None` when it was not run.
    pub peer_frames_per_s: Option<f64>,
    /// `analysed_fps / peer_frames_per_s`: above 1, carwatch did more with the machine.
    pub ratio_to_peer: Option<f64>,
    /// Everything the peer reported (dropped frames, CPU per frame, its model).
    pub peer: Option<serde_json::Value>,
    /// Hits published per camera during the span.
    pub hits_per_camera: Option<Vec<u64>>,
}

/// What `bench pipeline` measures.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub cameras: usize,
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    /// Frame rate of the synthetic cameras (what is decoded).
    pub source_fps: u32,
    pub duration: Duration,
    /// Measured span starts after this.
    pub warmup: Duration,
    pub models: PathBuf,
    pub device: crate::model::DeviceChoice,
    pub precision: crate::model::PrecisionChoice,
    pub decode: crate::camera::DecodeMode,
    /// `model.threads` for the run (unset: libtorch's default, one per core).
    pub threads: Option<std::num::NonZeroUsize>,
    /// What the cameras show (`synth` scene syntax); default: a vehicle the cascade
    /// knows, for the whole run.
    pub scene: Option<String>,
    /// Turns on motion gating for every camera.
    pub motion: bool,
    /// Every camera's `locate`.
    pub locate: crate::locate::Method,
    /// Runs the Python peer on the same cameras after carwatch.
    pub peer: Option<Peer>,
    /// The alert has expired: every frame is still classified and matched, none is a
    /// hit, so nothing is encoded or published (the peer's terms: it publishes nothing).
    pub no_hits: bool,
    /// `batch.max_size` fixed instead of measured at start-up.
    pub batch: Option<u32>,
}

/// How to run the Python peer (bench/peer.py).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The interpreter with torch, numpy and OpenCV (the project venv's).
    pub python: PathBuf,
    pub script: PathBuf,
}

impl Peer {
    /// Runs the peer against `urls` for the same span as carwatch and returns its JSON.
    /// With `wanted` (`make/model`), it locates moving vehicles and counts its hits on
    /// that vehicle per camera (`--find-max`).
    fn run(&self, opts: &PipelineOptions, urls: &[String], wanted: Option<&str>) -> Result<serde_json::Value, String> {
        for (what, path) in [("--peer-python", &self.python), ("--peer-script", &self.script)] {
            if !path.exists() {
                return Err(format!(
                    "{} does not exist ({what}): run from the carwatch checkout after `make setup`, or pass {what}",
                    path.display()
                ));
            }
        }
        let models = std::path::absolute(&opts.models).map_err(err)?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).arg("--models").arg(&models).args([
            "--fps",
            &opts.fps.to_string(),
            "--duration",
            &opts.duration.as_secs_f64().to_string(),
            "--warmup",
            &opts.warmup.as_secs_f64().to_string(),
        ]);
        for u in urls {
            cmd.args(["--url", u]);
        }
        if let Some(w) = wanted {
            cmd.args(["--wanted", w]);
        }
        if let Some(t) = opts.threads {
            cmd.env("OMP_NUM_THREADS", t.to_string());
        }
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run the peer {}: {e}", self.python.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("the peer {} failed ({}): {}", self.script.display(), out.status, text.trim()));
        }
        let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("the peer printed no JSON object ({e}): {}", text.trim()))
    }
}

/// Per-thread CPU time (seconds) by thread name, from /proc.
fn thread_cpu() -> Vec<(String, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (u, s) = (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok()));
        if let (Some(u), Some(s)) = (u, s) {
            out.push((comm, (u + s) / ticks));
        }
    }
    out
}

/// Inference or decoding? Threads that are neither (publishing, the broker) count for
/// neither.
fn thread_role(name: &str) -> Option<&'static str> {
    const OTHER: [&str; 10] = [
        "publish",
        "mqtt",
        "broker",
        "alerts",
        "alert-errors",
        "notify",
        "metrics",
        "signals",
        "tokio-runtime-w",
        "carwatch",
    ];
    if name == "infer" || name.starts_with("pt_") || name.starts_with("omp") {
        Some("infer")
    } else if OTHER.iter().any(|o| name.starts_with(o)) {
        None
    } else {
        Some("decode")
    }
}

fn cpu_by_role() -> (f64, f64) {
    let (mut decode, mut infer) = (0.0, 0.0);
    for (name, secs) in thread_cpu() {
        match thread_role(&name) {
            Some("infer") => infer += secs,
            Some(_) => decode += secs,
            None => {}
        }
    }
    (decode, infer)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 * 1000.0
}

/// The child process serving the synthetic cameras; killed on drop.
struct Cameras(Child);

impl Drop for Cameras {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(err)
}

/// Runs `bench pipeline`.
pub fn pipeline(opts: &PipelineOptions) -> Result<PipelineResult, String> {
    let manifest = Manifest::load(&opts.models)
        .map_err(|e| format!("{e} (train a cascade, or run `make run` once for the demo model)"))?;
    let (vehicle, shown) = shown_vehicle(&manifest)?;
    let rtsp_port = free_port()?;
    let scene = opts.scene.clone().unwrap_or_else(|| format!("3600:{shown}"));
    let _server = serve_cameras(opts, opts.cameras, &scene, rtsp_port)?;
    // With --no-hits the alert has expired: every frame still goes through the model
    // and the matcher, and nothing is hit (a make the scene does not show would still
    // be hit by a tracked vehicle at `min_confidence = 0`).
    let expired = if opts.no_hits { "expires = 2000-01-01T00:00:00Z\n" } else { "" };
    let alert = format!(
        "[[alert]]\nid = \"bench\"\nmake = \"{}\"\nmin_confidence = 0.0\nconfirm_frames = 1\ncooldown_s = 0\n{expired}",
        vehicle.make
    );
    let mut result = run_carwatch(opts, &alert, rtsp_port)?;
    // The peer takes the machine after carwatch has stopped: the same cameras, served by
    // the same process, for the same span.
    if let Some(p) = &opts.peer {
        let urls: Vec<String> = (0..opts.cameras).map(|i| format!("rtsp://127.0.0.1:{rtsp_port}/cam{i}")).collect();
        let peer = p.run(opts, &urls, None)?;
        result.peer_frames_per_s = peer["frames_per_s"].as_f64();
        result.ratio_to_peer = result.peer_frames_per_s.filter(|p| *p > 0.0).map(|p| result.analysed_fps / p);
        result.peer = Some(peer);
    }
    Ok(result)
}

/// Seconds between two passages of the wanted vehicle in `--find-max` traffic.
pub const TRAFFIC_PERIOD_S: f64 = 12.0;

/// `--find-max` traffic: a still street where `wanted` crosses in 5 s, the road stays
/// empty a second, `other` crosses, and the road is empty a second again; vehicles a
/// quarter of the frame wide in the near lane, as in the wide-view tests.
fn traffic(wanted: &str, other: &str) -> String {
    let lane = "@-0.24,0.5,0.24,0.42>1,0.5";
    format!("street; 5:{wanted}{lane}; 1:; 5:{other}{lane}; 1:")
}

/// One camera count tried by `--find-max`, for carwatch or the peer.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxStep {
    pub cameras: usize,
    /// Frames analysed per second, all cameras together.
    pub analysed_fps: f64,
    pub dropped: u64,
    /// Hits per camera during the span, and the passages every camera had in it.
    pub hits_per_camera: Vec<u64>,
    pub passages: u64,
    /// Every camera hit every passage and no frame was dropped.
    pub kept_up: bool,
}

/// The most cameras one side kept up with, and every step tried.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxSide {
    /// 0 when even one camera was too many.
    pub max_cameras: usize,
    /// Whether `max_cameras` is the `--max-cameras` cap rather than a limit found.
    pub capped: bool,
    pub steps: Vec<FindMaxStep>,
}

/// `bench pipeline --find-max`.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxResult {
    pub resolution: String,
    pub fps: f64,
    /// The scene every camera shows (`synth` syntax) and its period.
    pub scene: String,
    pub period_s: f64,
    pub seconds: f64,
    pub carwatch: FindMaxSide,
    pub peer: Option<FindMaxSide>,
    /// carwatch's cameras over the peer's (`None` without the peer, or when the peer
    /// kept up with none).
    pub ratio_to_peer: Option<f64>,
}

/// Raises the camera count on generated traffic, doubling from 1 then halving the gap,
/// until a passage of the wanted vehicle is missed or a frame is dropped: carwatch with
/// its defaults (`locate = "motion"`, `decode = "auto"`, one alert on the wanted make
/// and model), then the peer (`opts.peer`) locating with OpenCV's background subtractor.
/// `opts.duration` is rounded to whole periods of the traffic; `opts.cameras` is ignored.
pub fn find_max(opts: &PipelineOptions, wanted: &str, max_cameras: usize) -> Result<FindMaxResult, String> {
    let manifest = Manifest::load(&opts.models)
        .map_err(|e| format!("{e} (train a cascade, or run `make run` once for the demo model)"))?;
    let catalogue = crate::synthetic::catalogue();
    let vehicle = catalogue
        .iter()
        .find(|c| format!("{}/{}/{}", c.view, c.make, c.model) == wanted)
        .ok_or_else(|| format!("--wanted {wanted}: not a VIEW/MAKE/MODEL of the synthetic catalogue"))?;
    if !manifest.leaves().iter().any(|l| l.make == vehicle.make && l.model == vehicle.model) {
        return Err(format!("the cascade in {} does not know {wanted}: pass another --wanted", opts.models.display()));
    }
    let shown = wanted.to_string();
    // Another make, seen from the same side where the catalogue has one.
    let other = catalogue
        .iter()
        .filter(|c| c.make != vehicle.make)
        .min_by_key(|c| c.view != vehicle.view)
        .map(|c| format!("{}/{}/{}", c.view, c.make, c.model))
        .ok_or("the synthetic catalogue has a single make")?;
    let scene = traffic(&shown, &other);
    let periods = (opts.duration.as_secs_f64() / TRAFFIC_PERIOD_S).round().max(1.0);
    let span = Duration::from_secs_f64(periods * TRAFFIC_PERIOD_S);
    let passages = periods as u64;
    let max_cameras = max_cameras.max(1);
    let rtsp_port = free_port()?;
    let _server = serve_cameras(opts, max_cameras, &scene, rtsp_port)?;
    let alert = format!(
        "[[alert]]\nid = \"bench\"\nmake = \"{}\"\nmodel = \"{}\"\ncooldown_s = 1\n",
        vehicle.make, vehicle.model
    );
    // Every camera's stream starts with the wanted vehicle coming in when it connects:
    // the span starts half a period before a passage, so that each of its passages,
    // and only those, is hit inside it (a hit lags its passage's start by a few seconds).
    let period = TRAFFIC_PERIOD_S;
    let warmup = ((opts.warmup.as_secs_f64() + period / 2.0) / period).ceil() * period - period / 2.0;
    let base = PipelineOptions {
        duration: span,
        warmup: Duration::from_secs_f64(warmup),
        locate: crate::locate::Method::Motion,
        scene: Some(scene.clone()),
        peer: None,
        ..opts.clone()
    };
    let judge = |cameras: usize, analysed_fps: f64, dropped: u64, hits: Vec<u64>| FindMaxStep {
        cameras,
        analysed_fps,
        dropped,
        kept_up: dropped == 0 && hits.len() == cameras && hits.iter().all(|&h| h >= passages),
        hits_per_camera: hits,
        passages,
    };
    let carwatch = search(max_cameras, |n| {
        let r = run_carwatch(&PipelineOptions { cameras: n, ..base.clone() }, &alert, rtsp_port)?;
        let step = judge(n, r.analysed_fps, r.dropped, r.hits_per_camera.unwrap_or_default());
        tracing::info!("find-max: carwatch, {n} camera(s): {step:?}");
        Ok(step)
    })?;
    let peer = match &opts.peer {
        Some(p) => Some(search(max_cameras, |n| {
            let urls: Vec<String> = (0..n).map(|i| format!("rtsp://127.0.0.1:{rtsp_port}/cam{i}")).collect();
            let wanted = format!("{}/{}", vehicle.make, vehicle.model);
            let r = p.run(&PipelineOptions { cameras: n, ..base.clone() }, &urls, Some(&wanted))?;
            let hits = r["hits"].as_array().map(|h| h.iter().filter_map(|v| v.as_u64()).collect()).unwrap_or_default();
            let step =
                judge(n, r["frames_per_s"].as_f64().unwrap_or(0.0), r["dropped"].as_u64().unwrap_or(u64::MAX), hits);
            tracing::info!("find-max: peer, {n} camera(s): {step:?}");
            Ok(step)
        })?),
        None => None,
    };
    let ratio_to_peer =
        peer.as_ref().filter(|p| p.max_cameras > 0).map(|p| carwatch.max_cameras as f64 / p.max_cameras as f64);
    Ok(FindMaxResult {
        resolution: format!("{}x{}", opts.width, opts.height),
        fps: opts.fps,
        scene,
        period_s: TRAFFIC_PERIOD_S,
        seconds: span.as_secs_f64(),
        carwatch,
        peer,
        ratio_to_peer,
    })
}

/// The largest camera count up to `max` for which `step` keeps up: 1, 2, 4... until it
/// does not, then halving the gap down to a quarter of the count kept up with.
fn search(max: usize, mut step: impl FnMut(usize) -> Result<FindMaxStep, String>) -> Result<FindMaxSide, String> {
    let mut steps = Vec::new();
    let (mut good, mut bad) = (0usize, None::<usize>);
    let mut n = 1;
    loop {
        let s = step(n)?;
        let kept_up = s.kept_up;
        steps.push(s);
        if !kept_up {
            bad = Some(n);
            break;
        }
        good = n;
        if n >= max {
            break;
        }
        n = (n * 2).min(max);
    }
    if let Some(mut hi) = bad {
        while hi - good > (good / 4).max(1) {
            let mid = (good + hi) / 2;
            let s = step(mid)?;
            if s.kept_up {
                good = mid;
            } else {
                hi = mid;
            }
            steps.push(s);
        }
    }
    Ok(FindMaxSide { max_cameras: good, capped: bad.is_none(), steps })
}

/// Runs the daemon in process on the first `opts.cameras` cameras served at
/// `rtsp_port`, with `alert` as its alert file, and measures it.
fn run_carwatch(opts: &PipelineOptions, alert: &str, rtsp_port: u16) -> Result<PipelineResult, String> {
    let scratch = tempfile::Builder::new().prefix("carwatch-bench-").tempdir().map_err(err)?;
    let config = daemon_config(opts, scratch.path(), alert, rtsp_port)?;
    let (stop_tx, shutdown) = crate::watch::Shutdown::channel();
    let (seen_tx, seen_rx) = crossbeam_channel::bounded(1);
    // When each hit was published, by camera name.
    let published: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let on_hit: crate::publish::HitCallback = {
        let published = Arc::clone(&published);
        Box::new(move |hit| {
            if let (Some(camera), Ok(mut p)) = (hit["camera"].as_str(), published.lock()) {
                p.push((camera.to_string(), Instant::now()));
            }
        })
    };
    let watcher = std::thread::Builder::new()
        .name("carwatch".into())
        .spawn(move || {
            let seam = crate::watch::Seam { running: Some(seen_tx), ..Default::default() };
            let options = crate::watch::WatchOptions { seam, on_hit: Some(on_hit), ..Default::default() };
            crate::watch::run(&config, options, shutdown).map_err(|e| e.to_string())
        })
        .map_err(err)?;
    let running = match seen_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(r) => r,
        Err(_) => {
            let _ = stop_tx.send(0);
            return Err(match watcher.join() {
                Ok(Err(e)) => e,
                _ => "the watcher did not start".into(),
            });
        }
    };
    std::thread::sleep(opts.warmup);
    let count = |f: &dyn Fn(&crate::camera::CameraShared) -> u64| running.cameras.iter().map(|c| f(c)).sum::<u64>();
    let analysed0 = count(&|c| c.analysed.load(Ordering::Relaxed));
    let dropped0 = count(&|c| c.dropped.load(Ordering::Relaxed));
    let skipped0 = count(&|c| c.motion_skipped.load(Ordering::Relaxed));
    let (locate_ns0, located0) =
        (count(&|c| c.locate_ns.load(Ordering::Relaxed)), count(&|c| c.located.load(Ordering::Relaxed)));
    let (decode0, infer0) = cpu_by_role();
    if let Ok(mut l) = running.metrics.latencies.lock() {
        l.clear();
    }
    let start = Instant::now();
    std::thread::sleep(opts.duration);
    let secs = start.elapsed().as_secs_f64();
    let analysed = count(&|c| c.analysed.load(Ordering::Relaxed)) - analysed0;
    let dropped = count(&|c| c.dropped.load(Ordering::Relaxed)) - dropped0;
    let motion_skipped = count(&|c| c.motion_skipped.load(Ordering::Relaxed)) - skipped0;
    let locate_ns = count(&|c| c.locate_ns.load(Ordering::Relaxed)) - locate_ns0;
    let located = count(&|c| c.located.load(Ordering::Relaxed)) - located0;
    let model = running.metrics.model.lock().ok().and_then(|m| m.clone()).unwrap_or_default();
    let (decode1, infer1) = cpu_by_role();
    let mut latencies = running.metrics.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let decoder = running.cameras.first().and_then(|c| c.decoder()).unwrap_or_else(|| "unknown".into());
    let _ = stop_tx.send(0);
    let result = watcher.join().map_err(|_| "the watcher panicked".to_string())?;
    result?;
    let analysed_fps = analysed as f64 / secs;
    let hits_per_camera = published.lock().ok().map(|p| {
        (0..opts.cameras)
            .map(|i| {
                let name = format!("cam{i}");
                p.iter()
                    .filter(|(c, at)| *c == name && *at >= start && at.duration_since(start) <= opts.duration)
                    .count() as u64
            })
            .collect()
    });
    let per_frame = |cpu: f64| if analysed > 0 { 1000.0 * cpu / analysed as f64 } else { 0.0 };
    Ok(PipelineResult {
        cameras: opts.cameras,
        fps: opts.fps,
        resolution: format!("{}x{}", opts.width, opts.height),
        analysed_fps,
        dropped,
        latency_ms_p50: percentile(&latencies, 0.50),
        latency_ms_p95: percentile(&latencies, 0.95),
        latency_ms_p99: percentile(&latencies, 0.99),
        cpu_ms_per_frame_decode: per_frame(decode1 - decode0),
        cpu_ms_per_frame_infer: per_frame(infer1 - infer0),
        peak_rss_mb: peak_rss_mb(),
        decoder,
        device: opts.device.to_string(),
        model,
        batch_max: running.metrics.batch_max.get().max(0) as usize,
        motion_skipped,
        locate: opts.locate.name().to_string(),
        cpu_ms_per_frame_locate: if located > 0 { locate_ns as f64 / 1e6 / located as f64 } else { 0.0 },
        seconds: secs,
        peer_frames_per_s: None,
        ratio_to_peer: None,
        peer: None,
        hits_per_camera,
    })
}

/// A vehicle the cascade knows, and the synthetic class the cameras show: the same one
/// where the catalogue has it, so that analysed frames become hits and are published.
fn shown_vehicle(manifest: &Manifest) -> Result<(crate::model::Leaf, String), String> {
    let leaves = manifest.leaves();
    let known = crate::synthetic::catalogue();
    let vehicle = leaves
        .iter()
        .find(|l| known.iter().any(|c| c.view == l.view && c.make == l.make && c.model == l.model))
        .or(leaves.first())
        .cloned()
        .ok_or("the cascade has no leaves")?;
    let shown = if known.iter().any(|c| c.view == vehicle.view && c.make == vehicle.make && c.model == vehicle.model) {
        format!("{}/{}/{}", vehicle.view, vehicle.make, vehicle.model)
    } else {
        "front/bmw/3-series".to_string()
    };
    Ok((vehicle, shown))
}

/// Starts `synth rtsp` (this executable) serving `scene` on `cameras` mounts (`/cam0`...;
/// every client of a mount sees the scene from its start), and waits until it listens.
fn serve_cameras(opts: &PipelineOptions, cameras: usize, scene: &str, rtsp_port: u16) -> Result<Cameras, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let mounts: Vec<String> = (0..cameras).map(|i| format!("/cam{i}={scene}")).collect();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "synth",
        "rtsp",
        "--port",
        &rtsp_port.to_string(),
        "--width",
        &opts.width.to_string(),
        "--height",
        &opts.height.to_string(),
        "--fps",
        &opts.source_fps.to_string(),
    ]);
    for m in &mounts {
        cmd.args(["--mount", m]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let server = Cameras(cmd.spawn().map_err(|e| format!("cannot start the synthetic cameras: {e}"))?);
    // Scenes where vehicles move are encoded frame by frame before the server listens.
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::net::TcpStream::connect(("127.0.0.1", rtsp_port)).is_err() {
        if Instant::now() > deadline {
            return Err("the synthetic RTSP cameras did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// The daemon's own configuration, in memory, with `alert` as its alert file. For
/// `bench pipeline` every analysed frame matches the alert (no confirmation, no
/// cooldown), so every frame is published and acknowledged.
fn daemon_config(
    opts: &PipelineOptions,
    scratch: &Path,
    alert: &str,
    rtsp_port: u16,
) -> Result<crate::config::Config, String> {
    let alerts = scratch.join("alerts.toml");
    std::fs::write(&alerts, alert).map_err(err)?;
    // Relative paths in a config resolve against its directory, which is `scratch`.
    let models = std::path::absolute(&opts.models).map_err(err)?;
    let mut text = format!(
        "state_dir = \"{}\"\nalerts = \"{}\"\n[model]\ndir = \"{}\"\ndevice = \"{}\"\n[broker]\nlisten = \"127.0.0.1:{}\"\n[snapshots]\nquality = 70\n",
        scratch.display(),
        alerts.display(),
        models.display(),
        opts.device,
        free_port()?,
    );
    for i in 0..opts.cameras {
        text.push_str(&format!(
            "[[camera]]\nname = \"cam{i}\"\nurl = \"rtsp://127.0.0.1:{rtsp_port}/cam{i}\"\nfps = {}\ndecode = \"{}\"\nmotion = {{ enabled = {} }}\nlocate = \"{}\"\n",
            opts.fps,
            opts.decode.name(),
            opts.motion,
            opts.locate.name()
        ));
    }
    let mut config = crate::config::Config::parse(&scratch.join("bench.toml"), &text).map_err(|p| p.to_string())?;
    config.model.precision = opts.precision;
    config.model.threads = opts.threads;
    if let Some(n) = opts.batch {
        config.batch.max_size = crate::batcher::BatchSize::Fixed(n);
    }
    Ok(config)
}

/// One `bench locate` measurement: the motion locator alone on generated frames.
#[derive(Debug, Clone, Serialize)]
pub struct LocateResult {
    pub resolution: String,
    pub frames: usize,
    /// Wall time per frame on one thread (the locator runs on the camera's thread).
    pub ms_per_frame: f64,
    /// Frames in which the moving vehicle was boxed (IoU >= 0.5).
    pub boxed: usize,
}

/// Runs `bench locate`: a vehicle crossing a still, textured street, `frames` frames of
/// `width` x `height`, through [`crate::locate::motion::MotionLocator`].
pub fn locate(frames: usize, width: u32, height: u32) -> LocateResult {
    use crate::locate::Bounds;
    use crate::locate::motion::{Motion, MotionConfig, MotionLocator};
    let street = crate::synthetic::street(width, height);
    let (vw, vh) = (width / 5, height / 6);
    let frame = |i: usize| {
        let x0 = (i as u32 * (width - vw) / frames.max(1) as u32).min(width - vw);
        let b = Bounds { x: x0, y: height / 2, width: vw, height: vh };
        let mut px = street.clone();
        for y in b.y..b.y + b.height {
            let row = ((y * width + b.x) * 3) as usize;
            for p in px[row..row + (b.width * 3) as usize].chunks_exact_mut(3) {
                p.copy_from_slice(&[200, 40, 40]);
            }
        }
        (px, b)
    };
    let mut locator = MotionLocator::new(MotionConfig::default());
    locator.observe(&street, width, height);
    let inputs: Vec<(Vec<u8>, Bounds)> = (0..frames).map(frame).collect();
    let start = Instant::now();
    let mut boxed = 0;
    for (px, truth) in &inputs {
        if let Motion::Boxes(b) = locator.observe(px, width, height)
            && b.first().is_some_and(|b| b.iou(truth) >= 0.5)
        {
            boxed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    LocateResult {
        resolution: format!("{width}x{height}"),
        frames,
        ms_per_frame: 1000.0 * secs / frames.max(1) as f64,
        boxed,
    }
}

/// One `bench frame` measurement: the work done per analysed frame outside the model,
/// the old way (whole frame to RGB) and the current way (I420 kept), on one thread.
#[derive(Debug, Clone, Serialize)]
pub struct FrameResult {
    pub resolution: String,
    pub frames: usize,
    /// GStreamer's I420 to RGB conversion of the whole frame and the copy out of the
    /// buffer (what `videoconvert ! RGB ! appsink` and `pull` did), milliseconds.
    pub rgb_convert_ms: f64,
    /// The whole RGB frame resized and normalised to the model's input.
    pub rgb_preprocess_ms: f64,
    /// The motion locator on the RGB frame.
    pub rgb_motion_ms: f64,
    /// Copying the I420 planes out of the buffer into freshly allocated memory (what
    /// `pull` did until the frame pools).
    pub i420_copy_ms: f64,
    /// The same copy into a buffer reused from the camera's pool (what `pull` does).
    pub i420_copy_pooled_ms: f64,
    /// The whole I420 frame resized in YUV and converted at 224x224.
    pub i420_preprocess_ms: f64,
    /// The motion locator on the I420 planes.
    pub i420_motion_ms: f64,
    /// carwatch's own whole-frame conversion to RGB (a snapshot, per hit).
    pub snapshot_rgb_ms: f64,
}

/// Runs `bench frame` on `frames` generated frames (a vehicle crossing a street).
pub fn frame_work(frames: usize, width: u32, height: u32) -> Result<FrameResult, String> {
    use crate::locate::motion::{MotionConfig, MotionLocator};
    use crate::model::preprocess::{self, Crop, Picture, RgbImage};
    use crate::pixels::{I420, Pixels, YuvMatrix};
    use gstreamer_video::prelude::*;
    use gstreamer_video::{VideoFormat, VideoFrameRef, VideoInfo};
    let scene = crate::synthetic::video::Scene::parse(
        &format!("street; {}:front/audi/a4@0.1,0.3,0.3,0.4>0.6,0.3", frames.max(1)),
        width,
        height,
        1,
    )?;
    let painter = crate::synthetic::video::Painter::new(&scene);
    let mut yuv = Vec::new();
    for n in 0..frames.min(8) as u64 {
        let (img, _) = painter.frame(n * (frames as u64 / 8).max(1));
        yuv.push(crate::pixels::gstreamer_convert(img.as_raw(), VideoFormat::Rgb, VideoFormat::I420, width, height)?);
    }
    let gerr = |e: gstreamer::glib::BoolError| e.to_string();
    let colorimetry: gstreamer_video::VideoColorimetry = "bt709".parse().map_err(gerr)?;
    let in_info =
        VideoInfo::builder(VideoFormat::I420, width, height).colorimetry(&colorimetry).build().map_err(gerr)?;
    let out_info = VideoInfo::builder(VideoFormat::Rgb, width, height).build().map_err(gerr)?;
    let converter = gstreamer_video::VideoConverter::new(&in_info, &out_info, None).map_err(gerr)?;
    let buffers: Vec<gstreamer::Buffer> = yuv.iter().map(|y| gstreamer::Buffer::from_slice(y.clone())).collect();
    let mut out = gstreamer::Buffer::with_size(out_info.size()).map_err(gerr)?;
    let place = Placement { device: Device::Cpu, precision: Precision::Fp32 };
    let full = Crop { x: 0, y: 0, width, height };
    let per_frame = |t: Duration| 1000.0 * t.as_secs_f64() / frames.max(1) as f64;
    let (mut convert, mut pre, mut motion) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut locator = MotionLocator::new(MotionConfig::default());
    for i in 0..frames {
        let t = Instant::now();
        let rgb = {
            let src =
                VideoFrameRef::from_buffer_ref_readable(buffers[i % buffers.len()].as_ref(), &in_info).map_err(gerr)?;
            let buffer = out.get_mut().ok_or("the output buffer is shared")?;
            let mut dst = VideoFrameRef::from_buffer_ref_writable(buffer, &out_info).map_err(gerr)?;
            converter.frame_ref(&src, &mut dst);
            let (stride, row) = (dst.plane_stride()[0] as usize, width as usize * 3);
            let data = dst.plane_data(0).map_err(gerr)?;
            let mut rgb = Vec::with_capacity(row * height as usize);
            for y in 0..height as usize {
                rgb.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            rgb
        };
        convert += t.elapsed();
        let t = Instant::now();
        let view = Picture::Rgb(RgbImage::new(&rgb, width, height, width as usize * 3)?);
        let _ = preprocess::batch(&[(view, full)], place).map_err(err)?;
        pre += t.elapsed();
        let t = Instant::now();
        locator.observe(&rgb, width, height);
        motion += t.elapsed();
    }
    let (rgb_convert_ms, rgb_preprocess_ms, rgb_motion_ms) = (per_frame(convert), per_frame(pre), per_frame(motion));
    let (mut copy, mut pre, mut motion, mut snapshot) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut locator = MotionLocator::new(MotionConfig::default());
    let mut rgb = Vec::new();
    let (pool, mut pooled) = (crate::pixels::BytePool::new(), Duration::ZERO);
    for i in 0..frames {
        let bytes = buffers[i % buffers.len()].map_readable().map_err(gerr)?;
        // Into fresh memory (as `pull` did), and into a pooled buffer (as it does).
        let t = Instant::now();
        drop(std::hint::black_box(bytes.as_slice().to_vec()));
        copy += t.elapsed();
        let t = Instant::now();
        let mut data = pool.take(bytes.len());
        data.extend_from_slice(bytes.as_slice());
        pooled += t.elapsed();
        let t = Instant::now();
        let image = I420::new(&data, width, height, YuvMatrix::BT709)?;
        let _ = preprocess::batch(&[(Picture::I420(image), full)], place).map_err(err)?;
        pre += t.elapsed();
        let t = Instant::now();
        image.to_rgb((0, 0, width, height), &mut rgb);
        snapshot += t.elapsed();
        let pixels = Pixels::I420 { data, matrix: YuvMatrix::BT709 };
        let t = Instant::now();
        locator.observe_pixels(&pixels, width, height);
        motion += t.elapsed();
    }
    Ok(FrameResult {
        resolution: format!("{width}x{height}"),
        frames,
        rgb_convert_ms,
        rgb_preprocess_ms,
        rgb_motion_ms,
        i420_copy_ms: per_frame(copy),
        i420_copy_pooled_ms: per_frame(pooled),
        i420_preprocess_ms: per_frame(pre),
        i420_motion_ms: per_frame(motion),
        snapshot_rgb_ms: per_frame(snapshot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_locate_times_the_locator_on_a_crossing_vehicle() {
        let r = locate(30, 640, 360);
        assert_eq!((r.frames, r.resolution.as_str()), (30, "640x360"));
        assert!(r.ms_per_frame > 0.0);
        assert!(r.boxed >= 27, "boxed in {} of 30 frames", r.boxed);
    }

    #[test]
    fn bench_frame_times_both_paths() {
        let r = frame_work(4, 320, 180).unwrap();
        assert_eq!(r.frames, 4);
        for v in [
            r.rgb_convert_ms,
            r.i420_copy_ms,
            r.i420_copy_pooled_ms,
            r.rgb_preprocess_ms,
            r.i420_preprocess_ms,
            r.i420_motion_ms,
            r.snapshot_rgb_ms,
        ] {
            assert!(v > 0.0, "{r:?}");
        }
    }

    #[test]
    fn bench_sightings_inserts_and_finds() {
        let r = sightings(3000).unwrap();
        assert_eq!(r.rows, 3000);
        assert!(r.inserts_per_s > 0.0 && r.search_ms >= 0.0 && r.file_mb > 0.0);
        // 1 in 27 rows is a bmw 3-series, 1 in 168 within the last hour, 4 in 7 above 0.6.
        assert!(r.found <= 3000 / 27, "{}", r.found);
        assert!(r.like_ms > 0.0 && r.rss_mb_after_like > 0.0);
    }

    #[test]
    fn find_max_doubles_then_halves_the_gap() {
        let step = |limit: usize| {
            move |n: usize| {
                Ok(FindMaxStep {
                    cameras: n,
                    analysed_fps: 0.0,
                    dropped: 0,
                    hits_per_camera: vec![1; n],
                    passages: 1,
                    kept_up: n <= limit,
                })
            }
        };
        let tried = |s: &FindMaxSide| s.steps.iter().map(|t| t.cameras).collect::<Vec<_>>();
        let s = search(64, step(11)).unwrap();
        assert_eq!((s.max_cameras, s.capped), (10, false));
        assert_eq!(tried(&s), vec![1, 2, 4, 8, 16, 12, 10]);
        let s = search(6, step(100)).unwrap();
        assert_eq!((s.max_cameras, s.capped), (6, true));
        assert_eq!(tried(&s), vec![1, 2, 4, 6]);
        let s = search(6, step(0)).unwrap();
        assert_eq!((s.max_cameras, s.capped, tried(&s)), (0, false, vec![1]));
    }

    #[test]
    fn percentiles_and_roles() {
        let v = [0.001f32, 0.002, 0.003, 0.004, 0.100];
        assert!((percentile(&v, 0.5) - 3.0).abs() < 1e-3);
        assert!((percentile(&v, 0.99) - 100.0).abs() < 1e-3);
        assert_eq!(thread_role("infer"), Some("infer"));
        assert_eq!(thread_role("publish"), None);
        assert_eq!(thread_role("avdec_h264-0"), Some("decode"));
        assert!(thread_cpu().iter().any(|(_, s)| *s >= 0.0));
    }
}

/// What `bench sightings` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SightingsResult {
    pub rows: usize,
    /// Rows inserted per second, in transactions of 1,000.
    pub inserts_per_s: f64,
    /// A search by make, model and the last hour, over rows spread across a week.
    pub search_ms: f64,
    /// Rows that search returned.
    pub found: usize,
    /// The same search without a make: a camera's last hour.
    pub search_recent_ms: f64,
    /// `search --like` over every row's embedding (the 50 most alike).
    pub like_ms: f64,
    pub file_mb: f64,
    /// This process's resident size before the rows were written, after, and after the
    /// `--like` searches (the daemon's writer holds the same connection).
    pub rss_mb_before: f64,
    pub rss_mb_after_inserts: f64,
    pub rss_mb_after_like: f64,
}

/// This process's resident set size in MB (0 where /proc is not there).
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

/// Runs `bench sightings`: `rows` generated sightings over the last week, in the order
/// vehicles leave (as the daemon writes them), into a fresh database, then searches.
pub fn sightings(rows: usize) -> Result<SightingsResult, String> {
    use crate::model::embedding::Embedding;
    use crate::sightings::{Query, Scored, Sighting, Store};
    let dir = tempfile::Builder::new().prefix("carwatch-bench-sightings-").tempdir().map_err(err)?;
    let path = dir.path().join("sightings.db");
    let mut store = Store::open(&path).map_err(err)?;
    let classes = crate::synthetic::catalogue();
    let now = jiff::Timestamp::now().as_millisecond();
    let week = 7 * 86_400_000i64;
    let mut rng = crate::synthetic::rng(9);
    use rand::RngExt;
    // A pool of distinct embeddings (made before the clock starts), used in turn.
    let pool: Vec<Embedding> = (0..1024)
        .map(|_| Embedding::normalised(&(0..512).map(|_| rng.random_range(0.0f32..1.0)).collect::<Vec<_>>()))
        .collect();
    let rss_mb_before = rss_mb();
    let start = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..rows {
        let c = &classes[i % classes.len()];
        // In the order the daemon writes them: as vehicles leave, over the week, a
        // minute of jitter (tracks end out of order across cameras).
        let at = now - week + (i as i64 * week) / rows as i64 - rng.random_range(0..60_000);
        let p: f32 = rng.random_range(0.3..1.0);
        batch.push(Sighting {
            camera: format!("cam{}", i % 16),
            track_id: i as u64,
            first_seen: jiff::Timestamp::from_millisecond(at - 4000).map_err(err)?,
            last_seen: jiff::Timestamp::from_millisecond(at).map_err(err)?,
            x: 100,
            y: 200,
            width: 300,
            height: 200,
            view: c.view.into(),
            view_p: 0.9,
            make: c.make.into(),
            model: c.model.into(),
            confidence: p,
            looks: 8,
            colour: crate::colour::Colour::NAMED[i % 10],
            colour_p: 0.8,
            makes: vec![Scored { label: c.make.into(), p }],
            make_models: vec![Scored { label: format!("{}/{}", c.make, c.model), p }],
            thumbnail: Some(PathBuf::from(format!("/var/lib/carwatch/thumbnails/cam0/2026-11-30/{i}.jpg"))),
            embedding: Some(pool[i % pool.len()].clone()),
            live: false,
            similarity: None,
        });
        if batch.len() == 1000 || i + 1 == rows {
            store.insert(&batch).map_err(err)?;
            batch.clear();
        }
    }
    let inserts_per_s = rows as f64 / start.elapsed().as_secs_f64();
    let rss_mb_after_inserts = rss_mb();
    let reader = Store::open_read_only(&path).map_err(err)?;
    let hour_ago = jiff::Timestamp::from_millisecond(now - 3_600_000).map_err(err)?;
    let timed = |q: &Query| -> Result<(f64, usize), String> {
        reader.search(q).map_err(err)?; // warm the page cache
        let t = Instant::now();
        let mut found = 0;
        for _ in 0..5 {
            found = reader.search(q).map_err(err)?.len();
        }
        Ok((t.elapsed().as_secs_f64() * 1000.0 / 5.0, found))
    };
    let (search_ms, found) = timed(&Query {
        make: Some("bmw".into()),
        model: Some("3-series".into()),
        since: Some(hour_ago),
        min_confidence: Some(0.6),
        ..Query::default()
    })?;
    let (search_recent_ms, _) =
        timed(&Query { camera: Some("cam3".into()), since: Some(hour_ago), ..Query::default() })?;
    let (like_ms, _) = timed(&Query { like: Some(pool[7].clone()), limit: 50, ..Query::default() })?;
    let rss_mb_after_like = rss_mb();
    let file_mb = std::fs::metadata(&path).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    Ok(SightingsResult {
        rows,
        inserts_per_s,
        search_ms,
        found,
        search_recent_ms,
        like_ms,
        file_mb,
        rss_mb_before,
        rss_mb_after_inserts,
        rss_mb_after_like,
    })
}
