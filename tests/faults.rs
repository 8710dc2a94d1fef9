//! Fault injection: cameras and brokers that fail, alert files edited badly, bad
//! configs, secrets, TLS. Real servers on 127.0.0.1 started by each test; the real
//! binary in between.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use carwatch::synthetic::rtsp::{Credentials, RtspServer};
use serde_json::Value;

use crate::support::daemon::{SIGKILL, SIGTERM, Scenario, Watcher, camera, single, wanted};
use crate::support::mqtt::{Mosquitto, Subscriber, free_port, make_ca, sh};
use crate::support::{self, carwatch, run, stdout, trained, write};

const LONG: Duration = Duration::from_secs(60);

/// A config in `dir` whose one camera points where nothing listens, publishing to the
/// broker on `mqtt_port`: for what happens around the cameras.
fn nowhere(dir: &Path, mqtt_port: u16) -> std::path::PathBuf {
    Scenario::new(dir).mqtt(mqtt_port).cameras(&camera("gate", "rtsp://127.0.0.1:9/x", "")).write()
}

fn state_of(m: &crate::support::mqtt::Message) -> String {
    m.json()["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_camera_that_goes_away_comes_back_while_others_keep_working() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let port = free_port();
    let gate = RtspServer::start(vec![("/a".into(), single("front", "bmw", "3-series"))], port, None).unwrap();
    let yard = RtspServer::start(vec![("/b".into(), single("rear", "audi", "tt"))], 0, None).unwrap();
    let cameras = camera("gate", &gate.url("/a"), "stall_timeout_s = 3") + &camera("yard", &yard.url("/b"), "");
    let alerts = "[[alert]]\nid = \"bmw3\"\nmake = \"bmw\"\nmodel = \"3-series\"\n\n[[alert]]\nid = \"tt\"\nmake = \"audi\"\nmodel = \"tt\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&cameras)
        .alerts(alerts)
        .matcher("confirm_frames = 1\ncooldown_s = 1")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/bmw3", LONG, |_| true).is_some(), "no gate hit\n{}", watcher.logs());
    assert!(sub.wait_for("carwatch/hits/tt", LONG, |_| true).is_some(), "no yard hit\n{}", watcher.logs());

    // The gate camera's server goes away for 15 s.
    gate.stop();
    let down = Instant::now();
    let lost = sub.wait_for("carwatch/cameras/gate/status", Duration::from_secs(20), |m| {
        m.at > down && matches!(state_of(m).as_str(), "stalled" | "backing_off")
    });
    assert!(lost.is_some(), "gate never reported the outage\n{}", watcher.logs());
    sub.collect_for(Duration::from_secs(15).saturating_sub(down.elapsed()));
    let yard_hits_during = sub.on("carwatch/hits/tt").iter().filter(|m| m.at > down).count();
    assert!(yard_hits_during >= 3, "the other camera stopped producing hits during the outage ({yard_hits_during})");

    let gate = RtspServer::start(vec![("/a".into(), single("front", "bmw", "3-series"))], port, None).unwrap();
    let back = Instant::now();
    // Back within 5 s of its return plus the current backoff step (at most 16 s
    // after 15 s of failures, +20% jitter).
    let streaming = sub.wait_for("carwatch/cameras/gate/status", Duration::from_secs(5 + 20), |m| {
        m.at > back && state_of(m) == "streaming"
    });
    assert!(streaming.is_some(), "gate not streaming again\n{}", watcher.logs());
    assert!(
        sub.wait_for("carwatch/hits/bmw3", LONG, |m| m.at > back).is_some(),
        "gate hits did not resume\n{}",
        watcher.logs()
    );
    let states: Vec<String> =
        sub.on("carwatch/cameras/gate/status").iter().filter(|m| m.at > down).map(|m| state_of(m)).collect();
    assert!(states.iter().any(|s| s == "backing_off"), "{states:?}");
    drop(gate);
}

#[test]
fn a_camera_that_accepts_and_then_says_nothing_is_declared_stalled() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rtsp://127.0.0.1:{}/cam", silent.local_addr().unwrap().port());
    // Accept connections and hold them open without a word.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(8) {
            conns.push(c);
        }
    });
    let config =
        Scenario::new(dir.path()).mqtt(broker.port).cameras(&camera("mute", &url, "stall_timeout_s = 3")).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    let connecting =
        sub.wait_for("carwatch/cameras/mute/status", LONG, |m| state_of(m) == "connecting").expect("connecting");
    let stalled = sub.wait_for("carwatch/cameras/mute/status", Duration::from_secs(10), |m| state_of(m) == "stalled");
    let stalled = stalled.unwrap_or_else(|| panic!("never declared stalled\n{}", watcher.logs()));
    let took = stalled.at.duration_since(connecting.at);
    assert!(took <= Duration::from_secs(3 + 2), "stalled after {took:?}; the stall timeout is 3 s");
    assert!(stalled.json()["reason"].as_str().unwrap_or_default().contains("no first frame"), "{}", stalled.payload);
    drop(watcher);
    drop(held);
}

