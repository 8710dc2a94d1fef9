//! Subcommands and their output. This is the only code that prints to stdout: the
//! library reports through return values and `tracing`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use carwatch::alerts::{AlertSet, AlertsError, Vocabulary};
use carwatch::config::{self, Config, ConfigError};
use carwatch::infer::WorkerError;
use carwatch::model::{self, DeviceChoice, Level, Placement, PrecisionChoice, Prediction, Recognizer, VggSpec};
use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;
use carwatch::train::{self, TrainOptions, fit::FitOptions};
use carwatch::watch::WatchError;

/// Log filter without RUST_LOG. The embedded broker (rumqttd) logs every connection at
/// info and every clean disconnect as an error in its router; neither helps an operator.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::router::routing=off";

/// Exit status for a configuration the operator must fix (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "carwatch", version, about = "Watches camera feeds for wanted vehicles")]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. RUST_LOG=carwatch=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the configured cameras and publish hits over MQTT (the daemon).
    Watch(WatchArgs),
    /// Train the head cascade from a folder of labelled photos.
    Train(TrainArgs),
    /// Classify images (files or http(s) URLs) through backbone and cascade.
    Classify(ClassifyArgs),
    /// Validate the config, the alert file and the models; list every problem.
    Check(CheckArgs),
    /// Generate synthetic data: labelled vehicle images or random backbone weights.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Measure model and pipeline throughput (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Backbone + cascade throughput per precision and batch size (VGG-19 shape).
    Model {
        /// VGG weights (safetensors); random VGG-19 weights when absent.
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// A trained models directory, measured on generated vehicle photos (heads the
        /// photos cannot reach are skipped, as in `watch`) instead of a random cascade.
        #[arg(long, conflicts_with = "backbone")]
        models: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// Precisions to measure [default: every one the device supports].
        #[arg(long, value_delimiter = ',')]
        precision: Vec<String>,
        /// Batch sizes [default: 1,4,8,16,32 on CPU; 1,8,32,64,128,256 on CUDA].
        #[arg(long, value_delimiter = ',')]
        batches: Vec<usize>,
        /// Seconds per measurement (at least 3 batches are timed).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// A short run (batches 1 and 2, a fraction of a second each): for tests.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// The whole watch path with N synthetic RTSP cameras.
    Pipeline {
        #[arg(long, default_value_t = 4)]
        cameras: usize,
        /// Frames analysed per second per camera.
        #[arg(long, default_value_t = 2.0)]
        fps: f64,
        /// Seconds measured (after a warm-up).
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[arg(long, default_value_t = 5.0)]
        warmup: f64,
        #[arg(long, value_enum, default_value_t = Resolution::R720p)]
        resolution: Resolution,
        /// Frame rate of the synthetic cameras (what is decoded).
        #[arg(long, default_value_t = 25)]
        source_fps: u32,
        /// Models directory [default: models, else models/demo].
        #[arg(long)]
        models: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value = "auto")]
        precision: PrecisionChoice,
        /// auto | cpu | nvdec | keyframes
        #[arg(long, default_value = "auto")]
        decode: String,
        /// Intra-op threads for the model (`model.threads`) [default: one per core].
        #[arg(long)]
        threads: Option<std::num::NonZeroUsize>,
        /// What every camera shows, in `synth clip` scene syntax, e.g.
        /// "8:; 4:front/audi/a4@0.3,0.3,0.4,0.5" [default: one vehicle throughout].
        #[arg(long)]
        scene: Option<String>,
        /// Turn on motion gating on every camera.
        #[arg(long)]
        motion: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Resolution {
    #[value(name = "720p")]
    R720p,
    #[value(name = "1080p")]
    R1080p,
}

#[derive(Args)]
struct PlacementArgs {
    /// Where to run the backbone: auto, cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Backbone precision: auto, fp32, bf16, fp16 (CUDA only).
    #[arg(long)]
    precision: Option<PrecisionChoice>,
}

