//! `carwatch watch` as a child process: started with a config the test wrote, its
//! output collected, stopped with a signal, killed on drop.

use std::io::Read;
use std::path::{Path, PathBuf};

use carwatch::synthetic::class;
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

/// Writes carwatch.toml (and alerts.toml) into `dir`; `mqtt_port` None = embedded broker.
pub fn write_config(
    dir: &Path,
    mqtt: Option<u16>,
    broker_port: Option<u16>,
    cameras: &str,
    alerts: &str,
    matcher: &str,
) -> PathBuf {
    let t = trained();
    let alerts_path = dir.join("alerts.toml");
    write(&alerts_path, alerts);
    let mut text = format!(
        "state_dir = \"{state}\"\nalerts = \"{alerts}\"\nstatus_interval_s = 1\n\n[model]\ndir = \"{models}\"\ndevice = \"cpu\"\n\n[matcher]\n{matcher}\n\n[batch]\nmax_size = 8\nmax_wait_ms = 50\n\n",
        state = dir.join("state").display(),
        alerts = alerts_path.display(),
        models = t.models.display(),
    );
    if let Some(port) = mqtt {
        text.push_str(&format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"carwatch-test-{port}\"\n\n"));
    }
    if let Some(port) = broker_port {
        text.push_str(&format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n\n"));
    }
    text.push_str(cameras);
    let path = dir.join("carwatch.toml");
    write(&path, &text);
    path
}

pub fn camera(name: &str, url: &str, extra: &str) -> String {
    format!("[[camera]]\nname = \"{name}\"\nurl = \"{url}\"\nfps = 4\n{extra}\n\n")
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
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc_kill(self.child.id() as i32, signal);
        }
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

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGHUP: i32 = 1;

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