fn printed_ids(w: &Watcher) -> Vec<String> {
    w.printed_hits().iter().map(|h| h["hit_id"].as_str().unwrap().to_string()).collect()
}

fn received(sub: &Subscriber, topic: &str) -> Vec<Value> {
    sub.on(topic).iter().map(|m| m.json()).collect()
}

#[test]
fn hits_survive_a_broker_outage() {
    let dir = support::tempdir();
    let mut broker = Mosquitto::start();
    let (_rtsp, scenario) = wanted(dir.path(), ("rear", "volvo", "c30"), 2);
    let config = scenario.mqtt(broker.port).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/hits/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/c30", LONG, |_| true).is_some(), "no hit\n{}", watcher.logs());

    broker.kill();
    let before = printed_ids(&watcher).len();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let confirmed_while_down = printed_ids(&watcher).len() - before;
    assert!(confirmed_while_down >= 5, "only {confirmed_while_down} hits while the broker was down");
    broker.restart();

    // Every hit confirmed so far arrives.
    let expected: Vec<String> = printed_ids(&watcher);
    let deadline = Instant::now() + LONG;
    loop {
        let got: HashSet<String> =
            received(&sub, "carwatch/hits/c30").iter().map(|h| h["hit_id"].as_str().unwrap().to_string()).collect();
        if expected.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} hits arrived after the broker returned\n{}",
            got.len(),
            expected.len(),
            watcher.logs()
        );
        sub.collect_for(Duration::from_millis(500));
    }
    // Nothing arrived that carwatch did not confirm: duplicates, if any, keep their id.
    sub.collect_for(Duration::from_secs(1));
    let confirmed: HashSet<String> = printed_ids(&watcher).into_iter().collect();
    for h in received(&sub, "carwatch/hits/c30") {
        assert!(confirmed.contains(h["hit_id"].as_str().unwrap()), "unknown hit_id {h}");
    }
}

#[test]
fn hits_pending_in_the_outbox_survive_kill_9() {
    let dir = support::tempdir();
    let mut broker = Mosquitto::start();
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "audi", "a4"), 1);
    let config = scenario.mqtt(broker.port).write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/hits/#");
    let first = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/a4", LONG, |_| true).is_some(), "no hit\n{}", first.logs());

    broker.kill();
    let before = first.printed_hits().len();
    let deadline = Instant::now() + LONG;
    while first.printed_hits().len() < before + 3 {
        assert!(Instant::now() < deadline, "no hits while the broker was down");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal(SIGKILL);
    let pending: Vec<Value> = first.printed_hits()[before..].to_vec();
    drop(first);

    broker.restart();
    let second = Watcher::start(&config);
    for h in &pending {
        let id = h["hit_id"].as_str().unwrap();
        let got = sub.wait_for("carwatch/hits/a4", LONG, |m| m.json()["hit_id"] == id);
        let got = got.unwrap_or_else(|| panic!("hit {id} was lost\n{}", second.logs())).json();
        assert_eq!(got["redelivered"], true, "{got}");
        assert_eq!(got["time"], h["time"], "a redelivered hit keeps its time");
    }
    assert!(second.logs().contains("undelivered hit(s) found in the outbox"), "{}", second.logs());
}

