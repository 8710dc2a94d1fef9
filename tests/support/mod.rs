//! Helpers shared by the integration tests: run the binary with a deadline, and build
//! a tiny trained cascade once per test process.

#![allow(dead_code)]

pub mod daemon;
pub mod mqtt;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `carwatch` binary cargo built for these tests.
pub fn carwatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carwatch"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `cmd` to completion, failing the test if it takes longer than `limit`. Output is
/// drained while it runs, so a chatty child never blocks on a full pipe.
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn carwatch");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for carwatch") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Channel widths of the narrow VGG the tests train on: the same 16 convolutions as
/// VGG-19, an eighth of the channels.
pub const NARROW: [i64; 5] = [8, 16, 32, 64, 64];

/// A cascade trained on generated photos, shared by every test in the process.
pub struct Trained {
    pub root: PathBuf,
    pub models: PathBuf,
    pub backbone: PathBuf,
    pub data: PathBuf,
    pub cache: PathBuf,
    /// stdout of the `train` run (its head table).
    pub train_stdout: String,
}

/// Photos per class for training, and for the held-out check set.
pub const TRAIN_PER_CLASS: usize = 24;
pub const HELD_OUT_PER_CLASS: usize = 4;

/// Trains (once) a cascade on 24 generated photos of each of the 27 synthetic classes,
/// with a narrow random backbone, through the real `carwatch train`.
pub fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        remove_stale_roots();
        let root = std::env::temp_dir().join(format!("carwatch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let backbone = root.join("narrow-vgg.safetensors");
        let widths: Vec<String> = NARROW.iter().map(|w| w.to_string()).collect();
        let mut cmd = carwatch();
        cmd.args(["synth", "backbone", "--widths", &widths.join(","), "--out"]).arg(&backbone);
        let o = run(cmd, Duration::from_secs(60));
        assert!(o.status.success(), "synth backbone: {}", stderr(&o));

        let data = root.join("photos");
        carwatch::synthetic::write_dataset(&data, TRAIN_PER_CLASS, 1, 224).unwrap();
        let models = root.join("models");
        let cache = root.join("cache");
        let mut cmd = carwatch();
        cmd.arg("train").arg("--data").arg(&data).arg("--backbone").arg(&backbone);
        cmd.arg("--out").arg(&models).arg("--cache-dir").arg(&cache);
        let o = run(cmd, Duration::from_secs(600));
        assert!(o.status.success(), "train failed:\n{}\n{}", stdout(&o), stderr(&o));
        Trained { root, models, backbone, data, cache, train_stdout: stdout(&o) }
    })
}

/// A cascade on the real VGG-19 shape (random weights), trained with `--int8` on the
/// shared photos, once per test process: what the int8 agreement is claimed for.
pub fn trained_vgg19() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let small = trained();
        let backbone = small.root.join("vgg19-random.safetensors");
        let mut cmd = carwatch();
        cmd.args(["synth", "backbone", "--out"]).arg(&backbone);
        let o = run(cmd, Duration::from_secs(120));
        assert!(o.status.success(), "synth backbone: {}", stderr(&o));
        let models = small.root.join("models-vgg19");
        let mut cmd = carwatch();
        cmd.arg("train").arg("--data").arg(&small.data).arg("--backbone").arg(&backbone);
        cmd.arg("--out").arg(&models).arg("--cache-dir").arg(&small.cache).args(["--epochs", "20", "--int8"]);
        let o = run(cmd, Duration::from_secs(1200));
        assert!(o.status.success(), "train --int8 failed:\n{}\n{}", stdout(&o), stderr(&o));
        Trained {
            root: small.root.clone(),
            models,
            backbone,
            data: small.data.clone(),
            cache: small.cache.clone(),
            train_stdout: stdout(&o),
        }
    })
}

/// The shared cascade lives for the whole test process (statics are never dropped), so
/// each run removes the directories of earlier test processes that have exited.
fn remove_stale_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("carwatch-test-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("carwatch-").tempdir().expect("tempdir")
}

pub fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}
