//! Wide views: vehicles that do not fill the frame are located, tracked and decided one
//! by one, with `locate = "motion"` (the default) and with a TorchScript detector.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carwatch::locate::Bounds;
use carwatch::locate::detector::{Detector, DetectorConfig};
use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;

use crate::support::daemon::{Scenario, Watcher};
use crate::support::mqtt::{Mosquitto, Subscriber, free_port};
use crate::support::{self, carwatch, run, stdout};

pub(crate) const WIDTH: u32 = 1280;
pub(crate) const HEIGHT: u32 = 720;

/// A street where the wanted BMW and then a Volvo cross, in turn, 12 s a pass.
pub(crate) const STREET: &str = "street; 5:angled/bmw/3-series@-0.24,0.42,0.24,0.42>1,0.42; 1:; \
                      5:angled/volvo/xc90@-0.24,0.42,0.24,0.42>1,0.42; 1:";
pub(crate) const PERIOD: f64 = 12.0;

/// The test detector (tests/support/make_detector.py), written with the project's venv.
fn detector_file(dir: &Path, wrong_shape: bool) -> PathBuf {
    let out = dir.join(if wrong_shape { "transposed.pt" } else { "detector.pt" });
    let mut cmd = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"));
    cmd.args(["-W", "ignore", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/make_detector.py")]).arg(&out);
    if wrong_shape {
        cmd.arg("--wrong-shape");
    }
    let o = run(cmd, Duration::from_secs(120));
    assert!(o.status.success(), "make_detector.py: {}", support::stderr(&o));
    out
}

fn detector_config(file: &Path) -> DetectorConfig {
    toml::from_str(&format!(
        "file = \"{}\"\ninput = 640\nclasses = [2]\nmin_score = 0.5\nnms_iou = 0.5",
        file.display()
    ))
    .unwrap()
}

#[test]
fn the_test_detector_boxes_vehicles_in_frame_pixels_through_the_letterbox() {
    let dir = support::tempdir();
    let detector = Detector::load(&detector_config(&detector_file(dir.path(), false)), tch::Device::Cpu).unwrap();
    let scene = Scene::parse(STREET, WIDTH, HEIGHT, 10).unwrap();
    // Frames 10, 25 and 40: the BMW a fifth, half and four fifths of the way across.
    let frames: Vec<_> = [10u64, 25, 40].iter().map(|&n| scene.frame(n)).collect();
    let inputs: Vec<(&[u8], u32, u32)> =
        frames.iter().map(|(img, _)| (img.as_raw().as_slice(), WIDTH, HEIGHT)).collect();
    let found = detector.detect(&inputs).unwrap();
    for ((_, truth), boxes) in frames.iter().zip(&found) {
        assert_eq!(boxes.len(), 1, "the duplicate anchor is removed by NMS: {boxes:?}");
        let iou = boxes[0].bounds.iou(&truth[0].bounds);
        assert!(iou >= 0.5, "box {:?} against truth {:?}: IoU {iou}", boxes[0].bounds, truth[0].bounds);
        assert_eq!((boxes[0].class, boxes[0].score), (2, 0.9));
    }
    assert!(found[0][0].bounds.x < found[1][0].bounds.x && found[1][0].bounds.x < found[2][0].bounds.x);
}

#[test]
fn a_detector_that_is_missing_or_answers_in_another_shape_is_refused_at_start() {
    let dir = support::tempdir();
    let transposed = detector_file(dir.path(), true);
    for (file, expected) in [
        (transposed.clone(), vec!["transposed.pt".to_string(), "[1, 3, 12]".to_string()]),
        (dir.path().join("absent.pt"), vec!["absent.pt".to_string(), "no such file".to_string()]),
    ] {
        let config = Scenario::new(dir.path())
            .embedded_broker(free_port())
            .cameras("[[camera]]\nname = \"street\"\nurl = \"rtsp://127.0.0.1:9/x\"\nlocate = \"detector\"\n")
            .section(&format!("[detector]\nfile = \"{}\"\nclasses = [2]", file.display()))
            .write();
        let mut cmd = carwatch();
        cmd.arg("check").arg("--config").arg(&config);
        let o = run(cmd, Duration::from_secs(60));
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(2), "{out}");
        for e in &expected {
            assert!(out.contains(e.as_str()), "`check` must say {e}:\n{out}");
        }
        // `watch` refuses it at start-up too, before any frame.
        let mut cmd = carwatch();
        cmd.arg("watch").arg("--config").arg(&config);
        let o = run(cmd, Duration::from_secs(60));
        let err = support::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(expected[0].as_str()) && err.contains(expected[1].as_str()), "{err}");
    }
}

#[test]
fn a_wanted_vehicle_crossing_a_street_is_hit_once_per_passage_by_motion() {
    passages(4, "", "");
}

#[test]
fn a_wanted_vehicle_crossing_a_street_is_hit_once_per_passage_by_the_detector_at_one_frame_a_second() {
    let dir = support::tempdir();
    let file = detector_file(dir.path(), false);
    // At 1 frame a second the BMW's consecutive boxes do not overlap: it still makes
    // one track (and one hit) per passage. The same happens at any rate when the
    // worker falls behind and analyses a camera's frames far apart.
    passages(1, "locate = \"detector\"\n", &format!("[detector]\nfile = \"{}\"\nclasses = [2]", file.display()));
}