#[test]
fn alert_file_edits_apply_only_when_good() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/c".into(), single("front", "bmw", "x5"))], 0, None).unwrap();
    let good = "[[alert]]\nid = \"x5\"\nmake = \"bmw\"\nmodel = \"x5\"\n";
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/c"), ""))
        .alerts(good)
        .matcher("confirm_frames = 1\ncooldown_s = 1")
        .write();
    let alerts = dir.path().join("alerts.toml");
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/x5", LONG, |_| true).is_some(), "no hit\n{}", watcher.logs());

    // 1. Invalid TOML, written atomically: reported with its line, old alert stays.
    let edit = Instant::now();
    replace(&alerts, "[[alert]]\nid = \"x5\"\nmake = = \"bmw\"\n");
    let err = sub
        .wait_for("carwatch/errors", Duration::from_secs(15), |m| m.at > edit)
        .unwrap_or_else(|| panic!("no error report\n{}", watcher.logs()));
    let e = err.json();
    assert_eq!(e["source"], "alerts");
    assert_eq!(e["problems"][0]["line"], 3, "{e}");
    assert!(sub.wait_for("carwatch/hits/x5", LONG, |m| m.at > err.at).is_some(), "the old alert stopped matching");

    // 2. A slow writer: the file truncated, a pause longer than the settle time, then
    //    the new text. The empty file in between parses (no alerts) but is not applied:
    //    the alerts stay active throughout.
    let both = "[[alert]]\nid = \"x5\"\nmake = \"bmw\"\nmodel = \"x5\"\n\n[[alert]]\nid = \"any-bmw\"\nmake = \"bmw\"\nnote = \"second\"\n";
    let truncated_at = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&alerts).unwrap();
        // The writer's pause (not synchronisation): 1.5 s is five settle times.
        std::thread::sleep(Duration::from_millis(1500));
        f.write_all(both.as_bytes()).unwrap();
    }
    // 3. The complete file applies: the new alert is active and fires.
    let active = sub.wait_for("carwatch/alerts/active", Duration::from_secs(15), |m| m.payload.contains("any-bmw"));
    assert!(active.is_some(), "alerts/active did not follow the good edit\n{}", watcher.logs());
    assert!(
        sub.wait_for("carwatch/hits/any-bmw", LONG, |_| true).is_some(),
        "the new alert never fired\n{}",
        watcher.logs()
    );
    let emptied: Vec<_> =
        sub.on("carwatch/alerts/active").into_iter().filter(|m| m.at > truncated_at && m.payload == "[]").collect();
    assert!(emptied.is_empty(), "the truncated file was applied: every alert removed\n{}", watcher.logs());
}

/// The review's defect 1: with a model that fails to load, `watch` hung (a thread held
/// the publisher open) instead of exiting 2 with the cause.
#[test]
fn a_model_that_fails_to_load_exits_2_naming_it() {
    let t = trained();
    let dir = support::tempdir();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for e in std::fs::read_dir(&t.models).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), models.join(e.file_name())).unwrap();
        }
    }
    // A copy of the backbone, cut in half, named by the copied manifest (the shared
    // cascade names the shared backbone by its absolute path).
    let manifest_path = models.join("cascade.toml");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    let original = manifest["backbone"]["file"].as_str().unwrap().to_string();
    let bytes = std::fs::read(t.models.join(&original)).unwrap();
    let backbone = "cut-backbone.safetensors";
    std::fs::write(models.join(backbone), &bytes[..bytes.len() / 2]).unwrap();
    let cut = text.replace(&format!("\"{original}\""), &format!("\"{backbone}\""));
    assert!(cut.contains(backbone), "the manifest names its backbone differently:\n{text}");
    std::fs::write(&manifest_path, cut).unwrap();

    let config = nowhere(dir.path(), free_port());
    let mut cmd = carwatch();
    cmd.arg("watch").arg("--config").arg(&config).arg("--models").arg(&models);
    let started = Instant::now();
    let o = run(cmd, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(support::stderr(&o).contains(backbone), "the cause is not named:\n{}", support::stderr(&o));
}