#[derive(Args)]
struct TrainArgs {
    /// Photos in DIR/<view>/<make>/<model>/*.{jpg,jpeg,png}.
    #[arg(long)]
    data: PathBuf,
    /// VGG-19 weights (safetensors, torchvision names); see docs/models.md.
    #[arg(long)]
    backbone: PathBuf,
    /// Output models directory: cascade.toml and heads/.
    #[arg(long)]
    out: PathBuf,
    /// Feature cache [default: $XDG_CACHE_HOME/carwatch/features or ~/.cache/carwatch/features].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    placement: PlacementArgs,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation: f64,
    /// Also train on mirror images of the training photos.
    #[arg(long)]
    flip: bool,
    /// Most epochs per head (early stopping usually ends sooner).
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Hidden units per head.
    #[arg(long, default_value_t = 256)]
    hidden: i64,
    /// Images per backbone batch while extracting features.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Text stored in cascade.toml and shown whenever the model is loaded.
    #[arg(long)]
    notice: Option<String>,
    /// Also quantize the backbone to int8 for the CPU (needs the project venv's torch),
    /// and record how often it agrees with fp32 on the validation photos.
    #[arg(long)]
    int8: bool,
}

#[derive(Args)]
struct ClassifyArgs {
    /// Models directory (holding cascade.toml) [default: model.dir of the config].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Config file, read for model.dir/device/precision when present.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(flatten)]
    placement: PlacementArgs,
    /// One JSON object per input on stdout.
    #[arg(long)]
    json: bool,
    /// Image files or http(s) URLs.
    #[arg(required = true)]
    inputs: Vec<String>,
}

