//! Performance features that must not change answers: reduced precision, keyframe-only
//! decoding, motion gating, decoder choice; and `bench` in its short mode.

use std::process::Output;
use std::time::Duration;

use carwatch::model::{DeviceChoice, Placement, Precision, PrecisionChoice, Recognizer, int8};
use carwatch::synthetic::rtsp::RtspServer;
use carwatch::synthetic::video::Scene;

use crate::support::daemon::{H, Scenario, W, Watcher, camera, single};
use crate::support::mqtt::{Message, Mosquitto, Subscriber};
use crate::support::{self, carwatch, run, stderr, stdout, trained};

const LONG: Duration = Duration::from_secs(60);

/// Held-out photos (`per_class` of every class), classified with the models in
/// `models` at `precision`.
fn classify_held_out(
    models: &std::path::Path,
    per_class: usize,
    precision: Precision,
) -> Vec<carwatch::model::Prediction> {
    classify_held_out_on(models, per_class, tch::Device::Cpu, precision)
}

fn classify_held_out_on(
    models: &std::path::Path,
    per_class: usize,
    device: tch::Device,
    precision: Precision,
) -> Vec<carwatch::model::Prediction> {
    let dir = support::tempdir();
    let held = carwatch::synthetic::write_dataset(dir.path(), per_class, 31337, 128).unwrap();
    let images: Vec<image::RgbImage> = held.iter().map(|s| image::open(&s.path).unwrap().to_rgb8()).collect();
    let r = Recognizer::load(models, Placement { device, precision }).unwrap();
    let mut out = Vec::new();
    for chunk in images.chunks(16) {
        let views = carwatch::model::preprocess::whole(chunk);
        out.extend(r.classify(&views).unwrap());
    }
    out
}

/// `other` gives fp32's answer on at least 98% of the photos fp32 decided. Where fp32's
/// own first two answers are within [`int8::TIE_MARGIN`] (a coin flip: seen here as
/// 0.449 against 0.449 for two models), any rounding may pick the other one, and one
/// such flip among a few dozen photos would otherwise fail the test on its own.
fn assert_agrees(name: &str, fp32: &[carwatch::model::Prediction], other: &[carwatch::model::Prediction]) {
    let c = int8::compare(fp32, other);
    assert!(
        c.agreement_beyond_ties() >= 0.98,
        "{name} agrees with fp32 on {:.1}% of {} held-out photos, {:.1}% of the {} fp32 decided ({} near ties)",
        c.agreement() * 100.0,
        c.photos,
        c.agreement_beyond_ties() * 100.0,
        c.photos - c.near_ties,
        c.near_ties
    );
    eprintln!("{name}: {c:?}");
}

#[test]
fn bf16_gives_fp32_answers() {
    let t = trained();
    let fp32 = classify_held_out(&t.models, 4, Precision::Fp32);
    let bf16 = classify_held_out(&t.models, 4, Precision::Bf16);
    assert_agrees("bf16", &fp32, &bf16);
    // Tolerance: the path's confidence moves by less than 0.05 on average.
    let drift: f32 =
        fp32.iter().zip(&bf16).map(|(a, b)| (a.confidence() - b.confidence()).abs()).sum::<f32>() / fp32.len() as f32;
    assert!(drift < 0.05, "mean confidence drift {drift}");
}

#[test]
fn int8_gives_fp32_answers_on_the_vgg19_shape_and_auto_uses_it() {
    let t = crate::support::trained_vgg19();
    let manifest = carwatch::model::Manifest::load(&t.models).unwrap();
    let recorded = manifest.backbone.int8_agreement.unwrap_or(0.0);
    assert!(
        manifest.int8_path().is_some_and(|p| p.exists()),
        "train --int8 wrote no int8 backbone:\n{}",
        t.train_stdout
    );
    assert!(recorded >= int8::MIN_AGREEMENT, "train measured int8 agreement {recorded}:\n{}", t.train_stdout);
    // An independent check on photos training never saw.
    let fp32 = classify_held_out(&t.models, 2, Precision::Fp32);
    let q = classify_held_out(&t.models, 2, Precision::Int8);
    assert_agrees("int8", &fp32, &q);
    let drift: f32 =
        fp32.iter().zip(&q).map(|(a, b)| (a.confidence() - b.confidence()).abs()).sum::<f32>() / fp32.len() as f32;
    assert!(drift < 0.05, "mean confidence drift {drift}");
    // precision = "auto" on the CPU picks it, and says so.
    let dir = support::tempdir();
    let photo = carwatch::synthetic::write_dataset(dir.path(), 1, 5, 128).unwrap().remove(0);
    let mut cmd = carwatch();
    cmd.env("RUST_LOG", "info")
        .arg("classify")
        .arg("--models")
        .arg(&t.models)
        .args(["--device", "cpu", "--precision", "auto", "--json"])
        .arg(&photo.path);
    let o = run(cmd, Duration::from_secs(120));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("precision int8"), "{}", stderr(&o));
}