/// The review's defect 11: two watchers on one state_dir interleaved their outboxes.
#[test]
fn a_second_watcher_on_the_same_state_dir_exits_2_naming_the_first() {
    let dir = support::tempdir();
    let config = nowhere(dir.path(), free_port());
    let first = Watcher::start(&config);
    let deadline = Instant::now() + LONG;
    while !first.logs().contains("watching 1 camera(s)") {
        assert!(Instant::now() < deadline, "the first watcher did not start\n{}", first.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = carwatch();
    cmd.arg("watch").arg("--config").arg(&config);
    let o = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
    let err = support::stderr(&o);
    assert!(err.contains(&format!("in use by another carwatch (pid {})", first.pid())), "{err}");
}

/// Replaces `path` atomically (write a temporary file, rename it over).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn bad_config_and_bad_alerts_exit_2_naming_every_problem() {
    let t = trained();
    let dir = support::tempdir();
    let cfg = dir.path().join("bad.toml");
    write(
        &cfg,
        "stat_dir = \"/tmp\"\nstatus_interval_s = \"often\"\n\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://h/1\"\n\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://h/2\"\n",
    );
    let mut cmd = carwatch();
    cmd.arg("watch").arg("--config").arg(&cfg);
    let started = Instant::now();
    let o = run(cmd, Duration::from_secs(10));
    // Refused before anything starts. Loading libtorch alone takes about 1 s from a cold
    // page cache on a 2-core VM, so the bound leaves room for that and no more.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let at = cfg.display().to_string();
    assert!(err.contains(&format!("{at}:1:1: stat_dir: unknown key")), "{err}");
    assert!(err.contains(&format!("{at}:2:21: status_interval_s:")), "{err}");
    assert!(err.contains(&format!("{at}:8:1: camera[1]: camera name `gate` is used twice")), "{err}");

    // A valid config whose alert file repeats an id and names an unknown make.
    let alerts = "[[alert]]\nid = \"a\"\nmake = \"bmw\"\n\n[[alert]]\nid = \"a\"\nmake = \"tesla\"\n";
    let good = Scenario::new(dir.path())
        .mqtt(free_port())
        .cameras(&camera("gate", "rtsp://127.0.0.1:9/x", ""))
        .alerts(alerts)
        .write();
    for sub in ["watch", "check"] {
        let mut cmd = carwatch();
        cmd.arg(sub).arg("--config").arg(&good);
        let started = Instant::now();
        let o = run(cmd, Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(2), "{sub}: {}", stdout(&o));
        let text = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("alerts.toml:6:6: alert[1]: alert id `a` is used twice"), "{sub}: {text}");
        assert!(text.contains("alerts.toml:7:8: alert[1]: make `tesla` is not one the models know"), "{sub}: {text}");
        if sub == "watch" {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "watch took {:?} to refuse bad alerts",
                started.elapsed()
            );
        }
    }
    let _ = t;
}

#[test]
fn credentials_appear_nowhere() {
    const RTSP_PW: &str = "rtsp-S3cret-pw";
    const URL_PW: &str = "url-S3cret-pw";
    const MQTT_PW: &str = "mqtt-S3cret-pw";
    let dir = support::tempdir();
    let broker = Mosquitto::start_with(|d, port| {
        sh("mosquitto_passwd", &["-b", "-c", "passwd", "carwatch", MQTT_PW], d);
        sh("mosquitto_passwd", &["-b", "passwd", "tester", "tester-pw"], d);
        format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n", d.join("passwd").display())
    });
    let creds = Credentials { username: "viewer".into(), password: RTSP_PW.into() };
    let rtsp = RtspServer::start(vec![("/c".into(), single("front", "volvo", "s60"))], 0, Some(creds)).unwrap();
    let pw_file = dir.path().join("mqtt-password");
    write(&pw_file, &format!("{MQTT_PW}\n"));
    let url_with_password = format!("rtsp://viewer:{URL_PW}@127.0.0.1:{}/c", rtsp.port());
    let cameras = camera("good", &rtsp.url("/c"), &format!("username = \"viewer\"\npassword = \"{RTSP_PW}\""))
        + &camera("wrong", &url_with_password, "stall_timeout_s = 2");
    let alerts = "[[alert]]\nid = \"s60\"\nmake = \"volvo\"\nmodel = \"s60\"\n";
    let config = Scenario::new(dir.path())
        .cameras(&cameras)
        .alerts(alerts)
        .matcher("confirm_frames = 1\ncooldown_s = 1")
        .section(&format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nusername = \"carwatch\"\npassword_file = \"{}\"\n",
            broker.port,
            pw_file.display()
        ))
        .write();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut sub = Subscriber::connect_as(broker.port, "#", Some(("tester", "tester-pw")));
    let mut watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/s60", LONG, |_| true).is_some(), "no hit with credentials\n{}", watcher.logs());
    let refused = sub.wait_for("carwatch/cameras/wrong/status", LONG, |m| state_of(m) == "backing_off");
    assert!(refused.is_some(), "the camera with the wrong password never failed\n{}", watcher.logs());
    watcher.signal(SIGTERM);
    assert!(watcher.wait(Duration::from_secs(5)).is_some());
    sub.collect_for(Duration::from_millis(500));
    let logs = watcher.logs();
    assert!(logs.contains("readable by other users"), "no warning about the readable config\n{logs}");
    for pw in [RTSP_PW, URL_PW, MQTT_PW] {
        assert!(!logs.contains(pw), "a password is in the logs:\n{logs}");
        for m in &sub.seen {
            assert!(!m.payload.contains(pw), "a password is in {}: {}", m.topic, m.payload);
        }
    }
}

