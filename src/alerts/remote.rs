//! Alerts over MQTT, for fleets: one retained message reaches every watcher.
//!
//! After an AMBER alert, ten watchers on one broker should not need ten file edits. An
//! operator (or `carwatch alert add`) publishes, retained, a JSON object with the fields
//! of an `[[alert]]` entry on `{prefix}/alerts/set/{id}`; an empty retained message on
//! the same topic removes it. The `inbound` thread ([`crate::publish::inbound`]) keeps
//! its own connection to the broker, subscribes on every connection, and hands each
//! message to the `alerts` thread, which checks it exactly as it checks the file and
//! merges the two: an id in both is the file's, and the message is reported on
//! `{prefix}/errors`.
//!
//! Retained messages removed while this watcher was away from the broker are not
//! announced again; so after each (re)connection, an MQTT alert the broker does not send
//! again within [`RECONFIRM`] is removed.

use std::path::Path;
use std::time::Duration;

use super::{Alert, AlertSet, Source, Vocabulary};
use crate::document::{Problem, Problems};
use crate::rule::MatcherConfig;

/// How long after a (re)connection the broker has to send a retained alert again before
/// it is taken as removed.
pub const RECONFIRM: Duration = Duration::from_secs(5);

/// What the `inbound` thread hands the `alerts` thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A new session: retained alerts follow.
    Connected,
    /// The message on `topic` = `{prefix}/alerts/set/{id}` (empty: removed).
    Set { topic: String, id: String, payload: Vec<u8> },
}

/// The alert a message on `topic` sets (`None`: an empty message, which removes it),
/// checked as an entry of the alert file would be. Relative example photos resolve
/// against `dir` (the alert file's directory).
pub fn parse(
    topic: &str,
    id: &str,
    payload: &[u8],
    dir: &Path,
    vocabulary: &Vocabulary,
    defaults: &MatcherConfig,
) -> Result<Option<Alert>, Problems> {
    let problem =
        |reason: String| Problems(vec![Problem { file: topic.into(), line: 0, column: 0, key: String::new(), reason }]);
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(problem(format!("alert id `{id}` (the topic's last level) must be letters, digits, `_` and `-`")));
    }
    let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload)
        .map_err(|e| problem(format!("not a JSON object with the fields of an [[alert]] entry: {e}")))?;
    match fields.get("id") {
        None => {}
        Some(serde_json::Value::String(s)) if s == id => {}
        Some(other) => return Err(problem(format!("`id` is {other}, but the topic says `{id}`: leave it out"))),
    }
    fields.insert("id".into(), id.into());
    // One message reaches every watcher: cameras another watcher has are not mistakes
    // here (the alert watches those of this one it names, if any).
    let mut vocabulary = vocabulary.clone();
    if let Some(serde_json::Value::Array(names)) = fields.get("cameras") {
        let names = names.iter().filter_map(|n| n.as_str()).filter_map(|n| crate::values::Name::new(n).ok());
        vocabulary.cameras.extend(names);
    }
    // Through TOML, so that an MQTT alert is checked by exactly the file's rules.
    let entry = toml::Value::try_from(serde_json::Value::Object(fields))
        .map_err(|e| problem(format!("cannot be an [[alert]] entry: {e} (null is not a value)")))?;
    let mut doc = toml::map::Map::new();
    doc.insert("alert".into(), toml::Value::Array(vec![entry]));
    let text = toml::to_string(&doc).map_err(|e| problem(format!("cannot be an [[alert]] entry: {e}")))?;
    let set = AlertSet::parse_in(Path::new(topic), dir, &text, &vocabulary, defaults).map_err(|p| {
        // Lines of the TOML made here would mean nothing to the sender: keep the keys,
        // as the sender wrote them.
        let key = |k: &str| k.strip_prefix("alert[0]").unwrap_or(k).trim_start_matches('.').to_string();
        Problems(p.0.into_iter().map(|p| Problem { line: 0, column: 0, key: key(&p.key), ..p }).collect())
    })?;
    let alert = set.alerts.into_iter().next().ok_or_else(|| problem("no alert in the message".into()))?;
    let mut alert = (*alert).clone();
    alert.source = Source::Mqtt;
    Ok(Some(alert))
}