#[test]
fn fp16_on_cuda_gives_fp32_answers() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIPPED fp16_on_cuda_gives_fp32_answers: no CUDA device on this machine");
        return;
    }
    let t = trained();
    let fp32 = classify_held_out(&t.models, 4, Precision::Fp32);
    let fp16 = classify_held_out_on(&t.models, 4, tch::Device::Cuda(0), Precision::Fp16);
    assert_agrees("CUDA fp16", &fp32, &fp16);
    // Tolerance: the path's confidence moves by less than 0.05 on average.
    let drift: f32 =
        fp32.iter().zip(&fp16).map(|(a, b)| (a.confidence() - b.confidence()).abs()).sum::<f32>() / fp32.len() as f32;
    assert!(drift < 0.05, "mean confidence drift {drift}");
}

#[test]
fn the_fused_cuda_forward_matches_the_plain_one() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIPPED the_fused_cuda_forward_matches_the_plain_one: no CUDA device on this machine");
        return;
    }
    let t = trained();
    let placement = Placement::resolve(DeviceChoice::Cuda(0), PrecisionChoice::Exactly(Precision::Fp16)).unwrap();
    let mut b = carwatch::model::Backbone::load(&t.backbone, None, placement).unwrap();
    let x = tch::Tensor::randn([4, 3, 224, 224], (tch::Kind::Float, tch::Device::Cuda(0)));
    let fused = b.features(&x).unwrap().to_kind(tch::Kind::Float);
    b.set_fused(false);
    let plain = b.features(&x).unwrap().to_kind(tch::Kind::Float);
    let rel = (&fused - &plain).norm().double_value(&[]) / plain.norm().double_value(&[]).max(1e-9);
    assert!(rel < 0.01, "fused and plain differ by {rel} (relative L2)");
}

fn status(sub: &mut Subscriber, camera: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    sub.wait_for(&format!("carwatch/cameras/{camera}/status"), LONG, |m: &Message| pred(&m.json())).map(|m| m.json())
}

/// Two cameras showing a Volvo C30 at 10 fps with a keyframe every second (the
/// synthetic encoder's GOP is 1 s), `cameras` writing their TOML from the two URLs, and
/// the c30 alert on `alerted` only; the watcher started and a subscriber on everything.
fn two_c30_cameras(
    cameras: impl Fn(&str, &str) -> String,
    alerted: &str,
) -> (tempfile::TempDir, Mosquitto, RtspServer, Subscriber, Watcher) {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let c30 = || single("front", "volvo", "c30");
    let rtsp = RtspServer::start(vec![("/a".into(), c30()), ("/b".into(), c30())], 0, None).unwrap();
    let alerts = format!("[[alert]]\nid = \"c30\"\nmake = \"volvo\"\nmodel = \"c30\"\ncameras = [\"{alerted}\"]\n");
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&cameras(&rtsp.url("/a"), &rtsp.url("/b")))
        .alerts(&alerts)
        .matcher("confirm_frames = 2\ncooldown_s = 60")
        .write();
    let sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    (dir, broker, rtsp, sub, watcher)
}

