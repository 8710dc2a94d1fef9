//! `carwatch watch` end to end: a GStreamer RTSP server and Mosquitto started by each
//! test on 127.0.0.1, the real binary in between, an MQTT subscriber reading hits.

use std::path::PathBuf;
use std::time::Duration;

use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;

use crate::support::daemon::{H, SIGTERM, Scenario, W, Watcher, camera, single};
use crate::support::mqtt::{Mosquitto, Subscriber, free_port};
use crate::support::{self, trained};

const LONG: Duration = Duration::from_secs(60);

/// `hit` against docs/hit.schema.json (generated from the hit's type), by a JSON Schema
/// validator.
pub fn assert_matches_schema(hit: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("docs/hit.schema.json").unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("docs/hit.schema.json is a valid schema");
    let errors: Vec<String> = validator.iter_errors(hit).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "the hit does not match docs/hit.schema.json: {errors:?}\n{hit}");
}

#[test]
fn hits_for_the_wanted_vehicle_only_then_offline_on_sigterm() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/gate".into(), single("front", "bmw", "3-series"))], 0, None).unwrap();
    let alerts = "[[alert]]\nid = \"bmw3\"\nmake = \"BMW\"\nmodel = \"3-series\"\nnote = \"case 2291\"\n\n[[alert]]\nid = \"audi\"\nmake = \"audi\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/gate"), ""))
        .alerts(alerts)
        .matcher("confirm_frames = 2\ncooldown_s = 60")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let mut watcher = Watcher::start(&config);

    assert!(
        sub.wait_for("carwatch/status", LONG, |m| m.payload == "online").is_some(),
        "no online status\n{}",
        watcher.logs()
    );
    let streaming = sub.wait_for("carwatch/cameras/gate/status", LONG, |m| m.json()["state"] == "streaming");
    assert!(streaming.is_some(), "camera never streaming\n{}", watcher.logs());
    let hit =
        sub.wait_for("carwatch/hits/bmw3", LONG, |_| true).unwrap_or_else(|| panic!("no hit\n{}", watcher.logs()));
    assert!(!hit.retain, "hits are not retained");
    let h = hit.json();
    assert_matches_schema(&h);
    assert_eq!(h["alert_id"], "bmw3");
    assert_eq!(h["alert_note"], "case 2291");
    assert_eq!(h["camera"], "gate");
    assert_eq!(
        (h["view"].as_str(), h["make"].as_str(), h["model"].as_str()),
        (Some("front"), Some("bmw"), Some("3-series"))
    );
    assert!(h["confidence"].as_f64().unwrap() >= 0.6);
    assert_eq!(h["frames"], 2);
    assert_eq!(h["region"]["width"], W);
    assert!(h["time"].as_str().unwrap().ends_with('Z'));
    let snapshot = PathBuf::from(h["snapshot"].as_str().unwrap());
    let img = image::open(&snapshot).unwrap_or_else(|e| panic!("snapshot {} unreadable: {e}", snapshot.display()));
    assert_eq!((img.width(), img.height()), (W, H));
    assert!(snapshot.starts_with(dir.path().join("state/snapshots/gate")));
    // The camera's last hit, as a raw JPEG on MQTT, retained: the whole outlined frame.
    let jpeg = sub
        .wait_for("carwatch/cameras/gate/snapshot", LONG, |m| m.retain || !m.bytes.is_empty())
        .unwrap_or_else(|| panic!("no snapshot on MQTT\n{}", watcher.logs()));
    let img = image::load_from_memory_with_format(&jpeg.bytes, image::ImageFormat::Jpeg).expect("a JPEG");
    assert_eq!((img.width(), img.height()), (W, H));
    // The same hit went to stdout (--print-hits).
    assert!(watcher.stdout.lock().unwrap().contains(h["hit_id"].as_str().unwrap()));
    // A subscriber arriving now gets the retained state (the broker marks it retained).
    let mut late = Subscriber::connect(broker.port, "carwatch/#");
    let active = late.wait_for("carwatch/alerts/active", LONG, |m| m.retain).expect("retained active alerts");
    assert_eq!(active.json().as_array().unwrap().len(), 2);
    assert!(late.wait_for("carwatch/status", LONG, |m| m.retain && m.payload == "online").is_some());
    assert!(late.wait_for("carwatch/cameras/gate/status", LONG, |m| m.retain).is_some());
    assert!(late.wait_for("carwatch/cameras/gate/snapshot", LONG, |m| m.retain).is_some(), "snapshot retained");
    late.disconnect();

    watcher.signal(SIGTERM);
    let status = watcher.wait(Duration::from_secs(5)).expect("carwatch must exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", watcher.logs());
    assert!(
        sub.wait_for("carwatch/status", Duration::from_secs(5), |m| m.payload == "offline").is_some(),
        "no offline status\n{}",
        watcher.logs()
    );
    assert!(sub.on("carwatch/hits/audi").is_empty(), "a BMW must not hit the audi alert");
}

