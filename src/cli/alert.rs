//! `carwatch alert add|remove|list`: alerts for every watcher on a broker, for operators
//! without MQTT tools. `add` publishes, retained, the JSON that `{prefix}/alerts/set/{id}`
//! takes ([`carwatch::alerts::remote`]); `remove` clears it; `list` shows what the broker
//! holds and which of it a watcher has in force.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectReturnCode, Event, Packet, QoS, RecvTimeoutError};
use serde_json::{Map, Value};

use super::table::{Align, Table};
use super::*;

use carwatch::alerts::remote;
use carwatch::publish::Topics;
use carwatch::publish::mqtt::{MqttConfig, MqttSettings};

/// How long the broker has to answer each step.
const ANSWER: Duration = Duration::from_secs(10);

pub(super) fn alert_cmd(c: AlertCommand) -> Result<ExitCode> {
    match c {
        AlertCommand::Add(a) => add(*a),
        AlertCommand::Remove { broker, id } => {
            let (settings, topics) = match broker.resolve() {
                Ok(t) => t,
                Err(e) => return refuse(e),
            };
            publish(&settings, &topics.alert_set(&id), Vec::new())?;
            println!("alert {id} removed from {} ({})", settings.display, topics.alert_set(&id));
            Ok(ExitCode::SUCCESS)
        }
        AlertCommand::List { broker, json } => list(broker, json),
    }
}

fn refuse(msg: String) -> Result<ExitCode> {
    eprintln!("{msg}");
    Ok(ExitCode::from(EXIT_CONFIG))
}

impl BrokerArgs {
    /// The broker and prefix: from the flags when `--url` is given, else the config.
    fn resolve(&self) -> Result<(MqttSettings, Topics), String> {
        if let Some(url) = &self.url {
            let c = MqttConfig {
                url: url.clone(),
                client_id: None,
                username: self.username.clone(),
                password: None,
                password_file: self.password_file.clone(),
                ca_file: self.ca_file.clone(),
                client_cert: None,
                client_key: None,
                keep_alive: Duration::from_secs(30),
                topic_prefix: self.prefix.clone().unwrap_or_else(carwatch::publish::mqtt::default_prefix),
                alerts_prefix: None,
            };
            let settings = MqttSettings::from_config(&c).map_err(|e| format!("--url: {e}"))?;
            let topics = Topics::new(&c.topic_prefix).map_err(|e| format!("--prefix: {e}"))?;
            return Ok((settings, topics));
        }
        let config = Config::load(&self.config).map_err(|e| format!("{e}\n(or give the broker with --url)"))?;
        let settings = match &config.mqtt {
            Some(s) => s.clone(),
            None => MqttSettings::local(config.broker.listen, config.broker.account()?),
        };
        let topics = match &self.prefix {
            Some(p) => Topics::new(p).and_then(|t| t.with_alerts_prefix(p)).map_err(|e| format!("--prefix: {e}"))?,
            None => config.topics.clone(),
        };
        Ok((settings, topics))
    }
}

fn add(a: AlertAddArgs) -> Result<ExitCode> {
    let (settings, topics) = match a.broker.resolve() {
        Ok(t) => t,
        Err(e) => return refuse(e),
    };
    let mut fields = Map::new();
    let mut put = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            fields.insert(key.to_string(), v);
        }
    };
    put("make", a.make.map(Value::from));
    put("model", a.model.map(Value::from));
    put("view", a.view.map(Value::from));
    put("colour", a.colour.map(Value::from));
    put("example", (!a.example.is_empty()).then(|| Value::from(a.example.clone())));
    put("min_similarity", a.min_similarity.map(Value::from));
    put("cameras", (!a.camera.is_empty()).then(|| Value::from(a.camera.clone())));
    put("min_confidence", a.min_confidence.map(Value::from));
    put("expires", a.expires.map(Value::from));
    put("note", a.note.map(Value::from));
    put("lookback_s", a.lookback_s.map(Value::from));
    let payload = serde_json::to_vec(&Value::Object(fields))?;
    let topic = topics.alert_set(&a.id);
    // Checked here as the watchers will check it, when the models are at hand: a typo
    // is better refused now than reported by every watcher on `errors`.
    if let Some(config) = a.broker.url.is_none().then(|| Config::load(&a.broker.config).ok()).flatten()
        && let Ok(manifest) = carwatch::model::Manifest::load(&config.model.dir)
    {
        let vocabulary =
            Vocabulary { leaves: manifest.leaves(), cameras: config.cameras.iter().map(|c| c.name.clone()).collect() };
        let dir = config.alerts.parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
        if let Err(problems) = remote::parse(&topic, &a.id, &payload, &dir, &vocabulary, &config.matcher) {
            return refuse(problems.to_string());
        }
    } else if a.id.is_empty() || !a.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return refuse(format!("alert id `{}` must be letters, digits, `_` and `-`", a.id));
    }
    publish(&settings, &topic, payload)?;
    println!("alert {} set on {} ({topic}): every watcher on this broker takes it", a.id, settings.display);
    Ok(ExitCode::SUCCESS)
}