/// A 1280x720 street camera with no regions analysed `fps` times a second, `extra` in
/// its table: the BMW alert is hit exactly once for each of three passages of the BMW,
/// each time with a box on the BMW in the snapshot, and never for the Volvo.
fn passages(fps: u32, extra: &str, sections: &str) {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let scene = Scene::parse(STREET, WIDTH, HEIGHT, 10).unwrap();
    let rtsp = RtspServer::start(vec![("/street".into(), scene)], 0, None).unwrap();
    let alerts = "[[alert]]\nid = \"bmw3\"\nmake = \"bmw\"\nmodel = \"3-series\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&format!("[[camera]]\nname = \"street\"\nurl = \"{}\"\nfps = {fps}\n{extra}\n", rtsp.url("/street")))
        .alerts(alerts)
        .matcher("confirm_frames = 2\ncooldown_s = 1")
        .section(sections)
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let first = sub
        .wait_for("carwatch/hits/bmw3", Duration::from_secs(120), |_| true)
        .unwrap_or_else(|| panic!("no hit\n{}", watcher.logs()));
    // Two more passages, and a little more.
    sub.collect_for(Duration::from_secs_f64(2.5 * PERIOD));
    let hits: Vec<serde_json::Value> = sub.on("carwatch/hits/bmw3").iter().map(|m| m.json()).collect();
    assert_eq!(first.json()["hit_id"], hits[0]["hit_id"]);
    assert_eq!(hits.len(), 3, "one hit per passage, three passages: {hits:#?}\n{}", watcher.logs());
    let secs = |h: &serde_json::Value| h["time"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
    for pair in hits.windows(2) {
        let gap = (secs(&pair[1]) - secs(&pair[0])) as f64 / 1000.0;
        assert!((PERIOD - 3.0..=PERIOD + 3.0).contains(&gap), "hits {gap} s apart; passages are {PERIOD} s apart");
        assert_ne!(pair[0]["track_id"], pair[1]["track_id"]);
    }
    for h in &hits {
        assert!(h["region"].is_null(), "{h}");
        assert_eq!(h["colour"], "blue", "{h}");
        assert!(h["observations"].as_u64().unwrap() >= 2, "{h}");
        assert!(h["first_seen"].as_str().unwrap() <= h["time"].as_str().unwrap());
        let b = &h["box"];
        let reported = Bounds {
            x: b["x"].as_u64().unwrap() as u32,
            y: b["y"].as_u64().unwrap() as u32,
            width: b["width"].as_u64().unwrap() as u32,
            height: b["height"].as_u64().unwrap() as u32,
        };
        let snapshot = image::open(h["snapshot"].as_str().unwrap()).unwrap().to_rgb8();
        assert_eq!((snapshot.width(), snapshot.height()), (WIDTH, HEIGHT));
        let (truth, blue) = vehicle_in(&snapshot, &reported);
        let iou = reported.iou(&truth);
        assert!(iou >= 0.5, "box {reported:?}, vehicle in the snapshot {truth:?}: IoU {iou:.2}\n{h}");
        assert!(blue, "the snapshot's vehicle is the blue BMW, not the yellow Volvo\n{h}");
    }
}

/// The vehicle in a snapshot: the box around the pixels that differ from the empty
/// street, leaving out a band along the drawn outline of `drawn`; and whether its body
/// is mostly blue.
fn vehicle_in(snapshot: &image::RgbImage, drawn: &Bounds) -> (Bounds, bool) {
    let street = carwatch::synthetic::street(WIDTH, HEIGHT);
    let near_outline = |x: u32, y: u32| {
        let (x0, y0, x1, y1) = (drawn.x, drawn.y, drawn.x + drawn.width, drawn.y + drawn.height);
        let inside_band = |v: u32, lo: u32, hi: u32| v + 10 >= lo && v <= hi + 10;
        inside_band(x, x0, x1)
            && inside_band(y, y0, y1)
            && (x.abs_diff(x0) <= 10 || x.abs_diff(x1) <= 10 || y.abs_diff(y0) <= 10 || y.abs_diff(y1) <= 10)
    };
    let (mut cols, mut rows) = (vec![0u32; WIDTH as usize], vec![0u32; HEIGHT as usize]);
    let (mut blue, mut yellow) = (0u32, 0u32);
    for (x, y, px) in snapshot.enumerate_pixels() {
        if near_outline(x, y) {
            continue;
        }
        let i = ((y * WIDTH + x) * 3) as usize;
        if px.0.iter().zip(&street[i..i + 3]).any(|(a, b)| a.abs_diff(*b) > 40) {
            cols[x as usize] += 1;
            rows[y as usize] += 1;
            let [r, g, b] = px.0.map(i32::from);
            blue += u32::from(b > r + 60 && b > g + 40);
            yellow += u32::from(r > b + 60 && g > b + 60);
        }
    }
    // Rows and columns with a few differing pixels: compression noise is not a vehicle.
    let span = |v: &[u32]| {
        let first = v.iter().position(|&n| n >= 4).unwrap_or(0) as u32;
        let last = v.iter().rposition(|&n| n >= 4).unwrap_or(0) as u32;
        (first, last.saturating_sub(first) + 1)
    };
    let ((x, width), (y, height)) = (span(&cols), span(&rows));
    (Bounds { x, y, width, height }, blue > 4 * yellow.max(1))
}
