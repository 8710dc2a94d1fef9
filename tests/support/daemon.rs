//! `carwatch watch` as a child process: started with a config the test wrote, its
//! output collected, stopped with a signal, killed on drop.

use std::io::Read;

use rustix::process::{Pid, Signal};
use std::path::{Path, PathBuf};

use carwatch::synthetic::class;
use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;

use super::{trained, write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Frame size of the synthetic cameras: close to the training photos' aspect.
pub const W: u32 = 400;
pub const H: u32 = 320;

pub fn single(view: &str, make: &str, model: &str) -> Scene {
    Scene::single(class(view, make, model).unwrap(), W, H, 10)
}

/// A watcher's files, built up step by step and written into one directory:
/// carwatch.toml (state under `dir/state`, the shared trained models, CPU, small
/// batches) and alerts.toml.
pub struct Scenario {
    dir: PathBuf,
    mqtt: Option<u16>,
    broker: Option<u16>,
    cameras: String,
    alerts: String,
    matcher: String,
    sections: String,
}

impl Scenario {
    pub fn new(dir: &Path) -> Scenario {
        Scenario {
            dir: dir.to_path_buf(),
            mqtt: None,
            broker: None,
            cameras: String::new(),
            alerts: String::new(),
            matcher: String::new(),
            sections: String::new(),
        }
    }

    /// Publish to the broker on this port (`[mqtt]`); without it, the embedded one.
    pub fn mqtt(mut self, port: u16) -> Self {
        self.mqtt = Some(port);
        self
    }

    /// The embedded broker's port (`[broker] listen`).
    pub fn embedded_broker(mut self, port: u16) -> Self {
        self.broker = Some(port);
        self
    }

    /// `[[camera]]` tables (see [`camera`]).
    pub fn cameras(mut self, text: &str) -> Self {
        self.cameras.push_str(text);
        self
    }

    /// The alert file's text.
    pub fn alerts(mut self, text: &str) -> Self {
        self.alerts = text.to_string();
        self
    }

    /// Lines of `[matcher]`.
    pub fn matcher(mut self, text: &str) -> Self {
        self.matcher = text.to_string();
        self
    }

    /// Any other TOML, appended as it is (`[snapshots]`, `[metrics]`...).
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push_str(&format!("\n{text}\n"));
        self
    }

    /// Writes both files; returns the config's path.
    pub fn write(self) -> PathBuf {
        let t = trained();
        let alerts_path = self.dir.join("alerts.toml");
        write(&alerts_path, &self.alerts);
        let mut text = format!(
            "state_dir = \"{state}\"\nalerts = \"{alerts}\"\nstatus_interval_s = 1\n\n[model]\ndir = \"{models}\"\ndevice = \"cpu\"\n\n[matcher]\n{matcher}\n\n[batch]\nmax_size = 8\nmax_wait_ms = 50\n\n",
            state = self.dir.join("state").display(),
            alerts = alerts_path.display(),
            models = t.models.display(),
            matcher = self.matcher,
        );
        if let Some(port) = self.mqtt {
            text.push_str(&format!(
                "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"carwatch-test-{port}\"\n\n"
            ));
        }
        if let Some(port) = self.broker {
            text.push_str(&format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n\n"));
        }
        text.push_str(&self.sections);
        text.push_str(&self.cameras);
        let path = self.dir.join("carwatch.toml");
        write(&path, &text);
        path
    }
}

/// What most hit tests share: one RTSP camera `gate` showing `view/make/model`, and an
/// alert with the model's name asking for that make and model, hit on every matching
/// frame and then quiet for `cooldown_s`. Keep the server alive; finish the scenario
/// (broker, sections) and write it.
pub fn wanted(dir: &Path, (view, make, model): (&str, &str, &str), cooldown_s: u32) -> (RtspServer, Scenario) {
    let rtsp = RtspServer::start(vec![("/c".into(), single(view, make, model))], 0, None).expect("RTSP server");
    let alert = format!("[[alert]]\nid = \"{model}\"\nmake = \"{make}\"\nmodel = \"{model}\"\n");
    let scenario = Scenario::new(dir)
        .cameras(&camera("gate", &rtsp.url("/c"), ""))
        .alerts(&alert)
        .matcher(&format!("confirm_frames = 1\ncooldown_s = {cooldown_s}"));
    (rtsp, scenario)
}

/// A `[[camera]]` table; whole frames are classified (`locate = "frame"`, the vehicle
/// of [`single`] fills the frame) unless `extra` says how to locate.
pub fn camera(name: &str, url: &str, extra: &str) -> String {
    let locate = if extra.contains("locate") || extra.contains("regions") { "" } else { "locate = \"frame\"\n" };
    format!("[[camera]]\nname = \"{name}\"\nurl = \"{url}\"\nfps = 4\n{locate}{extra}\n\n")
}

/// A running `carwatch watch`.
pub struct Watcher {
    child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

fn drain(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

impl Watcher {
    pub fn start(config: &Path) -> Watcher {
        let mut cmd = super::carwatch();
        cmd.env("RUST_LOG", "info,rumqttd=warn");
        cmd.arg("watch").arg("--config").arg(config).arg("--print-hits");
        Watcher::spawn(cmd)
    }

    /// Runs `cmd` (a `carwatch watch ...` command the caller prepared).
    pub fn spawn(mut cmd: std::process::Command) -> Watcher {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start carwatch watch");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().unwrap(), Arc::clone(&stdout));
        drain(child.stderr.take().unwrap(), Arc::clone(&stderr));
        Watcher { child, stdout, stderr }
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The hits printed so far (`--print-hits`), in order.
    pub fn printed_hits(&self) -> Vec<serde_json::Value> {
        self.stdout.lock().unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGTERM, SIGINT, SIGKILL...) to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid is positive");
        rustix::process::kill_process(pid, signal).expect("signal our own child");
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const SIGTERM: Signal = Signal::TERM;
pub const SIGKILL: Signal = Signal::KILL;
pub const SIGHUP: Signal = Signal::HUP;