/// Connects, publishes `payload` retained at QoS 1 and waits for the broker's
/// acknowledgement.
fn publish(settings: &MqttSettings, topic: &str, payload: Vec<u8>) -> Result<()> {
    let suffix = format!("-cli-{}", std::process::id());
    let (client, mut connection) = Client::new(settings.options(&suffix, None), 8);
    let deadline = Instant::now() + ANSWER;
    let mut sent = false;
    loop {
        let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                client.try_publish(topic, QoS::AtLeastOnce, true, payload.clone())?;
                sent = true;
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                anyhow::bail!("the broker {} refused the connection: {:?}", settings.display, ack.code)
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) if sent => {
                let _ = client.try_disconnect();
                let _ = connection.recv_timeout(Duration::from_millis(500));
                return Ok(());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("cannot reach the broker {}: {e}", settings.display),
            Err(RecvTimeoutError::Timeout) => {
                anyhow::bail!("the broker {} did not answer within {ANSWER:?}", settings.display)
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the connection to {} ended", settings.display),
        }
    }
}

fn list(broker: BrokerArgs, json: bool) -> Result<ExitCode> {
    let (settings, topics) = match broker.resolve() {
        Ok(t) => t,
        Err(e) => return refuse(e),
    };
    let suffix = format!("-cli-{}", std::process::id());
    let (client, mut connection) = Client::new(settings.options(&suffix, None), 64);
    let prefix = topics.alert_set("");
    let mut set: BTreeMap<String, Value> = BTreeMap::new();
    let mut active: Option<Value> = None;
    let deadline = Instant::now() + ANSWER;
    // Retained messages follow the subscription's acknowledgement at once: once both
    // are acknowledged, a short quiet means they have all come.
    let (mut acked, mut quiet_until) = (0, None::<Instant>);
    loop {
        let until = quiet_until.map_or(deadline, |q| q.min(deadline));
        let left = until.checked_duration_since(Instant::now()).unwrap_or_default();
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                client.try_subscribe(topics.alert_set("+"), QoS::AtLeastOnce)?;
                client.try_subscribe(topics.alerts_active(), QoS::AtLeastOnce)?;
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                anyhow::bail!("the broker {} refused the connection: {:?}", settings.display, ack.code)
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                acked += 1;
                if acked == 2 {
                    quiet_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if let Some(id) = p.topic.strip_prefix(&prefix) {
                    if !p.payload.is_empty() {
                        let v = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into_owned()));
                        set.insert(id.to_string(), v);
                    }
                } else {
                    active = serde_json::from_slice(&p.payload).ok();
                }
                if acked == 2 {
                    quiet_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("cannot reach the broker {}: {e}", settings.display),
            Err(RecvTimeoutError::Timeout) if acked == 2 => break,
            Err(RecvTimeoutError::Timeout) => {
                anyhow::bail!("the broker {} did not answer within {ANSWER:?}", settings.display)
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the connection to {} ended", settings.display),
        }
    }
    let _ = client.try_disconnect();
    // What a watcher announced on alerts/active: each alert's source.
    let in_force: BTreeMap<String, String> = active
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["id"].as_str()?.to_string(), a["source"].as_str().unwrap_or("file").to_string())))
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        for (id, fields) in &set {
            let line =
                serde_json::json!({ "id": id, "fields": fields, "in_force": in_force.get(id).map(|s| s == "mqtt") });
            writeln!(out, "{line}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if set.is_empty() {
        writeln!(out, "no alerts set over MQTT on {} ({})", settings.display, topics.alert_set("+"))?;
    }
    let mut table = Table::new(&[("id", Align::Left), ("in force", Align::Left), ("fields", Align::Left)]);
    for (id, fields) in &set {
        let state = match in_force.get(id).map(String::as_str) {
            Some("mqtt") => "yes",
            Some(_) => "no: the file's alert of that id wins",
            None if active.is_some() => "no: refused (see the errors topic)",
            None => "unknown (no watcher announced its alerts)",
        };
        table.row(vec![id.clone(), state.to_string(), fields.to_string()]);
    }
    if !set.is_empty() {
        table.write(&mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