#[test]
fn hits_go_over_tls_and_a_wrong_ca_is_refused_clearly() {
    let dir = support::tempdir();
    make_ca(dir.path(), "good");
    make_ca(dir.path(), "other");
    let tls_port = free_port();
    let certs = dir.path().to_path_buf();
    let broker = Mosquitto::start_with(|_, port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n\nlistener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {c}/good-ca.pem\ncertfile {c}/good-server.pem\nkeyfile {c}/good-server.key\n",
            c = certs.display()
        )
    });
    let rtsp = RtspServer::start(vec![("/c".into(), single("angled", "bmw", "i3"))], 0, None).unwrap();
    let alerts = "[[alert]]\nid = \"i3\"\nmake = \"bmw\"\nmodel = \"i3\"\n";
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    for (ca, should_work) in [("good-ca.pem", true), ("other-ca.pem", false)] {
        let site = support::tempdir();
        let config = Scenario::new(site.path())
            .cameras(&camera("gate", &rtsp.url("/c"), ""))
            .alerts(alerts)
            .matcher("confirm_frames = 1\ncooldown_s = 1")
            .section(&format!(
                "[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\n",
                dir.path().join(ca).display()
            ))
            .write();
        let started = Instant::now();
        let watcher = Watcher::start(&config);
        if should_work {
            let hit = sub.wait_for("carwatch/hits/i3", LONG, |m| m.at > started);
            assert!(hit.is_some(), "no hit over TLS\n{}", watcher.logs());
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !watcher.logs().to_lowercase().contains("certificate") {
                assert!(Instant::now() < deadline, "no clear certificate error\n{}", watcher.logs());
                std::thread::sleep(Duration::from_millis(100));
            }
            sub.collect_for(Duration::from_secs(2));
            assert!(sub.on("carwatch/hits/i3").iter().all(|m| m.at < started), "a hit got through with the wrong CA");
        }
    }
}

/// The review's defect 8: a hit the broker refuses (here: over its packet size, so it
/// drops the connection) was re-sent first after every reconnect, blocking every later
/// hit. It must go out without its inline snapshot after a few tries.
#[test]
fn a_hit_the_broker_refuses_goes_out_without_its_image() {
    let dir = support::tempdir();
    let broker = Mosquitto::start_with(|_, port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 4096\n")
    });
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "bmw", "x5"), 1);
    let config = scenario.mqtt(broker.port).section("\n[snapshots]\ninline = true\nquality = 100\n").write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/hits/#");
    let watcher = Watcher::start(&config);
    let hit = sub.wait_for("carwatch/hits/x5", LONG, |_| true);
    let hit = hit.unwrap_or_else(|| panic!("no hit got past the refused one\n{}", watcher.logs())).json();
    assert!(hit.get("snapshot_jpeg_base64").is_none(), "{hit}");
    assert!(hit["snapshot"].is_string(), "the snapshot file is still named: {hit}");
    let printed = watcher.printed_hits();
    assert!(printed[0].get("snapshot_jpeg_base64").is_some(), "the hit was made with its image inline");
    assert!(watcher.logs().contains("without its inline snapshot"), "{}", watcher.logs());
}

/// The review's defect 10: with the disk full, hits fell back to at-most-once silently.
/// The outbox here is /dev/full: every write fails with ENOSPC.
#[test]
fn with_the_disk_full_hits_still_go_out_and_it_is_said() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "bmw", "x5"), 1);
    let config = scenario.mqtt(broker.port).section("\n[metrics]\nstats_interval_s = 1\n").write();
    let outbox = dir.path().join("state/outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    std::os::unix::fs::symlink("/dev/full", outbox.join("hits.log")).unwrap();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/hits/x5", LONG, |_| true).is_some(), "no hit\n{}", watcher.logs());
    let stats = sub.wait_for("carwatch/stats", LONG, |m| m.json()["outbox_write_errors"].as_u64() > Some(0));
    assert!(stats.is_some(), "outbox_write_errors not reported\n{}", watcher.logs());
    assert!(watcher.logs().contains("the disk is full"), "{}", watcher.logs());
}