#[derive(Args)]
struct WatchArgs {
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Models directory, instead of the config's model.dir.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Also print each hit as a JSON line on stdout.
    #[arg(long)]
    print_hits: bool,
    /// Test-only fault injection (`hang-inference`: the inference loop stops after
    /// start-up, so the systemd watchdog test can see pings stop).
    #[arg(long, hide = true)]
    test_fault: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum SynthCommand {
    /// Write generated vehicle photos in the layout `train` reads.
    Dataset {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 24)]
        per_class: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Image height in pixels (width varies a little above it).
        #[arg(long, default_value_t = 128)]
        size: u32,
    },
    /// Write an H.264 clip (Matroska) of a synthetic scene.
    Clip {
        #[arg(long)]
        out: PathBuf,
        /// Segments `SECONDS:view/make/model[@x,y,w,h]+...;...` (see synthetic::video).
        #[arg(long)]
        scene: String,
        #[arg(long, default_value_t = 480)]
        width: u32,
        #[arg(long, default_value_t = 384)]
        height: u32,
        #[arg(long, default_value_t = 10)]
        fps: u32,
    },
    /// Serve synthetic scenes as RTSP cameras on 127.0.0.1 until interrupted.
    Rtsp {
        /// `PATH=SCENE`, e.g. `/gate=60:front/bmw/3-series` (repeatable).
        #[arg(long = "mount", required = true)]
        mounts: Vec<String>,
        #[arg(long, default_value_t = 8554)]
        port: u16,
        #[arg(long, default_value_t = 480)]
        width: u32,
        #[arg(long, default_value_t = 384)]
        height: u32,
        #[arg(long, default_value_t = 10)]
        fps: u32,
    },
    /// Write randomly initialised VGG weights (torchvision names) as safetensors.
    Backbone {
        #[arg(long)]
        out: PathBuf,
        /// Channel widths of the five blocks, e.g. 8,16,32,64,64 [default: VGG-19's].
        #[arg(long, value_delimiter = ',')]
        widths: Option<Vec<i64>>,
        #[arg(long, default_value_t = 1)]
        seed: i64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon_like = matches!(&cli.command, Command::Watch(_) | Command::Bench(BenchCommand::Pipeline { .. }));
    if daemon_like && std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // Beside the decoders, OpenMP threads that spin between the backbone's layers
        // burn CPU the decoders need: passive waiting measured 15% less CPU per frame
        // at the same throughput (docs/benchmarks.md). libgomp reads this once, at its
        // first parallel region.
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("OMP_WAIT_POLICY", "PASSIVE") };
    }
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Watch(a) => watch_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Classify(a) => classify_cmd(a),
        Command::Check(a) => check_cmd(a),
        Command::Synth(a) => synth_cmd(a),
        Command::Bench(a) => bench_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ConfigError::Invalid(problems)) = e.downcast_ref::<ConfigError>() {
                eprintln!("{problems}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // Problems found while starting the watcher that the operator must fix in
            // files (alerts, models) are configuration problems too.
            if let Some(w) = e.downcast_ref::<WatchError>() {
                let config_problem = matches!(
                    w,
                    WatchError::Alerts(_)
                        | WatchError::Model(_)
                        | WatchError::Worker(WorkerError::Load(_))
                        | WatchError::StateDir(_)
                );
                if config_problem {
                    eprintln!("{w}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn resolve_placement(args: &PlacementArgs, from_config: Option<&config::ModelConfig>) -> Result<Placement> {
    let device = args.device.or(from_config.map(|m| m.device)).unwrap_or_default();
    let precision = args.precision.or(from_config.map(|m| m.precision)).unwrap_or_default();
    Ok(Placement::resolve(device, precision)?)
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("carwatch/features");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/carwatch/features"),
        None => PathBuf::from(".carwatch-cache/features"),
    }
}

fn watch_cmd(a: WatchArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let on_hit: Option<carwatch::publish::HitCallback> = if a.print_hits {
        Some(Box::new(|hit| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{hit}");
            let _ = out.flush();
        }))
    } else {
        None
    };
    let hang_inference = match a.test_fault.as_deref() {
        None => false,
        Some("hang-inference") => true,
        Some(other) => anyhow::bail!("unknown test fault `{other}`"),
    };
    let shutdown = carwatch::watch::Shutdown::signals().context("cannot install signal handlers")?;
    let seam = carwatch::watch::Seam { hang_inference, ..Default::default() };
    carwatch::watch::run(&config, carwatch::watch::WatchOptions { models: a.models, on_hit, seam }, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

fn train_cmd(a: TrainArgs) -> Result<ExitCode> {
    let placement = resolve_placement(&a.placement, None)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let opts = TrainOptions {
        data: a.data,
        backbone: a.backbone,
        out: a.out,
        cache_dir: a.cache_dir.unwrap_or_else(default_cache_dir),
        placement,
        seed: a.seed,
        validation_fraction: a.validation,
        flip: a.flip,
        fit: FitOptions { hidden: a.hidden, max_epochs: a.epochs, ..Default::default() },
        batch_size: a.batch.max(1),
        progress: true,
        notice: a.notice,
        int8: a.int8,
    };
    let report = train::run(&opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<28} {:<6} {:>6} {:>6} {:>5} {:>8} {:>7}",
        "head", "level", "labels", "train", "val", "val acc", "epochs"
    )?;
    for h in &report.heads {
        let acc = h.val_accuracy.map_or("-".to_string(), |a| format!("{a:.3}"));
        writeln!(
            out,
            "{:<28} {:<6} {:>6} {:>6} {:>5} {:>8} {:>7}",
            h.id, h.level, h.labels, h.train_samples, h.val_samples, acc, h.epochs
        )?;
    }
    writeln!(
        out,
        "{} photos; features: {} from cache, {} computed; {} skipped; wrote {}",
        report.photos,
        report.cached,
        report.computed,
        report.skipped.len(),
        report.manifest.display()
    )?;
    if let Some(q) = &report.int8 {
        writeln!(
            out,
            "int8 backbone {} (first convolution {}): same view/make/model as fp32 on {:.1}% of {} photos; {}",
            q.path.display(),
            q.first_conv.name(),
            q.agreement * 100.0,
            q.photos,
            if q.enabled {
                "used on CPU when precision = \"auto\""
            } else {
                "below 98%: used only if precision = \"int8\""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn classify_cmd(a: ClassifyArgs) -> Result<ExitCode> {
    let config = if a.config.exists() { Some(Config::load(&a.config)?) } else { None };
    let models =
        a.models.clone().or(config.as_ref().map(|c| c.model.dir.clone())).unwrap_or_else(|| PathBuf::from("models"));
    let device = a.placement.device.or(config.as_ref().map(|c| c.model.device)).unwrap_or_default();
    let precision = a.placement.precision.or(config.as_ref().map(|c| c.model.precision)).unwrap_or_default();
    let recognizer = Recognizer::load_choosing(&models, device, precision)
        .with_context(|| format!("loading models from {}", models.display()))?;
    if let Some(notice) = recognizer.cascade.notice() {
        eprintln!("NOTE: {notice}");
    }
    let placement = recognizer.backbone.placement();
    tracing::info!("classifying on {}", placement.describe());

    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    // Load and classify in small batches (one backbone pass each, memory bounded);
    // results come out in input order.
    for chunk in a.inputs.chunks(8) {
        let loaded: Vec<Result<image::RgbImage, String>> =
            chunk.iter().map(|input| carwatch::input::load(input).map_err(|e| e.to_string())).collect();
        let views = carwatch::model::preprocess::whole(loaded.iter().flatten());
        let mut predictions = match recognizer.classify(&views) {
            Ok(p) => p.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => views.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        for (input, image) in chunk.iter().zip(loaded) {
            let result = image.and_then(|_| predictions.next().unwrap_or_else(|| Err("no prediction".into())));
            match result {
                Ok(p) if a.json => writeln!(out, "{}", prediction_json(input, &p))?,
                Ok(p) => write_prediction(&mut out, input, &p)?,
                Err(e) => {
                    failed += 1;
                    report_failure(&mut out, a.json, input, &e)?;
                }
            }
        }
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn report_failure(out: &mut impl Write, json: bool, input: &str, error: &str) -> Result<()> {
    if json {
        writeln!(out, "{}", json!({ "input": input, "error": error }))?;
    }
    eprintln!("{input}: {error}");
    Ok(())
}

fn prediction_json(input: &str, p: &Prediction) -> serde_json::Value {
    let levels: Vec<_> = p
        .path
        .iter()
        .map(|c| {
            json!({
                "level": c.level,
                "label": c.label,
                "probability": c.p,
                "top": c.top.iter().map(|(l, q)| json!({ "label": l, "probability": q })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let marginal =
        |level| p.marginal(level).into_iter().map(|(l, q)| json!({ "label": l, "probability": q })).collect::<Vec<_>>();
    json!({
        "input": input,
        "view": p.label(Level::View),
        "make": p.label(Level::Make),
        "model": p.label(Level::Model),
        "confidence": p.confidence(),
        "levels": levels,
        "marginals": {
            "view": marginal(Level::View),
            "make": marginal(Level::Make),
            "make_model": p.make_models().into_iter().map(|((m, o), q)| json!({ "make": m, "model": o, "probability": q })).collect::<Vec<_>>(),
        },
    })
}

fn write_prediction(out: &mut impl Write, input: &str, p: &Prediction) -> Result<()> {
    writeln!(
        out,
        "{input}: {} / {} / {}  (confidence {:.3})",
        p.label(Level::View),
        p.label(Level::Make),
        p.label(Level::Model),
        p.confidence()
    )?;
    for c in &p.path {
        let alternatives: Vec<String> = c.top.iter().skip(1).map(|(l, q)| format!("{l} {q:.3}")).collect();
        writeln!(out, "  {:<6} {:<16} {:.3}   {}", c.level.name(), c.label, c.p, alternatives.join(", "))?;
    }
    Ok(())
}

fn check_cmd(a: CheckArgs) -> Result<ExitCode> {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            println!("{problems}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let mut problems: Vec<String> = Vec::new();
    // Shapes are checked by loading on the CPU in fp32: no GPU needed to check a config.
    let cpu = Placement { device: tch::Device::Cpu, precision: model::Precision::Fp32 };
    let mut leaves = None;
    match Recognizer::load(&config.model.dir, cpu) {
        Ok(r) => {
            if let Some(n) = r.cascade.notice() {
                println!("note: {n}");
            }
            println!(
                "models {}: backbone widths {:?}, {} leaves",
                config.model.dir.display(),
                r.backbone.spec().widths,
                r.cascade.leaves().len()
            );
            leaves = Some(r.cascade.leaves().to_vec());
        }
        Err(e) => problems.push(format!("models {}: {e}", config.model.dir.display())),
    }
    if let Some(leaves) = leaves {
        let vocabulary = Vocabulary { leaves, cameras: config.cameras.iter().map(|c| c.name.clone()).collect() };
        match AlertSet::load(&config.alerts, &vocabulary, &config.matcher) {
            Ok(set) => println!("alerts {}: {} alert(s)", config.alerts.display(), set.alerts.len()),
            Err(AlertsError::Invalid(p)) => problems.extend(p.0.iter().map(|p| p.to_string())),
            Err(e) => problems.push(e.to_string()),
        }
    } else {
        println!("alerts {}: not checked (they are checked against the models' labels)", config.alerts.display());
    }
    println!("{} camera(s)", config.cameras.len());
    if problems.is_empty() {
        println!("{}: ok", config.file.display());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("{p}");
        }
        Ok(ExitCode::from(EXIT_CONFIG))
    }
}

fn synth_cmd(cmd: SynthCommand) -> Result<ExitCode> {
    match cmd {
        SynthCommand::Dataset { out, per_class, seed, size } => {
            let samples = carwatch::synthetic::write_dataset(&out, per_class, seed, size)
                .with_context(|| format!("writing synthetic photos to {}", out.display()))?;
            println!("wrote {} synthetic photos to {}", samples.len(), out.display());
        }
        SynthCommand::Clip { out, scene, width, height, fps } => {
            let scene = Scene::parse(&scene, width, height, fps).map_err(anyhow::Error::msg)?;
            carwatch::synthetic::video::write_clip(&scene, &out).map_err(anyhow::Error::msg)?;
            println!("wrote a {:.0} s clip to {}", scene.period().as_secs_f64(), out.display());
        }
        SynthCommand::Rtsp { mounts, port, width, height, fps } => {
            let mut parsed = Vec::new();
            for m in &mounts {
                let (path, scene) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--mount takes PATH=SCENE"))?;
                parsed.push((path.to_string(), Scene::parse(scene, width, height, fps).map_err(anyhow::Error::msg)?));
            }
            let paths: Vec<String> = parsed.iter().map(|(p, _)| p.clone()).collect();
            let server = RtspServer::start(parsed, port, None).map_err(anyhow::Error::msg)?;
            for p in paths {
                println!("{}", server.url(&p));
            }
            let mut signals =
                signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
            let _ = signals.forever().next();
            server.stop();
        }
        SynthCommand::Backbone { out, widths, seed } => {
            let spec = match widths {
                Some(w) => {
                    VggSpec { widths: w.try_into().map_err(|_| anyhow::anyhow!("--widths takes five numbers"))? }
                }
                None => VggSpec::VGG19,
            };
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            model::weights::write_atomic(&out, &spec.random_state_dict(seed))?;
            println!("wrote random VGG weights (widths {:?}) to {}", spec.widths, out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(cmd: BenchCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        BenchCommand::Model { backbone, models, device, precision, batches, seconds, warmup, quick, json } => {
            let device = device.resolve()?;
            let precisions = if precision.is_empty() {
                match device {
                    tch::Device::Cuda(_) => {
                        vec![model::Precision::Fp16, model::Precision::Bf16, model::Precision::Fp32]
                    }
                    _ if model::cpu_has_native_bf16() => {
                        vec![model::Precision::Fp32, model::Precision::Bf16, model::Precision::Int8]
                    }
                    _ => vec![model::Precision::Fp32, model::Precision::Int8],
                }
            } else {
                precision
                    .iter()
                    .map(|p| match p.parse::<PrecisionChoice>() {
                        Ok(PrecisionChoice::Exactly(p)) => Ok(p),
                        _ => Err(anyhow::anyhow!("--precision takes fp32, bf16, fp16 or int8, not `{p}`")),
                    })
                    .collect::<Result<_>>()?
            };
            let batches = match (quick, batches.is_empty(), device) {
                (true, _, _) => vec![1, 2],
                (false, false, _) => batches,
                (false, true, tch::Device::Cuda(_)) => vec![1, 8, 32, 64, 128, 256],
                (false, true, _) => vec![1, 4, 8, 16, 32],
            };
            let opts = carwatch::bench::ModelOptions {
                backbone,
                models,
                device,
                precisions,
                batches,
                min_time: std::time::Duration::from_secs_f64(if quick { 0.2 } else { seconds }),
                warmup: if quick { 1 } else { warmup },
            };
            let results = carwatch::bench::model(&opts).map_err(anyhow::Error::msg)?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&results)?)?;
            } else {
                if let Some(r) = results.first() {
                    writeln!(out, "backbone + cascade ({})", r.cascade)?;
                }
                writeln!(
                    out,
                    "{:<8} {:<9} {:>6} {:>10} {:>13} {:>10} {:>15} {:>17}",
                    "device",
                    "precision",
                    "batch",
                    "img/s",
                    "ms/batch",
                    "GFLOP/s",
                    "backbone img/s",
                    "from frames img/s"
                )?;
                for r in &results {
                    writeln!(
                        out,
                        "{:<8} {:<9} {:>6} {:>10.1} {:>13.1} {:>10.0} {:>15.1} {:>17.1}",
                        r.device,
                        r.precision,
                        r.batch,
                        r.img_per_s,
                        r.ms_per_batch,
                        r.gflops,
                        r.backbone_img_per_s,
                        r.from_frames_img_per_s
                    )?;
                }
            }
        }
        BenchCommand::Pipeline {
            cameras,
            fps,
            duration,
            warmup,
            resolution,
            source_fps,
            models,
            device,
            precision,
            decode,
            threads,
            scene,
            motion,
            json,
        } => {
            let (width, height) = match resolution {
                Resolution::R720p => (1280, 720),
                Resolution::R1080p => (1920, 1080),
            };
            let decode: carwatch::camera::DecodeMode =
                serde_json::from_value(serde_json::Value::String(decode.clone()))
                    .map_err(|_| anyhow::anyhow!("unknown --decode `{decode}`"))?;
            let models = models.unwrap_or_else(|| {
                if PathBuf::from("models/cascade.toml").exists() {
                    PathBuf::from("models")
                } else {
                    PathBuf::from("models/demo")
                }
            });
            let opts = carwatch::bench::PipelineOptions {
                cameras,
                fps,
                width,
                height,
                source_fps,
                duration: std::time::Duration::from_secs_f64(duration),
                warmup: std::time::Duration::from_secs_f64(warmup),
                models,
                device,
                precision,
                decode,
                threads,
                scene,
                motion,
            };
            let r = carwatch::bench::pipeline(&opts).map_err(anyhow::Error::msg)?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&[&r])?)?;
            } else {
                writeln!(
                    out,
                    "{} cameras x {} fps at {} ({}, batch {}, {}): {:.2} frames/s analysed, {} dropped, {} answered by motion gating; latency p50/p95/p99 {:.0}/{:.0}/{:.0} ms; CPU per frame {:.1} ms decode + {:.1} ms inference; peak RSS {:.0} MB",
                    r.cameras,
                    r.fps,
                    r.resolution,
                    r.model,
                    r.batch_max,
                    r.decoder,
                    r.analysed_fps,
                    r.dropped,
                    r.motion_skipped,
                    r.latency_ms_p50,
                    r.latency_ms_p95,
                    r.latency_ms_p99,
                    r.cpu_ms_per_frame_decode,
                    r.cpu_ms_per_frame_infer,
                    r.peak_rss_mb
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