#[test]
fn keyframe_only_decoding_analyses_keyframes_and_still_hits() {
    let (_dir, _broker, _rtsp, mut sub, watcher) =
        two_c30_cameras(|a, b| camera("key", a, "decode = \"keyframes\"") + &camera("all", b, ""), "key");
    let hit = sub.wait_for("carwatch/hits/c30", LONG, |_| true);
    assert!(hit.is_some(), "no hit from the keyframe-only camera\n{}", watcher.logs());
    // Rates are measured over a status interval (1 s in these tests): look at a few.
    sub.collect_for(Duration::from_secs(5));
    let rates = |cam: &str| -> Vec<f64> {
        sub.on(&format!("carwatch/cameras/{cam}/status"))
            .iter()
            .filter_map(|m| m.json()["fps_in"].as_f64())
            .filter(|r| *r > 0.0)
            .collect()
    };
    let (key, all) = (rates("key"), rates("all"));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    assert!(mean(&key) <= 1.5, "keyframe-only camera analyses {key:?} fps; its keyframes come once a second");
    assert!(mean(&all) >= 3.0, "the decode-everything camera analyses {all:?} fps (asked for 4)");
    let last = status(&mut sub, "key", |s| s["skipped_before_decode"].as_u64().unwrap_or(0) > 0)
        .expect("frames dropped before the decoder");
    assert_eq!(last["decode"], "keyframes");
}

#[test]
fn auto_decoding_skips_to_keyframes_only_when_the_analysis_rate_allows() {
    // One camera analyses 1 frame/s (keyframes once a second are enough), the other 4
    // (they are not). Both say `decode = "auto"` (the default).
    let (_dir, _broker, _rtsp, mut sub, watcher) = two_c30_cameras(
        |a, b| {
            format!("[[camera]]\nname = \"slow\"\nurl = \"{a}\"\nfps = 1\nlocate = \"frame\"\n\n")
                + &camera("fast", b, "")
        },
        "slow",
    );
    let slow = status(&mut sub, "slow", |s| s["skipped_before_decode"].as_u64().unwrap_or(0) > 10)
        .unwrap_or_else(|| panic!("the 1 fps camera decodes every frame\n{}", watcher.logs()));
    assert_eq!(slow["decode"], "auto", "{slow}");
    assert_eq!(slow["decoding"], "keyframes", "{slow}");
    let interval = slow["keyframe_interval_s"].as_f64().unwrap_or_default();
    assert!((interval - 1.0).abs() < 0.05, "keyframe interval {interval} s, the encoder's GOP is 1 s: {slow}");
    assert!(
        sub.wait_for("carwatch/hits/c30", LONG, |_| true).is_some(),
        "no hit from keyframes alone\n{}",
        watcher.logs()
    );
    let fast = status(&mut sub, "fast", |s| s["keyframe_interval_s"].as_f64().is_some())
        .unwrap_or_else(|| panic!("the 4 fps camera never measured its keyframes\n{}", watcher.logs()));
    assert_eq!(fast["decoding"], "every frame", "{fast}");
    assert_eq!(fast["skipped_before_decode"], 0, "{fast}");
    assert!(fast["fps_in"].as_f64().unwrap_or(0.0) >= 3.0, "the 4 fps camera gets {fast}");
    assert!(watcher.logs().contains("decoding keyframes only"), "{}", watcher.logs());
}

#[test]
fn b_frames_are_left_undecoded_between_analysed_frames_and_the_camera_still_hits() {
    // 25 fps with two B-frames (nothing refers to them) between reference frames,
    // analysed at 2 fps: every reference frame is decoded, a B-frame only when due.
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let scene = Scene::parse("bframes=2; 3600:front/volvo/c30", W, H, 25).unwrap();
    let rtsp = RtspServer::start(vec![("/b".into(), scene)], 0, None).unwrap();
    let cameras = camera("bee", &rtsp.url("/b"), "").replace("fps = 4", "fps = 2");
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&cameras)
        .alerts("[[alert]]\nid = \"c30\"\nmake = \"volvo\"\nmodel = \"c30\"\n")
        .matcher("confirm_frames = 2\ncooldown_s = 60")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(
        sub.wait_for("carwatch/hits/c30", LONG, |_| true).is_some(),
        "no hit from the decoded reference frames\n{}",
        watcher.logs()
    );
    // Two of every three frames are B-frames, and about 2 of 25 a second are due.
    let s = status(&mut sub, "bee", |s| s["skipped_before_decode"].as_u64().unwrap_or(0) > 40)
        .unwrap_or_else(|| panic!("B-frames are decoded\n{}", watcher.logs()));
    assert_eq!(s["decoding"], "reference frames", "{s}");
    let rates: Vec<f64> = {
        sub.collect_for(Duration::from_secs(4));
        sub.on("carwatch/cameras/bee/status").iter().filter_map(|m| m.json()["fps_in"].as_f64()).collect()
    };
    assert!(rates.iter().rev().take(3).any(|r| *r >= 1.5), "the camera still gets its 2 fps: {rates:?}");
    assert!(watcher.logs().contains("frames nothing refers to"), "{}", watcher.logs());
}

