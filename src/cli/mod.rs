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
use carwatch::train::{TrainOptions, fit::FitOptions};
use carwatch::watch::WatchError;

/// Log filter without RUST_LOG. The embedded broker (rumqttd) logs every connection at
/// info and every clean disconnect as an error in its router; neither helps an operator.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::router::routing=off";

/// Exit status for a configuration the operator must fix (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

mod alert;
mod bench;
mod check;
mod classify;
mod search;
mod synth;
mod table;
mod train;
mod watch;

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
    /// Search the vehicles `watch` remembered (sightings), by description, camera and time.
    Search(SearchArgs),
    /// Validate the config, the alert file and the models; list every problem.
    Check(CheckArgs),
    /// Set, remove or list alerts over MQTT, for every watcher on the broker.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Generate synthetic data: labelled vehicle images or random backbone weights.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Measure model and pipeline throughput (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a completion script for SHELL on stdout (`make install` installs bash's,
    /// zsh's and fish's).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff) on stdout: carwatch(1), or with SUBCOMMAND that
    /// command's own page, carwatch-SUBCOMMAND(1) (`make install` installs them all).
    Man {
        /// The subcommand whose page to print (watch, search, alert...).
        subcommand: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Backbone + cascade throughput per precision and batch size (VGG-19 shape).
    Model(BenchModelArgs),
    /// The whole watch path with N synthetic RTSP cameras.
    Pipeline(BenchPipelineArgs),
    /// Wide views located, tracked and decided against generated truth.
    Accuracy(BenchAccuracyArgs),
    /// The sightings store: inserts and searches over N generated rows.
    Sightings {
        /// Generated sightings written before searching.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// One JSON object on stdout instead of the summary line.
        #[arg(long)]
        json: bool,
    },
    /// The work per analysed frame outside the model, the old way (whole frame to RGB)
    /// against the current one (I420 kept), on generated frames (one thread).
    Frame {
        /// Generated frames timed.
        #[arg(long, default_value_t = 100)]
        frames: usize,
        /// Frame size.
        #[arg(long, value_enum, default_value_t = Resolution::R720p)]
        resolution: Resolution,
        /// One JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The motion locator alone, per frame, on a generated street (one thread).
    Locate {
        /// Frames of the generated street timed.
        #[arg(long, default_value_t = 200)]
        frames: usize,
        /// Frame size of the generated street.
        #[arg(long, value_enum, default_value_t = Resolution::R720p)]
        resolution: Resolution,
        /// One JSON object on stdout instead of the summary line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct BenchModelArgs {
    /// VGG weights (safetensors); random VGG-19 weights when absent.
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// A trained models directory, measured on generated vehicle photos (heads the
    /// photos cannot reach are skipped, as in `watch`) instead of a random cascade.
    #[arg(long, conflicts_with = "backbone")]
    models: Option<PathBuf>,
    /// Where to run: auto, cpu, cuda, cuda:N.
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
    /// Batches run before timing (kernel choice, caches).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// A short run (batches 1 and 2, a fraction of a second each): for tests.
    #[arg(long)]
    quick: bool,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchPipelineArgs {
    /// Synthetic RTSP cameras served and watched.
    #[arg(long, default_value_t = 4)]
    cameras: usize,
    /// Frames analysed per second per camera.
    #[arg(long, default_value_t = 2.0)]
    fps: f64,
    /// Seconds measured (after a warm-up).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds run before measuring (model load, first batches).
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Frame size of the synthetic cameras.
    #[arg(long, value_enum, default_value_t = Resolution::R720p)]
    resolution: Resolution,
    /// Frame rate of the synthetic cameras (what is decoded).
    #[arg(long, default_value_t = 25)]
    source_fps: u32,
    #[command(flatten)]
    model: BenchModelChoice,
    /// How the cameras decode (`decode` of a camera).
    #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(["auto", "cpu", "nvdec", "keyframes"]))]
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
    /// How every camera locates vehicles. For wide views: --locate motion --scene
    /// wide:angled/bmw/3-series
    #[arg(long, default_value = "frame", value_parser = clap::builder::PossibleValuesParser::new(["frame", "motion", "regions", "detector"]))]
    locate: String,
    /// Also run the Python peer (bench/peer.py: OpenCV decoding, the same int8
    /// TorchScript backbone and heads) on the same cameras for the same span, and report
    /// its frames/s and carwatch's ratio to it.
    #[arg(long)]
    peer: bool,
    /// Python with torch, numpy and OpenCV for --peer (what `make setup` installs).
    #[arg(long, default_value = ".venv/bin/python", requires = "peer")]
    peer_python: PathBuf,
    /// The peer program for --peer.
    #[arg(long, default_value = "bench/peer.py", requires = "peer")]
    peer_script: PathBuf,
    /// Cameras per machine: raise the camera count on generated traffic (the wanted
    /// vehicle crossing every 12 s, another between) until a passage is missed or a
    /// frame dropped, with carwatch's defaults (locate = "motion"), and with --peer the
    /// peer too. --duration is rounded to whole 12 s periods; --cameras is ignored.
    #[arg(long)]
    find_max: bool,
    /// The most cameras --find-max tries.
    #[arg(long, default_value_t = 32, requires = "find_max")]
    max_cameras: usize,
    /// The wanted vehicle of --find-max traffic, VIEW/MAKE/MODEL of the synthetic
    /// catalogue (as `bench accuracy` and the wide-view tests).
    #[arg(long, default_value = "angled/bmw/3-series", requires = "find_max")]
    wanted: String,
    /// The alert has expired: every frame is still classified, none is a hit, nothing is
    /// encoded or published (the peer's terms).
    #[arg(long)]
    no_hits: bool,
    /// Fix `batch.max_size` instead of measuring it at start-up.
    #[arg(long)]
    batch: Option<u32>,
    /// One JSON object on stdout instead of the summary line.
    #[arg(long)]
    json: bool,
}

/// Which models a benchmark runs, and where.
#[derive(Args)]
struct BenchModelChoice {
    /// Models directory [default: models, else models/demo].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Where to run the model: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Backbone precision: auto, fp32, bf16, int8 (CPU), fp16 (CUDA).
    #[arg(long, default_value = "auto")]
    precision: PrecisionChoice,
}

#[derive(Args)]
struct BenchAccuracyArgs {
    #[command(flatten)]
    model: BenchModelChoice,
    /// The wanted vehicle, MAKE/MODEL of the synthetic catalogue.
    #[arg(long, default_value = "bmw/3-series")]
    wanted: String,
    /// Vehicles crossing the street (every third is the wanted one).
    #[arg(long, default_value_t = 24)]
    passages: usize,
    /// Frame size of the generated street.
    #[arg(long, value_enum, default_value_t = Resolution::R720p)]
    resolution: Resolution,
    /// Analysed frames per second.
    #[arg(long, default_value_t = 4)]
    fps: u32,
    /// Seed of the generated traffic (same seed, same street).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The alert's confirm_frames (looks a track needs).
    #[arg(long, default_value_t = 2)]
    confirm_frames: u32,
    /// The alert's min_confidence.
    #[arg(long, default_value_t = 0.5)]
    min_confidence: f32,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Resolution {
    #[value(name = "720p")]
    R720p,
    #[value(name = "1080p")]
    R1080p,
}

impl Resolution {
    fn size(self) -> (u32, u32) {
        match self {
            Resolution::R720p => (1280, 720),
            Resolution::R1080p => (1920, 1080),
        }
    }
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
    /// Seed of the validation split and the heads' initial weights.
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
    /// Config file [default: $CARWATCH_CONFIG, else /etc/carwatch/carwatch.toml if it
    /// exists, else config/carwatch.toml].
    #[arg(long, default_value_os_t = config::default_path(), hide_default_value = true)]
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
    /// Config file [default: $CARWATCH_CONFIG, else /etc/carwatch/carwatch.toml if it
    /// exists, else config/carwatch.toml].
    #[arg(long, default_value_os_t = config::default_path(), hide_default_value = true)]
    config: PathBuf,
    /// Models directory, instead of the config's model.dir.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Also print each hit as a JSON line on stdout.
    #[arg(long)]
    print_hits: bool,
    /// Test-only fault injection: `hang-inference` (the inference loop stops after
    /// start-up, so the systemd watchdog test can see pings stop), `panic-thread:NAME`
    /// (that supervised thread panics once everything runs), `slow-load` (the model
    /// takes a minute to load, to stop the daemon meanwhile).
    #[arg(long, hide = true)]
    test_fault: Option<String>,
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Publish an alert (retained) on {prefix}/alerts/set/ID; replaces one of that id.
    Add(Box<AlertAddArgs>),
    /// Clear the alert ID set over MQTT (an empty retained message).
    Remove {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The alert's id.
        id: String,
    },
    /// The alerts the broker holds on {prefix}/alerts/set/+, and whether a watcher has them in force.
    List {
        #[command(flatten)]
        broker: BrokerArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Which broker: the config's ([mqtt], else the embedded broker's address), or flags.
#[derive(Args)]
struct BrokerArgs {
    /// Config file [default: $CARWATCH_CONFIG, else /etc/carwatch/carwatch.toml if it
    /// exists, else config/carwatch.toml].
    #[arg(long, default_value_os_t = config::default_path(), hide_default_value = true)]
    config: PathBuf,
    /// mqtt://host[:port] or mqtts://host[:port]; then the config is not read.
    #[arg(long)]
    url: Option<String>,
    /// With --url.
    #[arg(long, requires = "url")]
    username: Option<String>,
    /// A file holding the password, with --url.
    #[arg(long, requires = "url")]
    password_file: Option<PathBuf>,
    /// CA certificate for mqtts://, with --url.
    #[arg(long, requires = "url")]
    ca_file: Option<PathBuf>,
    /// Topic prefix of the alerts [default: the config's alerts_prefix or topic_prefix, else carwatch].
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(Args)]
struct AlertAddArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The alert's id: letters, digits, _ and -; hits go to {prefix}/hits/ID.
    id: String,
    /// The wanted make, as the model's labels name it (e.g. bmw).
    #[arg(long)]
    make: Option<String>,
    /// Needs --make.
    #[arg(long)]
    model: Option<String>,
    /// Only vehicles seen from this side (front, rear, angled...).
    #[arg(long)]
    view: Option<String>,
    /// The vehicle's colour (`silver` and `gray` are grey).
    #[arg(long, ignore_case = true, value_parser = colours())]
    colour: Option<String>,
    /// An example photo: a URL, or a path on the watchers' hosts (repeat for several).
    #[arg(long)]
    example: Vec<String>,
    /// Least cosine similarity to the example photos (0 to 1).
    #[arg(long, requires = "example")]
    min_similarity: Option<f64>,
    /// Only these cameras (repeat); cameras of other watchers are fine.
    #[arg(long)]
    camera: Vec<String>,
    /// Least probability of the description (0 to 1).
    #[arg(long)]
    min_confidence: Option<f64>,
    /// RFC 3339 time after which the alert no longer hits.
    #[arg(long)]
    expires: Option<String>,
    /// Free text carried in every hit (a case number, who to call).
    #[arg(long)]
    note: Option<String>,
    /// How far back (seconds) the sightings are searched when the alert arrives.
    #[arg(long)]
    lookback_s: Option<u64>,
}

#[derive(Args)]
struct CheckArgs {
    /// Config file [default: $CARWATCH_CONFIG, else /etc/carwatch/carwatch.toml if it
    /// exists, else config/carwatch.toml].
    #[arg(long, default_value_os_t = config::default_path(), hide_default_value = true)]
    config: PathBuf,
}

#[derive(Args)]
struct SearchArgs {
    /// Config file [default: $CARWATCH_CONFIG, else /etc/carwatch/carwatch.toml if it
    /// exists, else config/carwatch.toml].
    #[arg(long, default_value_os_t = config::default_path(), hide_default_value = true)]
    config: PathBuf,
    /// Vehicles of this make (with at least --min-confidence).
    #[arg(long)]
    make: Option<String>,
    /// Needs --make.
    #[arg(long)]
    model: Option<String>,
    /// Only this camera's sightings.
    #[arg(long)]
    camera: Option<String>,
    /// The vehicle's colour (`silver` and `gray` are grey).
    #[arg(long, ignore_case = true, value_parser = colours())]
    colour: Option<String>,
    /// Seen at or after: a span back from now (2h, 30m, 90s, 1d) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Seen at or before: as --since.
    #[arg(long)]
    until: Option<String>,
    /// Least probability of the make (and model) [default: 0.5].
    #[arg(long)]
    min_confidence: Option<f32>,
    /// Vehicles that look like this photo (path or URL), most alike first; loads the models.
    #[arg(long, value_name = "PHOTO")]
    like: Option<String>,
    /// With --like: least cosine similarity (0 to 1) [default: any].
    #[arg(long, requires = "like")]
    min_similarity: Option<f32>,
    /// Most sightings shown, newest first (0: all).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SynthCommand {
    /// Write generated vehicle photos in the layout `train` reads.
    Dataset {
        /// Directory written: OUT/<view>/<make>/<model>/*.png.
        #[arg(long)]
        out: PathBuf,
        /// Photos per (view, make, model).
        #[arg(long, default_value_t = 24)]
        per_class: usize,
        /// Seed of the generator (same seed, same photos).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Image height in pixels (width varies a little above it).
        #[arg(long, default_value_t = 128)]
        size: u32,
    },
    /// Write an H.264 clip (Matroska) of a synthetic scene.
    Clip {
        /// The .mkv file written.
        #[arg(long)]
        out: PathBuf,
        /// Segments `SECONDS:view/make/model[@x,y,w,h]+...;...`, optionally after `street;`
        /// and `bframes=N;` (see synthetic::video).
        #[arg(long)]
        scene: String,
        /// Frame width in pixels.
        #[arg(long, default_value_t = 480)]
        width: u32,
        /// Frame height in pixels.
        #[arg(long, default_value_t = 384)]
        height: u32,
        /// Frames per second.
        #[arg(long, default_value_t = 10)]
        fps: u32,
    },
    /// Serve synthetic scenes as RTSP cameras on 127.0.0.1 until interrupted.
    Rtsp {
        /// `PATH=SCENE`, e.g. `/gate=60:front/bmw/3-series` (repeatable).
        #[arg(long = "mount", required = true)]
        mounts: Vec<String>,
        /// TCP port on 127.0.0.1.
        #[arg(long, default_value_t = 8554)]
        port: u16,
        /// Frame width in pixels.
        #[arg(long, default_value_t = 480)]
        width: u32,
        /// Frame height in pixels.
        #[arg(long, default_value_t = 384)]
        height: u32,
        /// Frames per second.
        #[arg(long, default_value_t = 10)]
        fps: u32,
    },
    /// Write randomly initialised VGG weights (torchvision names) as safetensors.
    Backbone {
        /// The .safetensors file written.
        #[arg(long)]
        out: PathBuf,
        /// Channel widths of the five blocks, e.g. 8,16,32,64,64 [default: VGG-19's].
        #[arg(long, value_delimiter = ',')]
        widths: Option<Vec<i64>>,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: i64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon_like = matches!(&cli.command, Command::Watch(_) | Command::Bench(BenchCommand::Pipeline(_)));
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
        Command::Completions { shell } => {
            // Into memory first: the generator panics on a closed stdout (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "carwatch", &mut script);
            std::io::stdout().write_all(&script).map(|()| ExitCode::SUCCESS).context("writing the completion script")
        }
        Command::Man { subcommand } => man_page(subcommand.as_deref()),
        Command::Watch(a) => watch::watch_cmd(a),
        Command::Train(a) => train::train_cmd(a),
        Command::Classify(a) => classify::classify_cmd(a),
        Command::Check(a) => check::check_cmd(a),
        Command::Search(a) => search::search_cmd(a),
        Command::Alert(a) => alert::alert_cmd(a),
        Command::Synth(a) => synth::synth_cmd(a),
        Command::Bench(a) => bench::bench_cmd(a),
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
                        | WatchError::Worker(WorkerError::Detector(_))
                        | WatchError::StateDir(_)
                        | WatchError::BrokerConfig(_)
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

/// The colours an alert or a search may name, for clap to check and list.
fn colours() -> clap::builder::PossibleValuesParser {
    use carwatch::colour::Colour;
    clap::builder::PossibleValuesParser::new(Colour::NAMED.map(|c| {
        let value = clap::builder::PossibleValue::new(c.name());
        if c == Colour::Grey { value.aliases(["silver", "gray"]) } else { value }
    }))
}

/// carwatch(1), or `subcommand`'s page named carwatch-SUBCOMMAND(1).
fn man_page(subcommand: Option<&str>) -> Result<ExitCode> {
    let top = <Cli as clap::CommandFactory>::command();
    let cmd = match subcommand {
        None => top,
        Some(name) => {
            let names: Vec<String> = top.get_subcommands().map(|c| c.get_name().to_string()).collect();
            let Some(sub) = top.find_subcommand(name) else {
                anyhow::bail!("no subcommand `{name}`; one of: {}", names.join(", "));
            };
            sub.clone().name(format!("carwatch-{name}")).version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("writing the manual page")?;
    Ok(ExitCode::SUCCESS)
}

/// Under systemd with stderr connected to the journal, logs go to journald natively
/// (levels as priorities, `camera`, `alert` and other fields as CAMERA, ALERT...);
/// elsewhere to stderr in `format`.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    if std::env::var("JOURNAL_STREAM").is_ok_and(|v| stderr_is(&v)) {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_field_prefix(None).with_syslog_identifier("carwatch".into());
                tracing_subscriber::registry().with(filter).with(journal).init();
                return;
            }
            Err(e) => eprintln!("JOURNAL_STREAM is set but journald cannot be reached ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether stderr is the journal stream `journal_stream` names (`DEVICE:INODE`, as
/// systemd sets it): a program started from a service's shell inherits the variable
/// with stderr somewhere else, and must keep writing there.
fn stderr_is(journal_stream: &str) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(fd).metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument of every subcommand, by path, that has no help text.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                out.push(format!("{path} --{id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                out.push(format!("{path} {}", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn the_journal_is_used_only_when_stderr_is_the_stream_systemd_named() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let m = std::fs::File::from(fd).metadata().unwrap();
        assert!(stderr_is(&format!("{}:{}", m.dev(), m.ino())));
        assert!(!stderr_is(&format!("{}:{}", m.dev(), m.ino() + 1)), "stderr redirected elsewhere");
        assert!(!stderr_is("garbage"));
    }

    #[test]
    fn every_option_and_subcommand_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&cmd, "carwatch", &mut missing);
        assert!(missing.is_empty(), "no help text for:\n{}", missing.join("\n"));
    }

    /// Options with a fixed set of values list them in --help.
    #[test]
    fn enumerations_list_their_values() {
        let mut cmd = Cli::command();
        let help = |cmd: &mut clap::Command, path: &[&str]| {
            let mut c = cmd.clone();
            for p in path {
                c = c.find_subcommand_mut(p).unwrap().clone();
            }
            c.render_long_help().to_string()
        };
        let pipeline = help(&mut cmd, &["bench", "pipeline"]);
        for want in ["auto, cpu, nvdec, keyframes", "frame, motion, regions, detector", "720p, 1080p"] {
            assert!(pipeline.contains(want), "bench pipeline --help lacks {want}:\n{pipeline}");
        }
        for path in [&["search"][..], &["alert", "add"][..]] {
            let text = help(&mut cmd, path);
            assert!(text.contains("black, white, grey, red"), "{path:?} --help lacks the colours:\n{text}");
        }
        let completions = help(&mut cmd, &["completions"]);
        assert!(completions.contains("bash") && completions.contains("zsh"), "{completions}");
    }

    #[test]
    fn the_man_page_renders_with_every_subcommand() {
        // Every subcommand named in the Makefile's install rule has a page of its own.
        let makefile = include_str!("../../Makefile");
        for sub in Cli::command().get_subcommands().map(|c| c.get_name().to_string()) {
            if sub != "help" {
                assert!(makefile.contains(&format!(" {sub} ")), "make install does not install carwatch-{sub}(1)");
            }
        }
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH carwatch"), "{}", &page[..200.min(page.len())]);
        for sub in ["watch", "search", "check", "alert", "completions"] {
            assert!(page.contains(sub), "man page lacks {sub}");
        }
    }
}
