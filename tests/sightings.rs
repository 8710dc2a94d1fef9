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
        (vec!["--colour", "teal"], "invalid value 'teal' for '--colour"),
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
        crate::watch::assert_matches_schema(h);
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

/// A generated photo of `view/make/model`, as a witness might give one.
fn photo(dir: &std::path::Path, name: &str, (view, make, model): (&str, &str, &str), seed: u64) -> String {
    let class = carwatch::synthetic::class(view, make, model).unwrap();
    let img = carwatch::synthetic::render(&class, &mut carwatch::synthetic::rng(seed), 224, 224);
    let path = dir.join(name);
    img.save(&path).unwrap();
    name.to_string()
}

#[test]
fn alerts_by_example_photo_and_by_colour_hit_their_vehicle_and_not_the_other() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let (_rtsp, camera) = street();
    // Photos relative to the alert file: a BMW 3 Series seen from the front (the street
    // shows it angled), and one that cannot be read.
    let bmw = photo(dir.path(), "suspect.png", ("front", "bmw", "3-series"), 7);
    std::fs::write(dir.path().join("blurred.jpg"), b"not a jpeg").unwrap();
    let alerts = format!(
        "[[alert]]\nid = \"photo\"\nexample = \"{bmw}\"\nmin_similarity = 0.2\n\n\
         [[alert]]\nid = \"yellow\"\ncolour = \"yellow\"\n\n\
         [[alert]]\nid = \"broken\"\nexample = [\"{bmw}\", \"blurred.jpg\"]\n"
    );
    let config = Scenario::new(dir.path()).mqtt(broker.port).cameras(&camera).alerts(&alerts).write();
    // `check` names the photo that cannot be read, at its line, and says what the good one shows.
    let mut cmd = carwatch();
    cmd.arg("check").arg("--config").arg(&config);
    let o = run(cmd, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stdout(&o).contains("blurred.jpg") && stdout(&o).contains("alerts.toml:12:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("alert photo: the example shows blue bmw 3-series"), "{}", stdout(&o));

    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    // The broken alert alone is refused, on errors; the others are in force, derived.
    let error = sub
        .wait_for("carwatch/errors", Duration::from_secs(60), |m| {
            m.json()["message"].as_str().unwrap().contains("blurred")
        })
        .unwrap_or_else(|| panic!("no error for the unreadable photo\n{}", watcher.logs()))
        .json();
    assert!(error["message"].as_str().unwrap().contains("alert `broken` is not in force"), "{error}");
    let active = sub
        .wait_for("carwatch/alerts/active", Duration::from_secs(30), |m| {
            m.json().as_array().is_some_and(|a| a.len() == 2)
        })
        .expect("two alerts in force")
        .json();
    let derived = active.as_array().unwrap().iter().find(|a| a["id"] == "photo").unwrap();
    assert_eq!(derived["derived"]["make"], "bmw", "{derived}");
    assert_eq!(derived["derived"]["model"], "3-series", "{derived}");
    assert_eq!(derived["derived"]["colour"], "blue", "{derived}");
    assert_eq!(derived["make"], serde_json::Value::Null, "not written by the operator");

    // The BMW passes, then the (yellow) Volvo: each alert hits its own vehicle only.
    let photo_hit = sub
        .wait_for("carwatch/hits/photo", Duration::from_secs(120), |_| true)
        .unwrap_or_else(|| panic!("the photo alert never hit\n{}", watcher.logs()))
        .json();
    assert_eq!((photo_hit["make"].as_str(), photo_hit["model"].as_str()), (Some("bmw"), Some("3-series")));
    let similarity = photo_hit["similarity"].as_f64().expect("a similarity");
    assert!((0.2..=1.0001).contains(&similarity), "{photo_hit}");
    let yellow = sub
        .wait_for("carwatch/hits/yellow", Duration::from_secs(120), |_| true)
        .unwrap_or_else(|| panic!("the colour alert never hit\n{}", watcher.logs()))
        .json();
    assert_eq!((yellow["make"].as_str(), yellow["colour"].as_str()), (Some("volvo"), Some("yellow")), "{yellow}");
    assert_eq!(yellow["similarity"], serde_json::Value::Null);
    sub.collect_for(Duration::from_secs(3));
    for h in sub.on("carwatch/hits/photo") {
        assert_eq!(h.json()["make"], "bmw", "the photo alert hit another car: {}", h.json());
    }
    for h in sub.on("carwatch/hits/yellow") {
        assert_eq!(h.json()["colour"], "yellow", "{}", h.json());
    }
    assert!(sub.on("carwatch/hits/broken").is_empty());
}