#[test]
fn motion_gating_skips_still_scenes_and_still_hits() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    // Intermittent traffic: a car for 3 s, an empty road for 3 s, and so on.
    let scene = Scene::parse("3:front/audi/q7; 3:", W, H, 10).unwrap();
    let rtsp = RtspServer::start(vec![("/m".into(), scene)], 0, None).unwrap();
    // Motion gating is on by default for `frame` and `regions` cameras.
    let cameras = camera("gate", &rtsp.url("/m"), "");
    let alerts = "[[alert]]\nid = \"q7\"\nmake = \"audi\"\nmodel = \"q7\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&cameras)
        .alerts(alerts)
        .matcher("confirm_frames = 2\ncooldown_s = 1")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(
        sub.wait_for("carwatch/hits/q7", LONG, |_| true).is_some(),
        "no hit with motion gating\n{}",
        watcher.logs()
    );
    sub.collect_for(Duration::from_secs(8));
    let s = sub.on("carwatch/cameras/gate/status").last().map(|m| m.json()).expect("status");
    let skipped = s["motion_skipped"].as_u64().unwrap();
    // ~4 analysed frames per second for ~10 s; only changes of scene need the model.
    assert!(skipped >= 20, "motion gating skipped only {skipped} regions: {s}");
    assert!(sub.on("carwatch/hits/q7").len() >= 2, "hits stopped although the car keeps coming back");
}

#[test]
fn auto_decoding_falls_back_to_software_and_nvdec_without_nvcodec_says_why() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/c".into(), single("rear", "bmw", "x5"))], 0, None).unwrap();
    let cameras =
        camera("auto", &rtsp.url("/c"), "decode = \"auto\"") + &camera("gpu", &rtsp.url("/c"), "decode = \"nvdec\"");
    let config = Scenario::new(dir.path()).mqtt(broker.port).cameras(&cameras).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let nvdec = carwatch::camera::pipeline::nvdec_available();
    let auto = status(&mut sub, "auto", |s| s["state"] == "streaming" && !s["decoder"].is_null())
        .unwrap_or_else(|| panic!("no decoder\n{}", watcher.logs()));
    let decoder = auto["decoder"].as_str().unwrap();
    if nvdec {
        assert!(decoder.starts_with("nv"), "auto did not prefer NVDEC: {decoder}");
    } else {
        assert!(decoder.starts_with("avdec_"), "auto without nvcodec should decode in software, got {decoder}");
        let gpu = status(&mut sub, "gpu", |s| s["state"] == "backing_off")
            .unwrap_or_else(|| panic!("nvdec camera did not fail\n{}", watcher.logs()));
        assert!(gpu["reason"].as_str().unwrap().contains("nvh264dec"), "{gpu}");
    }
}

