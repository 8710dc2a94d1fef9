//! The `inbound` thread: what carwatch reads from the broker, on a connection of its own
//! (client id `<client_id>-in`), so that the publisher's connection only publishes and
//! its packet ids stay its own.
//!
//! On every connection it subscribes to `{alerts_prefix}/alerts/set/+` (alerts for
//! fleets, handed to the `alerts` thread: [`crate::alerts::remote`]) and, with Home
//! Assistant discovery on, to Home Assistant's `{discovery_prefix}/status` (an `online`
//! there asks the publisher to send the configs again) and to this instance's retained
//! configs, clearing those no current entity has (a removed camera's).

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rumqttc::{Client, ConnectReturnCode, Event, Packet, QoS, RecvTimeoutError};

use super::Topics;
use super::homeassistant::Discovery;
use super::mqtt::MqttSettings;
use crate::alerts::remote::Message;

/// Home Assistant's side of the `inbound` thread.
pub struct HomeAssistant {
    pub discovery: Discovery,
    /// Told when Home Assistant comes online (it then needs the configs again).
    pub births: Sender<()>,
}

/// Runs the `inbound` thread until `stop` closes (or the `alerts` thread is gone).
pub fn run(
    settings: &MqttSettings,
    topics: &Topics,
    alerts: Sender<Message>,
    ha: Option<HomeAssistant>,
    stop: Receiver<()>,
) {
    let (client, mut connection) = Client::new(settings.options("-in", None), 64);
    let alert_filter = topics.alert_set("+");
    let alert_prefix = topics.alert_set("");
    let mut backoff = Duration::from_millis(500);
    loop {
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            let _ = client.try_disconnect();
            return;
        }
        match connection.recv_timeout(Duration::from_millis(250)) {
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                backoff = Duration::from_millis(500);
                let mut filters = vec![alert_filter.clone()];
                if let Some(h) = &ha {
                    filters.push(h.discovery.birth_topic());
                    filters.push(h.discovery.config_filter());
                }
                for f in filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::error!("cannot subscribe to {f}: {e}");
                    }
                }
                if alerts.send(Message::Connected).is_err() {
                    return;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if let Some(id) = p.topic.strip_prefix(&alert_prefix) {
                    let m = Message::Set { id: id.to_string(), topic: p.topic.clone(), payload: p.payload.to_vec() };
                    if alerts.send(m).is_err() {
                        return;
                    }
                } else if let Some(h) = &ha {
                    if p.topic == h.discovery.birth_topic() {
                        if p.payload.as_ref() == b"online" {
                            tracing::info!("Home Assistant is online: sending the discovery configs again");
                            let _ = h.births.try_send(());
                        }
                    } else if !p.payload.is_empty() && h.discovery.is_stale(&p.topic) {
                        tracing::info!("clearing the Home Assistant config {} (no such entity now)", p.topic);
                        if let Err(e) = client.try_publish(p.topic.clone(), QoS::AtLeastOnce, true, Vec::new()) {
                            tracing::warn!("cannot clear {}: {e}", p.topic);
                        }
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // The publisher's connection logs the broker's troubles; this one only waits.
                tracing::debug!("inbound connection to {}: {e}; retrying in {backoff:?}", settings.display);
                if stop.recv_timeout(backoff).is_ok() {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
