//! The web view (`[http] listen`): the real binary, a real RTSP camera and Mosquitto,
//! and a real headless Chromium (Debian's `chromium`, installed by `make setup`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::{Watcher, wanted};
use crate::support::mqtt::{Mosquitto, Subscriber, free_port};
use crate::support::{self, run, stderr, stdout};

const LONG: Duration = Duration::from_secs(60);

/// (status, body) of `GET path`, with `extra` request headers.
fn get(port: u16, path: &str, extra: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the web view");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let code = String::from_utf8_lossy(&raw[..split]).split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (code.unwrap_or(0), raw[split..].to_vec())
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = get(port, path, "");
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Debian's Chromium, headless, on `url`, with `args`; its stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("chromium");
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url);
    let o = run(cmd, Duration::from_secs(90));
    assert!(o.status.success(), "chromium (install it with `make setup`) failed:\n{}", stderr(&o));
    stdout(&o)
}

#[test]
fn the_page_in_a_browser_shows_the_camera_and_the_hits_image() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let port = free_port();
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "bmw", "3-series"), 600);
    let config = scenario.mqtt(broker.port).section(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n")).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let hit = sub
        .wait_for("carwatch/hits/3-series", LONG, |_| true)
        .unwrap_or_else(|| panic!("no hit\n{}", watcher.logs()))
        .json();

    // The API shows the hit, the camera streaming and the alert with its source.
    let deadline = Instant::now() + Duration::from_secs(20);
    let hits = loop {
        let hits = json(port, "/api/hits");
        if hits.as_array().is_some_and(|h| !h.is_empty()) && json(port, "/api/cameras")["gate"]["state"] == "streaming"
        {
            break hits;
        }
        assert!(Instant::now() < deadline, "/api/hits or /api/cameras never caught up: {hits}\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(hits[0]["hit_id"], hit["hit_id"]);
    let alerts = json(port, "/api/alerts");
    assert_eq!((alerts[0]["id"].as_str(), alerts[0]["source"].as_str()), (Some("3-series"), Some("file")), "{alerts}");
    assert_eq!(get(port, "/health", "").0, 200);
    assert!(String::from_utf8_lossy(&get(port, "/metrics", "").1).contains("carwatch_hits_total"));

    // The snapshot is served under /snapshots/, and nothing outside the directory is.
    let snapshot = PathBuf::from(hit["snapshot"].as_str().unwrap());
    let rel = snapshot.strip_prefix(dir.path().join("state/snapshots")).unwrap().to_string_lossy().into_owned();
    let (code, jpeg) = get(port, &format!("/snapshots/{rel}"), "");
    assert_eq!((code, jpeg.as_slice()), (200, std::fs::read(&snapshot).unwrap().as_slice()));
    std::fs::write(dir.path().join("state/private.jpg"), b"not for the web").unwrap();
    for escape in ["/snapshots/../private.jpg", "/snapshots/%2e%2e/private.jpg", "/snapshots/gate/../../private.jpg"] {
        assert_eq!(get(port, escape, "").0, 404, "{escape}");
    }

    // In a real browser: the camera's row and the hit's image, loaded.
    let url = format!("http://127.0.0.1:{port}/");
    let profile = dir.path().join("chromium");
    let dom = chromium(&profile, &url, &["--dump-dom"]);
    assert!(dom.contains("data-camera=\"gate\""), "no camera row:\n{dom}");
    assert!(dom.contains("class=\"state streaming\""), "camera not shown streaming:\n{dom}");
    let loaded = dom.matches("data-loaded=\"1\"").count();
    assert!(loaded >= 2, "the hit's image did not load in the browser (last hit and hit list):\n{dom}");
    // A screenshot, kept as the test's artifact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&profile, &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900"]);
    let png = image::open(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert_eq!((png.width(), png.height()), (1280, 900));
    eprintln!("web view screenshot: {}", shot.display());
}

#[test]
fn a_reachable_address_needs_an_account_and_the_account_is_asked_for() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let port = free_port();
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "bmw", "3-series"), 600);
    // Refused by `check`, with where and what to do.
    let open = scenario.mqtt(broker.port).section(&format!("\n[http]\nlisten = \"0.0.0.0:{port}\"\n")).write();
    let mut cmd = support::carwatch();
    cmd.arg("check").arg("--config").arg(&open);
    let o = run(cmd, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(said.contains("carwatch.toml:") && said.contains("username and password_file"), "{said}");

    // With an account: 401 without it, 200 with it.
    std::fs::write(dir.path().join("web-password"), "hunter2\n").unwrap();
    let text = std::fs::read_to_string(&open).unwrap().replace(
        &format!("listen = \"0.0.0.0:{port}\"\n"),
        &format!(
            "listen = \"0.0.0.0:{port}\"\nusername = \"op\"\npassword_file = \"{}\"\n",
            dir.path().join("web-password").display()
        ),
    );
    std::fs::write(&open, text).unwrap();
    let watcher = Watcher::start(&open);
    let deadline = Instant::now() + LONG;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "web view never listened\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/api/hits", "").0, 401);
    use base64::Engine;
    let good = base64::engine::general_purpose::STANDARD.encode("op:hunter2");
    assert_eq!(get(port, "/api/hits", &format!("Authorization: Basic {good}\r\n")).0, 200);
}