#[test]
fn bench_short_runs_give_every_field() {
    let t = trained();
    let mut cmd = carwatch();
    cmd.args(["bench", "model", "--quick", "--precision", "fp32", "--json"]);
    let o = run(cmd, Duration::from_secs(300));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        for f in ["device", "precision", "batch", "img_per_s", "ms_per_batch"] {
            assert!(r.get(f).is_some(), "bench model lacks {f}: {r}");
        }
        for f in ["img_per_s", "backbone_img_per_s", "from_frames_img_per_s"] {
            assert!(r[f].as_f64().is_some_and(|v| v > 0.0), "bench model: {f} missing or not positive: {r}");
        }
        assert_eq!(r["cascade"], "random");
    }
    // The same with the test's trained models on generated photos.
    let mut cmd = carwatch();
    cmd.args(["bench", "model", "--quick", "--precision", "fp32", "--json", "--device", "cpu", "--models"])
        .arg(&t.models);
    let o = run(cmd, Duration::from_secs(300));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["cascade"] == t.models.display().to_string() && r["img_per_s"].as_f64() > Some(0.0)));

    let (o, rows): (_, Vec<serde_json::Value>) =
        bench_pipeline(&t.models, &["--cameras", "1", "--fps", "2", "--duration", "3"]);
    let r = &rows[0];
    for f in [
        "cameras",
        "fps",
        "analysed_fps",
        "dropped",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "cpu_ms_per_frame_decode",
        "cpu_ms_per_frame_infer",
        "peak_rss_mb",
        "decoder",
    ] {
        assert!(r.get(f).is_some(), "bench pipeline lacks {f}: {r}");
    }
    assert!(r["analysed_fps"].as_f64().unwrap() > 1.0, "{r}");
    // The Python peer ran on the same camera after carwatch: its figure and the ratio.
    let peer = r["peer_frames_per_s"].as_f64().unwrap_or_else(|| panic!("no peer figure: {r}"));
    assert!(peer > 0.5, "the peer analysed {peer} frames/s of a 2 fps camera: {r}");
    let ratio = r["ratio_to_peer"].as_f64().unwrap_or_else(|| panic!("no ratio: {r}"));
    assert!((ratio - r["analysed_fps"].as_f64().unwrap() / peer).abs() < 1e-9, "{r}");
    assert_eq!(r["peer"]["cameras"].as_object().map(|c| c.len()), Some(1), "{r}");
    assert!(r["latency_ms_p50"].as_f64().unwrap() > 0.0, "{r}");
    // `batch.max_size = "auto"` (the default): the worker measured sizes from 1 up at
    // start-up (stopping early once throughput falls), said so, and uses the one it chose.
    let batch = r["batch_max"].as_u64().unwrap_or(0);
    let log = stderr(&o);
    let line =
        log.lines().find(|l| l.contains("img/s by batch: 1:")).unwrap_or_else(|| panic!("no sizing line:\n{log}"));
    assert!(line.contains(&format!("batch size {batch}:")), "reported batch_max {batch}, log says: {line}");
}

/// `bench pipeline --find-max` on one camera: the wanted vehicle's passage in the span
/// is hit by carwatch (with its defaults: motion, tracks, one decision per vehicle),
/// the peer ran the same count with its own locating, and both are reported.
#[test]
fn bench_find_max_counts_passages_for_carwatch_and_the_peer() {
    let t = trained();
    let (o, r): (_, serde_json::Value) =
        bench_pipeline(&t.models, &["--find-max", "--max-cameras", "1", "--duration", "12"]);
    assert_eq!((r["period_s"].as_f64(), r["seconds"].as_f64()), (Some(12.0), Some(12.0)), "{r}");
    assert!(r["scene"].as_str().unwrap().starts_with("street;"), "{r}");
    let step = &r["carwatch"]["steps"][0];
    assert_eq!((step["cameras"].as_u64(), step["passages"].as_u64()), (Some(1), Some(1)), "{r}");
    let hits = step["hits_per_camera"].as_array().unwrap();
    assert!(
        hits.len() == 1 && hits[0].as_u64() >= Some(1),
        "carwatch missed the passage: {r}\n{}",
        stderr(&o)
            .lines()
            .filter(|l| l.contains("hit") || l.contains("WARN") || l.contains("find-max"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(step["analysed_fps"].as_f64() > Some(0.5), "{r}");
    let kept_up = step["kept_up"].as_bool().unwrap();
    assert_eq!(r["carwatch"]["max_cameras"].as_u64(), Some(kept_up as u64), "{r}");
    assert_eq!(r["carwatch"]["capped"].as_bool(), Some(kept_up), "{r}");
    let peer = &r["peer"]["steps"][0];
    assert_eq!(peer["cameras"].as_u64(), Some(1), "the peer ran on one camera: {r}");
    assert_eq!(peer["hits_per_camera"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(peer["analysed_fps"].as_f64() > Some(0.0), "{r}");
}

/// `carwatch bench pipeline` with `args`, on the CPU with the peer, short warm-up and
/// 10 fps cameras, models from `models`: its output and the JSON it printed.
fn bench_pipeline<T: serde::de::DeserializeOwned>(models: &std::path::Path, args: &[&str]) -> (Output, T) {
    let mut cmd = carwatch();
    cmd.env("RUST_LOG", "carwatch=info");
    cmd.args(["bench", "pipeline", "--warmup", "2", "--source-fps", "10", "--json", "--device", "cpu", "--peer"]);
    cmd.args(args).arg("--models").arg(models);
    let o = run(cmd, Duration::from_secs(300));
    assert!(o.status.success(), "{}", stderr(&o));
    let r = serde_json::from_str(stdout(&o).trim()).unwrap();
    (o, r)
}
