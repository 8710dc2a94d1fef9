//! Home Assistant MQTT discovery: cameras and hits appear in Home Assistant without YAML.
//!
//! At every connection (and whenever Home Assistant says `online` on
//! `{discovery_prefix}/status`, which it does when it restarts) the publisher sends a
//! retained config per entity under `{discovery_prefix}/{component}/{node}/{object}/config`:
//! one device for this carwatch instance (active alerts), and one device per camera,
//! attached to it with `via_device`: connectivity, frames analysed per second, frames
//! dropped, the last hit's time, an `event` entity fired by each hit, and an `image`
//! entity with the last hit's snapshot. Everything is unavailable when carwatch is
//! (`{prefix}/status`, its last will). Entities read the topics carwatch publishes
//! anyway, plus `{prefix}/cameras/{name}/hits` (each hit, with its `event_type`).
//!
//! Retained configs under this node that name no current entity (a camera removed from
//! the config) are cleared by the `inbound` connection, which sees them when it
//! subscribes ([`Discovery::is_stale`]).

use serde::Deserialize;
use serde_json::{Value, json};

use super::Topics;

/// `[homeassistant]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
}

fn yes() -> bool {
    true
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig { enabled: true, discovery_prefix: default_discovery_prefix() }
    }
}

impl HomeAssistantConfig {
    pub fn check(&self) -> Result<(), String> {
        let p = &self.discovery_prefix;
        if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
            return Err(format!(
                "discovery_prefix `{p}` must be non-empty, without + or #, and not start or end with /"
            ));
        }
        Ok(())
    }
}

/// The discovery messages of one carwatch instance.
#[derive(Debug, Clone)]
pub struct Discovery {
    prefix: String,
    /// This instance's id in Home Assistant: its topic prefix, sanitised (two instances
    /// on one broker have different prefixes).
    node: String,
    topics: Topics,
    cameras: Vec<String>,
    /// Whether `{prefix}/cameras/{name}/snapshot` is published (`[snapshots] mqtt`).
    snapshots: bool,
}