/// The review's defect 9: at SIGTERM with hits unacknowledged, `offline` was never
/// published (it waited for an empty outbox), and the clean disconnect suppressed the
/// last will: the status stayed `online`. Now `offline` goes out after a bounded drain,
/// and the hits wait in the outbox.
#[test]
fn sigterm_with_hits_unacknowledged_still_says_offline_and_keeps_them() {
    let dir = support::tempdir();
    let broker = crate::support::mqtt::HoldingBroker::start();
    let rtsp = RtspServer::start(vec![("/c".into(), single("front", "bmw", "x5"))], 0, None).unwrap();
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/c"), ""))
        .alerts("[[alert]]\nid = \"x5\"\nmake = \"bmw\"\nmodel = \"x5\"\n")
        .matcher("confirm_frames = 1\ncooldown_s = 1")
        .write();
    let mut watcher = Watcher::start(&config);
    let deadline = Instant::now() + LONG;
    while broker.on("carwatch/hits/x5").is_empty() {
        assert!(Instant::now() < deadline, "no hit reached the broker\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Instant::now();
    watcher.signal(SIGTERM);
    let status = watcher.wait(Duration::from_secs(12)).expect("carwatch stops within TimeoutStopSec");
    assert!(status.success(), "{status:?}\n{}", watcher.logs());
    let offline = broker.on("carwatch/status").into_iter().any(|(p, at)| p == "offline" && at > stopped);
    assert!(offline, "`offline` was not published at shutdown\n{}", watcher.logs());
    let printed = watcher.printed_hits().len();
    let (outbox, _) = carwatch::publish::outbox::Outbox::open(
        &dir.path().join("state/outbox"),
        carwatch::publish::outbox::Bounds { hits: 1000, bytes: 1 << 30 },
    )
    .unwrap();
    assert_eq!(outbox.len(), printed, "every hit made is waiting in the outbox");
}

/// The review's defect 6: a thread that died went unnoticed (a dead `mqtt` thread left
/// the publisher spinning and publishing nothing). Now its name and panic are logged
/// and the process ends non-zero, for systemd to restart it.
#[test]
fn a_thread_that_panics_is_named_and_ends_the_process_non_zero() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let config = nowhere(dir.path(), broker.port);
    let mut cmd = carwatch();
    cmd.env("RUST_LOG", "info");
    cmd.arg("watch").arg("--config").arg(&config).args(["--test-fault", "panic-thread:mqtt"]);
    let o = run(cmd, Duration::from_secs(60));
    let err = support::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("thread `mqtt` panicked"), "{err}");
}

/// SIGTERM while the model loads (minutes on a slow disk, and a load cannot be
/// interrupted): the publisher says `offline` and the process exits 0 at once. The
/// loading thread used to hold the publisher open past its shutdown bound, and the
/// process then ended under it, in libtorch, with SIGSEGV.
#[test]
fn sigterm_while_the_model_loads_says_offline_and_exits_zero_at_once() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let config = nowhere(dir.path(), broker.port);
    let mut sub = Subscriber::connect(broker.port, "carwatch/status");
    let mut cmd = carwatch();
    cmd.env("RUST_LOG", "info,rumqttd=warn");
    cmd.arg("watch").arg("--config").arg(&config).args(["--test-fault", "slow-load"]);
    let mut watcher = Watcher::spawn(cmd);
    assert!(sub.wait_for("carwatch/status", LONG, |m| m.payload == "online").is_some(), "{}", watcher.logs());
    let deadline = Instant::now() + LONG;
    while !watcher.logs().contains("takes a minute to load") {
        assert!(Instant::now() < deadline, "the model never started loading\n{}", watcher.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    watcher.signal(SIGTERM);
    let status = watcher.wait(Duration::from_secs(10)).expect("carwatch stops within 10 s while the model loads");
    let logs = watcher.logs();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(sub.wait_for("carwatch/status", Duration::from_secs(5), |m| m.payload == "offline").is_some(), "{logs}");
    assert!(logs.contains("stopping while the model loads"), "{logs}");
    assert!(!logs.contains("did not finish"), "the publisher finished in order, not cut off:\n{logs}");
}
