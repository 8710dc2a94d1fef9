//! The hit message, as one type: what `{prefix}/hits/{alert_id}` carries.
//!
//! Live and retrospective hits both fill a [`HitMessage`]; docs/hit.schema.json is
//! generated from it ([`schema`]), and a test fails when the committed file is stale, so
//! the published contract and the code cannot drift apart. Field comments are the
//! schema's descriptions. Fields that may be null are still always present (required).

use schemars::JsonSchema;
use serde::Serialize;

/// Published on {prefix}/hits/{alert_id}, QoS 1, not retained.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "carwatch hit")]
pub struct HitMessage {
    /// Unique (UUID v7, time-ordered); the same if the hit is delivered again.
    pub hit_id: String,
    /// The alert's id; also the last topic level.
    pub alert_id: String,
    /// The alert's free-text note (case number...).
    pub alert_note: Option<String>,
    /// Camera name.
    pub camera: String,
    /// Capture time of the confirming frame (for a tracked vehicle: the frame whose look
    /// decided the hit), RFC 3339, UTC, milliseconds.
    #[schemars(extend("format" = "date-time"))]
    pub time: String,
    /// The alert's make (as written, or derived from its example photo), as the models
    /// spell it; for an alert by colour alone, the vehicle's most likely make.
    pub make: String,
    /// The alert's model, or the most likely model of that make when the alert names none.
    pub model: String,
    /// The alert's view, or the most likely view of this vehicle.
    pub view: String,
    /// Marginal probability of the alert's description in the confirming region; for a
    /// tracked vehicle, its mean over the vehicle's classified looks.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub confidence: f32,
    /// Per level: P(view), P(make), P(model | make), marginals over all branches.
    pub probabilities: Probabilities,
    /// The cascade's greedy path: each level's answer and its probability given the
    /// answers above (empty for retrospective hits).
    pub path: Vec<Step>,
    /// The region of the frame that matched, in pixels (cameras with locate = regions or
    /// frame; null for tracked vehicles).
    pub region: Option<Region>,
    /// What the snapshot outlines, in frame pixels: the vehicle's box in its best look
    /// (tracked vehicles), else the region or the whole frame.
    #[serde(rename = "box")]
    pub bounds: Bounds,
    /// The vehicle's track, unique over the camera's life since carwatch started; null
    /// for region and frame cameras.
    #[schemars(range(min = 1))]
    pub track_id: Option<u64>,
    /// Classified looks of the vehicle when the hit was decided; null for region and
    /// frame cameras.
    #[schemars(range(min = 1))]
    pub observations: Option<u32>,
    /// When the vehicle's track began (capture time of its first box); null for region
    /// and frame cameras.
    #[schemars(extend("format" = "date-time"))]
    pub first_seen: Option<String>,
    /// Matching frames that confirmed the hit (tracked vehicles: classified looks).
    #[schemars(range(min = 1))]
    pub frames: u32,
    /// Path of the JPEG (box outlined; for a tracked vehicle its best look) on the
    /// carwatch host; null if it could not be written.
    pub snapshot: Option<String>,
    /// True when this hit was published before and is sent again.
    pub redelivered: bool,
    /// True when the vehicle was found in the sightings when its alert appeared (it
    /// passed before anyone asked); time is when it was last seen, snapshot its
    /// thumbnail, path empty.
    pub retrospective: bool,
    /// For Home Assistant's event entity (on {prefix}/cameras/{name}/hits):
    /// retrospective when retrospective is true, else hit.
    pub event_type: EventType,
    /// The vehicle's colour estimated from its pixels in the snapshot's box (unknown: a
    /// greyscale or infrared frame). See docs/operations.md for its limits.
    pub colour: crate::colour::Colour,
    /// Share of the vehicle's sampled pixels that named that colour.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub colour_probability: f32,
    /// Cosine similarity of the vehicle's embedding to the alert's example photos; null
    /// for an alert without example.
    #[schemars(range(min = -1.0, max = 1.0))]
    pub similarity: Option<f32>,
    /// The JPEG itself, only with snapshots.inline = true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_jpeg_base64: Option<String>,
}

/// Per level: marginal probabilities.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Probabilities {
    pub view: f32,
    pub make: f32,
    /// P(model | make).
    pub model: f32,
}

/// One level of the cascade's greedy path.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Step {
    pub level: crate::model::Level,
    pub label: String,
    pub probability: f32,
}

/// A configured region (or `frame`), in frame pixels.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Region {
    pub index: usize,
    pub name: String,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A box in frame pixels.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Bounds {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// What kind of hit, for Home Assistant's event entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Hit,
    Retrospective,
}

/// docs/hit.schema.json, as it must read.
pub fn schema() -> String {
    let mut s = serde_json::to_value(schemars::schema_for!(HitMessage)).unwrap_or_default();
    s["$id"] = "https://carwatch.invalid/schemas/hit.json".into();
    // Every field is always sent, null or not; only the inline JPEG is optional.
    let required: Vec<serde_json::Value> = s["properties"]
        .as_object()
        .map(|p| p.keys().filter(|k| *k != "snapshot_jpeg_base64").map(|k| k.as_str().into()).collect())
        .unwrap_or_default();
    s["required"] = required.into();
    let mut text = serde_json::to_string_pretty(&s).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/hit.schema.json is generated: `CARWATCH_WRITE_SCHEMA=1 cargo test --lib
    /// hit_schema` writes it after a change to [`HitMessage`].
    #[test]
    fn the_committed_hit_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/hit.schema.json");
        if std::env::var_os("CARWATCH_WRITE_SCHEMA").is_some() {
            std::fs::write(path, schema()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == schema(),
            "docs/hit.schema.json is stale: run `CARWATCH_WRITE_SCHEMA=1 cargo test --lib hit_schema` and commit it"
        );
    }
}