#[test]
fn two_cameras_one_with_two_regions() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let pair = Scene::parse("3600:angled/audi/q7@0,0,0.5,1+rear/volvo/xc90@0.5,0,0.5,1", 2 * W, H, 10).unwrap();
    let rtsp =
        RtspServer::start(vec![("/street".into(), pair), ("/gate".into(), single("front", "bmw", "x5"))], 0, None)
            .unwrap();
    let regions = "regions = [{ name = \"left\", x = 0, y = 0, width = 0.5, height = 1.0 }, { name = \"right\", x = 0.5, y = 0, width = 0.5, height = 1.0 }]";
    let cameras = camera("street", &rtsp.url("/street"), regions) + &camera("gate", &rtsp.url("/gate"), "");
    let alerts = "[[alert]]\nid = \"q7\"\nmake = \"audi\"\nmodel = \"q7\"\n\n[[alert]]\nid = \"xc90\"\nmake = \"volvo\"\nmodel = \"xc90\"\n\n[[alert]]\nid = \"x5\"\nmake = \"bmw\"\nmodel = \"x5\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&cameras)
        .alerts(alerts)
        .matcher("confirm_frames = 2\ncooldown_s = 60")
        .section("[snapshots]\nmqtt_crop = true\nmqtt_height = 60")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    for (alert, cam, region, x) in
        [("q7", "street", "left", 0), ("xc90", "street", "right", W), ("x5", "gate", "frame", 0)]
    {
        let hit = sub
            .wait_for(&format!("carwatch/hits/{alert}"), LONG, |_| true)
            .unwrap_or_else(|| panic!("no {alert} hit\n{}", watcher.logs()));
        let h = hit.json();
        assert_eq!(h["camera"], cam, "{h}");
        assert_eq!(h["region"]["name"], region, "{h}");
        assert_eq!(h["region"]["x"], x, "{h}");
    }
    // The MQTT snapshot is the vehicle (half the street's width, with margins clipped at
    // the frame), scaled to 60 pixels high; the file keeps the whole frame.
    let jpeg = sub
        .wait_for("carwatch/cameras/street/snapshot", LONG, |_| true)
        .unwrap_or_else(|| panic!("no street snapshot\n{}", watcher.logs()));
    let img = image::load_from_memory_with_format(&jpeg.bytes, image::ImageFormat::Jpeg).expect("a JPEG");
    assert_eq!(img.height(), 60);
    assert!(img.width() < 60 * 2 * W / H, "{}x{} is not a crop of the {}x{H} street", img.width(), img.height(), 2 * W);
    sub.collect_for(Duration::from_secs(1));
    for m in sub.seen.iter().filter(|m| m.topic.starts_with("carwatch/hits/")) {
        let h = m.json();
        let expected = match h["alert_id"].as_str().unwrap() {
            "q7" => ("street", "left"),
            "xc90" => ("street", "right"),
            _ => ("gate", "frame"),
        };
        assert_eq!((h["camera"].as_str().unwrap(), h["region"]["name"].as_str().unwrap()), expected, "{h}");
    }
}

