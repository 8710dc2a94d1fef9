//! Home Assistant MQTT discovery against a real Mosquitto: the cameras appear as devices
//! with entities, hits fire their event entity, and Home Assistant's restart or a removed
//! camera are handled.

use std::time::{Duration, Instant};

use crate::support::daemon::{Watcher, wanted};
use crate::support::mqtt::{Message, Mosquitto, Subscriber};
use crate::support::{self};

const LONG: Duration = Duration::from_secs(60);

fn is_config(m: &Message) -> bool {
    m.topic.starts_with("homeassistant/") && m.topic.ends_with("/config") && !m.bytes.is_empty()
}

#[test]
fn home_assistant_discovers_each_camera_and_its_hits() {
    let dir = support::tempdir();
    let broker = Mosquitto::start();
    let (_rtsp, scenario) = wanted(dir.path(), ("front", "bmw", "3-series"), 60);
    let mut sub = Subscriber::connect(broker.port, "#");
    // A camera removed from the config since the last run left its config behind.
    let stale = "homeassistant/binary_sensor/carwatch/yard_connected/config";
    sub.publish_retained(stale, br#"{"name": "Connected", "unique_id": "carwatch_carwatch_yard_connected"}"#);
    let config = scenario.mqtt(broker.port).write();
    let watcher = Watcher::start(&config);

    let event = "homeassistant/event/carwatch/gate_hit/config";
    assert!(sub.wait_for(event, LONG, is_config).is_some(), "no discovery\n{}", watcher.logs());
    sub.collect_for(Duration::from_secs(1));
    let configs: Vec<(String, serde_json::Value)> =
        sub.seen.iter().filter(|m| is_config(m) && m.topic != stale).map(|m| (m.topic.clone(), m.json())).collect();
    let kinds: std::collections::BTreeSet<&str> = configs.iter().map(|(t, _)| t.split('/').nth(1).unwrap()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["binary_sensor", "event", "image", "sensor"]);
    for (topic, c) in &configs {
        assert!(c["unique_id"].as_str().is_some_and(|u| u.starts_with("carwatch_carwatch_")), "{topic}: {c}");
        assert_eq!(c["availability_topic"], "carwatch/status", "{topic}");
        assert!(c["device"]["identifiers"].as_array().is_some_and(|a| !a.is_empty()), "{topic}");
        assert!(c["state_topic"].is_string() || c["image_topic"].is_string(), "{topic}: {c}");
    }
    let cameras: Vec<&str> = configs.iter().filter_map(|(_, c)| c["device"]["name"].as_str()).collect();
    assert!(cameras.contains(&"gate"), "{cameras:?}");
    let image = configs.iter().find(|(t, _)| t.contains("/image/")).unwrap();
    assert_eq!(image.1["image_topic"], "carwatch/cameras/gate/snapshot");

    // The removed camera's config is cleared.
    let cleared = sub.wait_for(stale, LONG, |m| m.bytes.is_empty());
    assert!(cleared.is_some(), "the stale config stayed\n{}", watcher.logs());

    // A hit fires the camera's event entity.
    let hit = sub
        .wait_for("carwatch/cameras/gate/hits", LONG, |_| true)
        .unwrap_or_else(|| panic!("no hit on the camera's topic\n{}", watcher.logs()))
        .json();
    assert_eq!((hit["event_type"].as_str(), hit["camera"].as_str()), (Some("hit"), Some("gate")));

    // Home Assistant restarts and says so: the configs come again.
    let restarted = Instant::now();
    sub.publish("homeassistant/status", b"online");
    let again = sub.wait_for(event, LONG, |m| m.at > restarted && is_config(m));
    assert!(again.is_some(), "configs not sent again after homeassistant/status online\n{}", watcher.logs());

    // And they are retained for a Home Assistant that connects later.
    let mut late = Subscriber::connect(broker.port, "homeassistant/#");
    assert!(late.wait_for(event, LONG, |m| m.retain && is_config(m)).is_some());
    assert!(late.wait_for(stale, Duration::from_secs(2), is_config).is_none(), "the stale config is retained still");
}