/// `s` with every character outside `[a-zA-Z0-9_-]` as `_`: what Home Assistant takes in
/// ids and topic levels of discovery.
pub fn sanitise(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

impl Discovery {
    pub fn new(config: &HomeAssistantConfig, topics: &Topics, cameras: &[String], snapshots: bool) -> Discovery {
        Discovery {
            prefix: config.discovery_prefix.clone(),
            node: sanitise(topics.prefix()),
            topics: topics.clone(),
            cameras: cameras.to_vec(),
            snapshots,
        }
    }

    /// Where Home Assistant announces itself (`online` after a restart).
    pub fn birth_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// Every retained config of this instance's node, for the `inbound` connection.
    pub fn config_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.prefix, self.node)
    }

    /// Whether `topic` is a config of this node that no current entity has.
    pub fn is_stale(&self, topic: &str) -> bool {
        let ours = format!("/{}/", self.node);
        topic.starts_with(&format!("{}/", self.prefix))
            && topic.ends_with("/config")
            && topic.contains(&ours)
            && !self.configs().iter().any(|(t, _)| t == topic)
    }

    /// (topic, retained JSON payload) of every entity.
    pub fn configs(&self) -> Vec<(String, Vec<u8>)> {
        let instance_id = format!("carwatch_{}", self.node);
        let version = env!("CARGO_PKG_VERSION");
        let availability = json!({
            "availability_topic": self.topics.status(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "origin": { "name": "carwatch", "sw": version },
        });
        let instance = json!({
            "identifiers": [instance_id],
            "name": format!("carwatch {}", self.topics.prefix()),
            "manufacturer": "carwatch",
            "model": "carwatch",
            "sw_version": version,
        });
        let mut out = Vec::new();
        let mut add = |component: &str, object: &str, device: &Value, name: &str, mut fields: Value| {
            let object = sanitise(object);
            let unique_id = format!("{instance_id}_{object}");
            let f = fields.as_object_mut().expect("an object");
            f.insert("name".into(), name.into());
            f.insert("unique_id".into(), unique_id.clone().into());
            f.insert("object_id".into(), unique_id.into());
            f.insert("device".into(), device.clone());
            for (k, v) in availability.as_object().expect("an object") {
                f.insert(k.clone(), v.clone());
            }
            let topic = format!("{}/{component}/{}/{object}/config", self.prefix, self.node);
            out.push((topic, serde_json::to_vec(&fields).unwrap_or_default()));
        };
        add(
            "sensor",
            "active_alerts",
            &instance,
            "Active alerts",
            json!({
                "state_topic": self.topics.alerts_active(),
                "value_template": "{{ value_json | length }}",
                "state_class": "measurement",
                "icon": "mdi:car-search",
            }),
        );
        for camera in &self.cameras {
            let device = json!({
                "identifiers": [format!("{instance_id}_{}", sanitise(camera))],
                "name": camera,
                "manufacturer": "carwatch",
                "model": "camera",
                "via_device": instance_id,
            });
            let status = self.topics.camera_status(camera);
            let hits = self.topics.camera_hits(camera);
            add(
                "binary_sensor",
                &format!("{camera}_connected"),
                &device,
                "Connected",
                json!({
                    "state_topic": status,
                    "value_template": "{{ 'ON' if value_json.state == 'streaming' else 'OFF' }}",
                    "device_class": "connectivity",
                }),
            );
            add(
                "sensor",
                &format!("{camera}_fps_analysed"),
                &device,
                "Frames analysed",
                json!({
                    "state_topic": status,
                    "value_template": "{{ value_json.fps_analysed }}",
                    "unit_of_measurement": "fps",
                    "state_class": "measurement",
                }),
            );
            add(
                "sensor",
                &format!("{camera}_dropped"),
                &device,
                "Frames dropped",
                json!({
                    "state_topic": status,
                    "value_template": "{{ value_json.dropped }}",
                    "state_class": "total_increasing",
                }),
            );
            add(
                "sensor",
                &format!("{camera}_last_hit"),
                &device,
                "Last hit",
                json!({
                    "state_topic": hits,
                    "value_template": "{{ value_json.time }}",
                    "device_class": "timestamp",
                }),
            );
            add(
                "event",
                &format!("{camera}_hit"),
                &device,
                "Hit",
                json!({
                    "state_topic": hits,
                    "event_types": ["hit", "retrospective"],
                    "icon": "mdi:car-search",
                }),
            );
            if self.snapshots {
                add(
                    "image",
                    &format!("{camera}_snapshot"),
                    &device,
                    "Last hit snapshot",
                    json!({ "image_topic": self.topics.camera_snapshot(camera), "content_type": "image/jpeg" }),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_a_unique_id_a_device_and_availability() {
        let topics = Topics::new("site/a").unwrap();
        let d = Discovery::new(&HomeAssistantConfig::default(), &topics, &["gate".into(), "car park".into()], true);
        let configs = d.configs();
        assert_eq!(configs.len(), 1 + 2 * 6);
        let mut ids = std::collections::HashSet::new();
        for (topic, payload) in &configs {
            let v: Value = serde_json::from_slice(payload).unwrap();
            assert!(topic.starts_with("homeassistant/") && topic.contains("/site_a/"), "{topic}");
            assert!(ids.insert(v["unique_id"].as_str().unwrap().to_string()), "{topic}: unique_id used twice");
            assert_eq!(v["availability_topic"], "site/a/status");
            assert!(v["device"]["identifiers"][0].as_str().unwrap().starts_with("carwatch_site_a"));
            let level = topic.split('/').nth(3).unwrap();
            assert!(level.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{topic}");
        }
        let park = configs.iter().find(|(t, _)| t == "homeassistant/event/site_a/car_park_hit/config").unwrap();
        let v: Value = serde_json::from_slice(&park.1).unwrap();
        assert_eq!(
            (v["state_topic"].as_str(), v["device"]["name"].as_str()),
            (Some("site/a/cameras/car park/hits"), Some("car park"))
        );
        assert_eq!(v["device"]["via_device"], "carwatch_site_a");
        assert!(d.is_stale("homeassistant/binary_sensor/site_a/yard_connected/config"));
        assert!(!d.is_stale("homeassistant/binary_sensor/site_a/gate_connected/config"));
        assert!(!d.is_stale("homeassistant/binary_sensor/other/yard_connected/config"), "another instance's");
        let without = Discovery::new(&HomeAssistantConfig::default(), &topics, &["gate".into()], false);
        assert!(without.configs().iter().all(|(t, _)| !t.contains("/image/")));
    }
}