#[test]
fn an_expired_alert_stops_producing_hits() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/gate".into(), single("angled", "volvo", "s60"))], 0, None).unwrap();
    // Train (once per process) before the clock starts: training can take longer than
    // the alert's lifetime.
    let _ = trained();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(12);
    let alerts = format!("[[alert]]\nid = \"s60\"\nmake = \"volvo\"\nmodel = \"s60\"\nexpires = \"{expires}\"\n");
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/gate"), ""))
        .alerts(&alerts)
        .matcher("confirm_frames = 1\ncooldown_s = 0.5")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/s60", LONG, |_| true).is_some(), "no hit before expiry\n{}", watcher.logs());
    // After expiry the active list empties and hits stop.
    let emptied = sub.wait_for("carwatch/alerts/active", Duration::from_secs(30), |m| {
        m.json().as_array().is_some_and(|a| a.is_empty())
    });
    assert!(emptied.is_some(), "alerts/active never emptied\n{}", watcher.logs());
    let expired_at = std::time::Instant::now();
    sub.collect_for(Duration::from_secs(4));
    let late: Vec<_> = sub.on("carwatch/hits/s60").into_iter().filter(|m| m.at > expired_at).collect();
    assert!(late.is_empty(), "{} hit(s) after expiry", late.len());
    let before = sub.on("carwatch/hits/s60").len();
    assert!(before >= 2, "a steady stream with a 0.5 s cooldown gave only {before} hit(s) before expiry");
}

#[test]
fn a_steady_stream_gives_one_hit_per_cooldown_not_one_per_frame() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/gate".into(), single("rear", "audi", "tt"))], 0, None).unwrap();
    let alerts = "[[alert]]\nid = \"tt\"\nmake = \"audi\"\nmodel = \"tt\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/gate"), ""))
        .alerts(alerts)
        .matcher("confirm_frames = 3\nconfirm_window_s = 10\ncooldown_s = 4")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let first =
        sub.wait_for("carwatch/hits/tt", LONG, |_| true).unwrap_or_else(|| panic!("no hit\n{}", watcher.logs()));
    sub.collect_for(Duration::from_secs(10));
    let hits: Vec<serde_json::Value> = sub.on("carwatch/hits/tt").iter().map(|m| m.json()).collect();
    let analysed = sub
        .on("carwatch/cameras/gate/status")
        .last()
        .map(|m| m.json()["fps_analysed"].as_f64().unwrap_or(0.0))
        .unwrap_or(0.0);
    // ~10 s after the first hit with a 4 s cooldown: 2 or 3 hits, while ~40 frames matched.
    assert!((2..=3).contains(&hits.len()), "{} hits in ~10 s (analysing {analysed} fps)", hits.len());
    let times: Vec<jiff::Timestamp> = hits.iter().map(|h| h["time"].as_str().unwrap().parse().unwrap()).collect();
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]).as_secs_f64();
        assert!(gap >= 3.9, "hits {gap:.2} s apart, cooldown is 4 s");
    }
    assert!(hits.iter().all(|h| h["frames"] == 3), "each hit is confirmed by 3 frames: {hits:?}");
    assert_eq!(first.json()["frames"], 3);
}

#[test]
fn with_no_mqtt_section_the_embedded_broker_carries_hits() {
    let dir = support::tempdir();
    let port = free_port();
    let rtsp = RtspServer::start(vec![("/gate".into(), single("front", "volvo", "xc90"))], 0, None).unwrap();
    let alerts = "[[alert]]\nid = \"xc90\"\nmake = \"volvo\"\nmodel = \"xc90\"\n";
    let config = Scenario::new(dir.path())
        .embedded_broker(port)
        .cameras(&camera("gate", &rtsp.url("/gate"), ""))
        .alerts(alerts)
        .matcher("confirm_frames = 2")
        .write();
    let watcher = Watcher::start(&config);
    let mut sub = Subscriber::connect(port, "carwatch/#");
    let hit = sub.wait_for("carwatch/hits/xc90", LONG, |_| true);
    assert!(hit.is_some(), "no hit through the embedded broker\n{}", watcher.logs());
    assert!(watcher.logs().contains("embedded MQTT broker"), "the log must say the embedded broker is in use");
}
