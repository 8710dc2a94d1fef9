//! Running as a service: the systemd unit, sd_notify readiness and watchdog, metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use carwatch::synthetic::rtsp::RtspServer;

use crate::support::daemon::{Scenario, Watcher, camera, single};
use crate::support::mqtt::{Mosquitto, free_port};
use crate::support::{self, write};

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_2() {
    let dir = support::tempdir();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string("systemd/carwatch.service").unwrap();
    let copy = dir.path().join("carwatch.service");
    write(&copy, &unit.replace("/usr/local/bin/carwatch", env!("CARGO_BIN_EXE_carwatch")));
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (make setup installs systemd)");
    let verify = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(v.status.success() && verify.trim().is_empty(), "systemd-analyze verify:\n{verify}");

    let s = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "systemd/carwatch.service"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&s.stdout);
    let line =
        text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score:\n{text}"));
    let score: f64 =
        line.split(':').nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "DeviceAllow=/dev/nvidiactl",
        "LoadCredential=mqtt-password",
    ] {
        assert!(unit.contains(must), "the unit lacks {must:?}");
    }
}

/// Datagrams received on `socket` within `span`.
fn receive(socket: &UnixDatagram, span: Duration) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + span;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            out.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    out
}

/// The notifications of a `watch` run with the watchdog on: every message and when it
/// came, when READY=1 came (and its wall-clock time, to compare with the log's), and
/// the whole log.
fn notify_run(hang: bool) -> (Vec<(Instant, String)>, Instant, jiff::Timestamp, String) {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/c".into(), single("front", "bmw", "x5"))], 0, None).unwrap();
    let config = Scenario::new(dir.path()).mqtt(broker.port).cameras(&camera("gate", &rtsp.url("/c"), "")).write();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut cmd = crate::support::carwatch();
    cmd.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "4000000");
    cmd.env("RUST_LOG", "info,rumqttd=warn");
    cmd.arg("watch").arg("--config").arg(&config);
    if hang {
        cmd.args(["--test-fault", "hang-inference"]);
    }
    let watcher = Watcher::spawn(cmd);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ready, ready_wall) = loop {
        let batch = receive(&socket, Duration::from_millis(200));
        if let Some((at, _)) = batch.iter().find(|(_, m)| m.lines().any(|l| l == "READY=1")) {
            let at = (*at, jiff::Timestamp::now());
            got.extend(batch);
            break at;
        }
        got.extend(batch);
        assert!(Instant::now() < deadline, "no READY=1\n{}", watcher.logs());
    };
    got.extend(receive(&socket, Duration::from_secs(7)));
    // The log comes through a pipe read by another thread: read when it has caught up,
    // and its lines' own times compared with READY's.
    let logs = watcher.logs();
    drop(watcher);
    (got, ready, ready_wall, logs)
}

/// When the first log line containing `what` was written (its timestamp).
fn logged_at(logs: &str, what: &str) -> Option<jiff::Timestamp> {
    let line = logs.lines().find(|l| l.contains(what))?;
    // The first word once the colour codes (ESC [ ... m) are taken out.
    let (mut plain, mut in_code) = (String::new(), false);
    for c in line.chars() {
        match c {
            '\u{1b}' => in_code = true,
            'm' if in_code => in_code = false,
            _ if !in_code => plain.push(c),
            _ => {}
        }
    }
    plain.split_whitespace().next()?.parse().ok()
}

fn watchdog_pings(messages: &[(Instant, String)], after: Instant) -> usize {
    messages.iter().filter(|(at, m)| *at > after && m.lines().any(|l| l == "WATCHDOG=1")).count()
}

#[test]
fn ready_after_the_test_batch_then_watchdog_pings_that_stop_when_inference_hangs() {
    let (messages, ready, ready_wall, logs) = notify_run(false);
    for what in ["model loaded", "watching 1 camera(s)"] {
        let at = logged_at(&logs, what).unwrap_or_else(|| panic!("never logged `{what}`:\n{logs}"));
        assert!(at <= ready_wall, "READY=1 ({ready_wall}) came before `{what}` ({at}):\n{logs}");
    }
    let pings = watchdog_pings(&messages, ready);
    assert!(pings >= 3, "only {pings} WATCHDOG=1 in 7 s with WATCHDOG_USEC=4 s: {messages:?}");
    assert!(messages.iter().any(|(_, m)| m.contains("STATUS=1/1 cameras streaming")), "{messages:?}");

    let (messages, ready, _, _) = notify_run(true);
    // The heartbeat goes stale 2 s (half the watchdog) after the loop stopped.
    let late = watchdog_pings(&messages, ready + Duration::from_secs(3));
    assert_eq!(late, 0, "the watchdog kept being fed by a hung worker: {messages:?}");
    assert!(
        messages.iter().any(|(at, m)| *at > ready + Duration::from_secs(3) && m.contains("STATUS=")),
        "the notifier itself stopped: {messages:?}"
    );
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn the_metrics_endpoint_shows_frames_rising_and_the_camera_streaming() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/c".into(), single("rear", "bmw", "i3"))], 0, None).unwrap();
    let port = free_port();
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/c"), ""))
        .section(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nstats_interval_s = 1\n"))
        .write();
    let watcher = Watcher::start(&config);
    let frames = "carwatch_camera_frames_in_total{camera=\"gate\"}";
    let streaming = "carwatch_camera_state{camera=\"gate\",state=\"streaming\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"");
            let (_, body) = http_get(port, "/metrics");
            if sample(&body, streaming) == Some(1.0) && sample(&body, frames).unwrap_or(0.0) > 0.0 {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "camera never streaming in /metrics\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let before = sample(&first, frames).unwrap();
    // Frames rise, and (once the first batch is through the model, which takes a while
    // cold) so do analysed frames: both within the deadline.
    let analysed = "carwatch_camera_frames_analysed_total{camera=\"gate\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(port, "/metrics");
        assert_eq!(code, 200);
        if sample(&body, frames).unwrap() > before && sample(&body, analysed).unwrap() > 0.0 {
            assert!(body.contains("carwatch_inference_stage_seconds_bucket{"), "{body}");
            assert_eq!(sample(&body, "carwatch_mqtt_connected"), Some(1.0), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "frames stuck at {before}, or none analysed:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(port, "/health").0, 200);
    let mut sub = crate::support::mqtt::Subscriber::connect(broker.port, "carwatch/stats");
    let stats = sub.wait_for("carwatch/stats", Duration::from_secs(10), |_| true).expect("stats on MQTT").json();
    assert!(stats["cameras"]["gate"]["frames_in"].as_u64().unwrap() > 0, "{stats}");
}
