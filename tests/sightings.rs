//! Sightings: tracked vehicles remembered in SQLite, and `carwatch search` reading them
//! from another process while `watch` runs.

use std::time::{Duration, Instant};

use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;

use crate::support::daemon::{Scenario, Watcher};
use crate::support::mqtt::{Mosquitto, Subscriber};
use crate::support::{self, carwatch, run, stdout};
use crate::wide::{HEIGHT, STREET, WIDTH};

/// The street of the wide-view tests on an RTSP server, and a `[[camera]]` (motion, 4
/// fps) watching it.
fn street() -> (RtspServer, String) {
    let rtsp =
        RtspServer::start(vec![("/street".into(), Scene::parse(STREET, WIDTH, HEIGHT, 10).unwrap())], 0, None).unwrap();
    let camera = format!("[[camera]]\nname = \"street\"\nurl = \"{}\"\nfps = 4\n", rtsp.url("/street"));
    (rtsp, camera)
}

#[test]
fn vehicles_are_remembered_and_searched_while_watch_runs() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let (_rtsp, camera) = street();
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera)
        .alerts("[[alert]]\nid = \"bmw3\"\nmake = \"bmw\"\nmodel = \"3-series\"\n")
        .matcher("confirm_frames = 2")
        .section("[sightings]\npublish = true")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let hit = sub
        .wait_for("carwatch/hits/bmw3", Duration::from_secs(120), |_| true)
        .unwrap_or_else(|| panic!("no hit\n{}", watcher.logs()))
        .json();
    // The BMW's track ends a little after it leaves (track_lost_s); its row follows.
    let search = |args: &[&str]| {
        let mut cmd = carwatch();
        cmd.arg("search").arg("--config").arg(&config).args(args);
        run(cmd, Duration::from_secs(30))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows: Vec<serde_json::Value> = loop {
        let o = search(&["--make", "bmw", "--model", "3-series", "--since", "1h", "--json"]);
        assert!(o.status.success(), "{}", support::stderr(&o));
        let rows: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if rows.iter().any(|r| r["track_id"] == hit["track_id"]) {
            break rows;
        }
        assert!(Instant::now() < deadline, "the hit's vehicle was never remembered: {rows:?}\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(500));
    };
    let row = rows.iter().find(|r| r["track_id"] == hit["track_id"]).unwrap();
    assert_eq!(
        (row["camera"].as_str(), row["make"].as_str(), row["model"].as_str()),
        (Some("street"), Some("bmw"), Some("3-series"))
    );
    assert!(row["confidence"].as_f64().unwrap() >= 0.5, "{row}");
    assert_eq!(row["colour"], "blue", "the synthetic BMW is painted blue: {row}");
    assert!(row["first_seen"].as_str().unwrap() <= hit["time"].as_str().unwrap(), "{row} {hit}");
    assert!(row["time"].as_str().unwrap() >= hit["time"].as_str().unwrap(), "last seen after the hit: {row}");
    let thumb = row["thumbnail"].as_str().expect("a thumbnail");
    let img = image::open(thumb).unwrap_or_else(|e| panic!("thumbnail {thumb}: {e}"));
    assert!(img.width() <= 160 && img.height() <= 160 && img.width() > 16, "{}x{}", img.width(), img.height());
    // With publish = true each sighting also went to the broker, without its thumbnail.
    let published = sub
        .wait_for("carwatch/sightings/street", Duration::from_secs(30), |m| m.json()["track_id"] == hit["track_id"])
        .expect("the BMW's sighting on carwatch/sightings/street")
        .json();
    assert_eq!((published["make"].as_str(), published["colour"].as_str()), (Some("bmw"), Some("blue")));
    assert!(published.get("thumbnail").is_none(), "{published}");
    // The Volvo, which passes next, is remembered too, and is not found as a BMW.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = search(&["--json", "--limit", "0"]);
        let all: Vec<serde_json::Value> = stdout(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if all.iter().any(|r| r["make"] == "volvo") {
            break;
        }
        assert!(Instant::now() < deadline, "the Volvo was never remembered: {all:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let yellow = search(&["--colour", "yellow", "--json", "--limit", "0"]);
    assert!(
        stdout(&yellow).lines().any(|l| l.contains("\"make\":\"volvo\"")),
        "the Volvo is yellow: {}",
        stdout(&yellow)
    );
    assert!(!stdout(&yellow).contains("\"make\":\"bmw\""));
    let bmw = search(&["--make", "bmw", "--json", "--limit", "0"]);
    assert!(stdout(&bmw).lines().all(|l| l.contains("\"make\":\"bmw\"")), "{}", stdout(&bmw));
    // The table form.
    let o = search(&["--make", "bmw"]);
    let table = stdout(&o);
    assert!(o.status.success() && table.contains("bmw 3-series") && table.contains("street"), "{table}");
    // What is wrong with a search is said, with exit status 2.
    for (args, says) in [
        (vec!["--make", "tesla"], "unknown make `tesla`"),
        (vec!["--since", "yesterday"], "--since"),
        (vec!["--model", "x5"], "--model needs --make"),
        (vec!["--colour", "teal"], "unknown colour `teal`"),
    ] {
        let o = search(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(support::stderr(&o).contains(says), "{args:?}: {}", support::stderr(&o));
    }
}

#[test]
fn an_alert_added_after_the_vehicle_passed_hits_it_retrospectively_once() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let (rtsp, camera) = street();
    let audi = "[[alert]]\nid = \"audi\"\nmake = \"audi\"\n";
    let config = Scenario::new(dir.path()).mqtt(broker.port).cameras(&camera).alerts(audi).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    // What the alert will ask for: the live rule's min_confidence (0.6 by default) and
    // confirm_frames (2) looks.
    let search = || {
        let mut cmd = carwatch();
        cmd.arg("search").arg("--config").arg(&config);
        cmd.args(["--make", "bmw", "--model", "3-series", "--min-confidence", "0.6", "--json"]);
        let o = run(cmd, Duration::from_secs(30));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r["observations"].as_u64().unwrap() >= 2)
            .collect::<Vec<serde_json::Value>>()
    };
    // The BMW passes while no alert asks for it, and is remembered.
    let deadline = Instant::now() + Duration::from_secs(150);
    while search().is_empty() {
        assert!(Instant::now() < deadline, "the BMW was never remembered\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The camera goes away; then the alert is added.
    rtsp.stop();
    std::thread::sleep(Duration::from_secs(3)); // let the last track end and be stored
    let passed = search();
    let edited = jiff::Timestamp::now();
    let alerts = dir.path().join("alerts.toml");
    let tmp = dir.path().join("alerts.toml.tmp");
    std::fs::write(&tmp, format!("{audi}\n[[alert]]\nid = \"bmw3\"\nmake = \"bmw\"\nmodel = \"3-series\"\n")).unwrap();
    std::fs::rename(&tmp, &alerts).unwrap();
    let first = sub
        .wait_for("carwatch/hits/bmw3", Duration::from_secs(90), |_| true)
        .unwrap_or_else(|| panic!("no retrospective hit for {passed:?}\n{}", watcher.logs()))
        .json();
    sub.collect_for(Duration::from_secs(5));
    let hits: Vec<serde_json::Value> = sub.on("carwatch/hits/bmw3").iter().map(|m| m.json()).collect();
    assert_eq!(hits[0]["hit_id"], first["hit_id"]);
    let mut tracks: Vec<u64> = hits.iter().map(|h| h["track_id"].as_u64().unwrap()).collect();
    tracks.sort();
    let mut expected: Vec<u64> = passed.iter().map(|r| r["track_id"].as_u64().unwrap()).collect();
    expected.sort();
    assert_eq!(tracks, expected, "each remembered BMW exactly once: {hits:#?}");
    for h in &hits {
        assert_eq!(h["retrospective"], true, "{h}");
        assert_eq!(
            (h["make"].as_str(), h["model"].as_str(), h["camera"].as_str()),
            (Some("bmw"), Some("3-series"), Some("street"))
        );
        let seen: jiff::Timestamp = h["time"].as_str().unwrap().parse().unwrap();
        assert!(seen < edited, "dated when it passed, before the alert: {h}");
        assert!(h["confidence"].as_f64().unwrap() >= 0.6, "{h}");
        let snapshot = h["snapshot"].as_str().expect("the thumbnail is the snapshot");
        assert!(image::open(snapshot).is_ok(), "{snapshot}");
    }
    assert!(sub.on("carwatch/hits/audi").is_empty(), "the Volvo and the BMW are not Audis");
}
