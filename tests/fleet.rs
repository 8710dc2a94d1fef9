//! Alerts over MQTT, for fleets: one retained message reaches every watcher on the
//! broker; `carwatch alert` does it without MQTT tools.

use std::time::{Duration, Instant};

use carwatch::synthetic::rtsp::RtspServer;

use crate::support::daemon::{Scenario, Watcher, camera, single};
use crate::support::mqtt::{Mosquitto, Subscriber};
use crate::support::{self, carwatch, run, stderr, stdout};

const LONG: Duration = Duration::from_secs(60);

fn alert(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = carwatch();
    cmd.arg("alert").args(args).arg("--config").arg(config);
    run(cmd, Duration::from_secs(30))
}

/// The ids `alerts/active` lists, each with its source.
fn active(m: &crate::support::mqtt::Message) -> Vec<(String, String)> {
    let list = m.json();
    let mut ids: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_string(), a["source"].as_str().unwrap().to_string()))
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_alert_set_over_mqtt_hits_until_its_retained_message_is_cleared() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let rtsp = RtspServer::start(vec![("/gate".into(), single("angled", "volvo", "s60"))], 0, None).unwrap();
    // The file has one alert, `shadow`, which an MQTT alert of the same id cannot replace.
    let config = Scenario::new(dir.path())
        .mqtt(broker.port)
        .cameras(&camera("gate", &rtsp.url("/gate"), ""))
        .alerts("[[alert]]\nid = \"shadow\"\nmake = \"audi\"\n")
        .matcher("confirm_frames = 1\ncooldown_s = 0.5")
        .write();
    let mut sub = Subscriber::connect(broker.port, "carwatch/#");
    let watcher = Watcher::start(&config);
    assert!(sub.wait_for("carwatch/status", LONG, |m| m.payload == "online").is_some(), "{}", watcher.logs());

    // A typo is refused by the tool before it reaches any watcher.
    let o = alert(&config, &["add", "typo", "--make", "tesla"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("make `tesla` is not one the models know"), "{}", stderr(&o));

    let o = alert(&config, &["add", "s60", "--make", "volvo", "--model", "s60", "--note", "fleet"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let hit = sub
        .wait_for("carwatch/hits/s60", LONG, |_| true)
        .unwrap_or_else(|| panic!("the MQTT alert never hit\n{}", watcher.logs()))
        .json();
    assert_eq!((hit["make"].as_str(), hit["alert_note"].as_str()), (Some("volvo"), Some("fleet")));
    let both = [("s60".to_string(), "mqtt".to_string()), ("shadow".to_string(), "file".to_string())];
    assert!(sub.wait_for("carwatch/alerts/active", LONG, |m| active(m) == both).is_some(), "{}", watcher.logs());

    // What does not check out goes to errors and changes nothing.
    sub.publish_retained("carwatch/alerts/set/bad", br#"{"make": "bmw", "colour": "plaid"}"#);
    let e = sub
        .wait_for("carwatch/errors", LONG, |m| m.json()["message"].as_str().unwrap().contains("alerts/set/bad"))
        .unwrap_or_else(|| panic!("no error for the bad message\n{}", watcher.logs()))
        .json();
    assert!(e["message"].as_str().unwrap().contains("colour `plaid`"), "{e}");
    let o = alert(&config, &["add", "shadow", "--make", "volvo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = sub.wait_for("carwatch/errors", LONG, |m| {
        m.json()["message"].as_str().unwrap().contains("alert `shadow` set over MQTT is not in force")
    });
    assert!(e.is_some(), "no error for the shadowed id\n{}", watcher.logs());
    assert!(sub.on("carwatch/hits/shadow").is_empty(), "the file's shadow (an Audi) wins");

    // `list` shows what the broker holds and what is in force.
    let o = alert(&config, &["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let state = |id: &str| listed.iter().find(|l| l["id"] == id).map(|l| l["in_force"].clone());
    assert_eq!(state("s60"), Some(serde_json::Value::Bool(true)), "{}", stdout(&o));
    assert_eq!(state("shadow"), Some(serde_json::Value::Bool(false)), "{}", stdout(&o));

    // Removed: the active list loses it and its hits stop.
    let asked = Instant::now();
    let o = alert(&config, &["remove", "s60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // (The list at start-up also held the file's alert alone: only a later one counts.)
    let only_file = [("shadow".to_string(), "file".to_string())];
    let removed = sub.wait_for("carwatch/alerts/active", LONG, |m| m.at > asked && active(m) == only_file);
    assert!(removed.is_some(), "{}", watcher.logs());
    let removed_at = Instant::now();
    sub.collect_for(Duration::from_secs(3));
    let late: Vec<String> =
        sub.on("carwatch/hits/s60").into_iter().filter(|m| m.at > removed_at).map(|m| m.payload.clone()).collect();
    assert!(late.is_empty(), "hits after the alert was removed: {late:?}\n{}", watcher.logs());
    assert!(sub.on("carwatch/hits/s60").len() >= 2, "a steady stream with a 0.5 s cooldown hits more than once");
}
