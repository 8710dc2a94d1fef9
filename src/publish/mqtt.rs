//! The MQTT connection: options from config, TLS, last will, and the thread that drives
//! rumqttc's event loop.
//!
//! rumqttc reconnects when its connection iterator is polled again after an error, so
//! the `mqtt` thread never stops polling; it only waits (with backoff) between failed
//! attempts so a dead broker does not spin a core. That thread is the only place that
//! sees `ConnAck` and acknowledgements; publishing goes through [`Mqtt::publish`], which
//! never blocks. `MqttOptions` is never logged: its Debug output includes the password.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde::Deserialize;

use super::Topics;
use crate::config::values::{Secret, seconds};

/// `[mqtt]`: the broker carwatch publishes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    /// [default: `carwatch-<hostname>`]. Instances sharing a broker need distinct ids.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the broker's certificate; for mqtts://.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require them.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_keep_alive", deserialize_with = "seconds", rename = "keep_alive_s")]
    pub keep_alive: Duration,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

pub fn default_prefix() -> String {
    "carwatch".into()
}

/// Everything needed to connect, resolved and checked.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// URL without credentials, for logs.
    pub display: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<Tls>,
    pub keep_alive: Duration,
}

#[derive(Clone)]
pub struct Tls {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl MqttSettings {
    pub fn from_config(c: &MqttConfig) -> Result<MqttSettings, String> {
        let url = url::Url::parse(&c.url).map_err(|e| format!("url `{}` is not a valid URL: {e}", redact(&c.url)))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => return Err(format!("url scheme `{other}` is not supported: use mqtt:// or mqtts://")),
        };
        let host = url.host_str().ok_or("url has no host")?.to_string();
        let port = url.port().unwrap_or(default_port);
        if c.password.is_some() && c.password_file.is_some() {
            return Err("give either password or password_file, not both".into());
        }
        let mut password = c.password.clone();
        if let Some(f) = &c.password_file {
            password = Some(Secret::from_file(f)?);
        }
        let mut username = c.username.clone();
        if !url.username().is_empty() {
            username.get_or_insert_with(|| url.username().to_string());
        }
        if let Some(p) = url.password() {
            password.get_or_insert_with(|| Secret::new(p));
        }
        let read =
            |p: &PathBuf, what: &str| std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()));
        let tls = if tls {
            let ca = match &c.ca_file {
                Some(p) => read(p, "ca_file")?,
                None => return Err("mqtts:// needs ca_file (the CA certificate that signed the broker's)".into()),
            };
            let client = match (&c.client_cert, &c.client_key) {
                (Some(cert), Some(key)) => Some((read(cert, "client_cert")?, read(key, "client_key")?)),
                (None, None) => None,
                _ => return Err("give both client_cert and client_key, or neither".into()),
            };
            Some(Tls { ca, client })
        } else {
            if c.ca_file.is_some() || c.client_cert.is_some() {
                return Err("ca_file and client certificates need an mqtts:// url".into());
            }
            None
        };
        let client_id = c.client_id.clone().unwrap_or_else(default_client_id);
        let display = format!("{}://{host}:{port}", if tls.is_some() { "mqtts" } else { "mqtt" });
        Ok(MqttSettings { host, port, display, client_id, username, password, tls, keep_alive: c.keep_alive })
    }

    /// A plain connection to a broker on `addr` (the embedded one).
    pub fn local(addr: std::net::SocketAddr) -> MqttSettings {
        MqttSettings {
            host: addr.ip().to_string(),
            port: addr.port(),
            display: format!("mqtt://{addr}"),
            client_id: default_client_id(),
            username: None,
            password: None,
            tls: None,
            keep_alive: default_keep_alive(),
        }
    }
}

fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { "carwatch".into() } else { format!("carwatch-{host}") }
}

/// A URL with any password replaced, for error messages.
pub fn redact(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Connection state shared between the `mqtt` thread and publishers.
#[derive(Debug, Default)]
pub struct Link {
    pub connected: AtomicBool,
    /// Bumped on every successful connect, so publishers can re-send retained state.
    pub generation: AtomicU64,
    /// QoS 1 publishes handed to rumqttc, written to the socket, and acknowledged by
    /// the broker. All three equal: nothing is in flight.
    pub requested: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
}

impl Link {
    fn settled(&self) -> bool {
        let requested = self.requested.load(Ordering::SeqCst);
        self.sent.load(Ordering::SeqCst) >= requested && self.acked.load(Ordering::SeqCst) >= requested
    }
}

/// A connected (or connecting) client.
pub struct Mqtt {
    client: Client,
    thread: Option<JoinHandle<()>>,
    pub link: Arc<Link>,
    status_topic: String,
}

impl Mqtt {
    /// Starts the client and its `mqtt` thread. Connection failures are retried in the
    /// background; this returns at once.
    pub fn start(settings: &MqttSettings, topics: &Topics) -> Result<Mqtt, String> {
        let mut opts = MqttOptions::new(settings.client_id.clone(), settings.host.clone(), settings.port);
        opts.set_keep_alive(settings.keep_alive.max(Duration::from_secs(5)));
        opts.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
        opts.set_last_will(LastWill::new(topics.status(), "offline", QoS::AtLeastOnce, true));
        if let Some(u) = &settings.username {
            opts.set_credentials(
                u.clone(),
                settings.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default(),
            );
        }
        if let Some(tls) = &settings.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client.clone(),
            }));
        }
        let (client, mut connection) = Client::new(opts, 256);
        let link = Arc::new(Link::default());
        let thread_link = Arc::clone(&link);
        let online_client = client.clone();
        let status = topics.status();
        let broker_url = settings.display.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                let mut backoff = Duration::from_millis(500);
                let mut last_error = String::new();
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            if ack.code == ConnectReturnCode::Success {
                                tracing::info!("connected to MQTT broker {broker_url}");
                                thread_link.connected.store(true, Ordering::SeqCst);
                                thread_link.generation.fetch_add(1, Ordering::SeqCst);
                                backoff = Duration::from_millis(500);
                                last_error.clear();
                                if online_client.try_publish(status.clone(), QoS::AtLeastOnce, true, "online").is_ok() {
                                    thread_link.requested.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                            thread_link.sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            thread_link.acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            thread_link.connected.store(false, Ordering::SeqCst);
                            let msg = e.to_string();
                            if msg != last_error {
                                tracing::warn!("MQTT broker {broker_url}: {msg}; retrying");
                                last_error = msg;
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                thread_link.connected.store(false, Ordering::SeqCst);
            })
            .map_err(|e| format!("cannot start mqtt thread: {e}"))?;
        Ok(Mqtt { client, thread: Some(thread), link, status_topic: topics.status() })
    }

    /// Queues a publish; never blocks. Fails when rumqttc's request queue is full (the
    /// broker is unreachable or slow), leaving the retry to the caller.
    pub fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload).map_err(|e| e.to_string())?;
        self.link.requested.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::SeqCst)
    }

    /// Publishes `offline`, waits (within `limit`) until the broker has acknowledged it
    /// and everything sent before it, then disconnects cleanly. (Disconnecting first
    /// could drop publishes still queued in rumqttc, and a clean disconnect suppresses
    /// the last will.)
    pub fn close(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let status = self.status_topic.clone();
        if self.publish(&status, true, b"offline".to_vec()).is_ok() {
            while !self.link.settled() && self.is_connected() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !self.link.settled() {
            let unacked =
                self.link.requested.load(Ordering::SeqCst).saturating_sub(self.link.acked.load(Ordering::SeqCst));
            tracing::warn!("closing MQTT with {unacked} publish(es) not acknowledged by the broker");
        }
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("MQTT did not finish disconnecting within {limit:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> MqttConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn urls_give_host_port_and_tls() {
        let s = MqttSettings::from_config(&config("url = \"mqtt://broker.local\"")).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.tls.is_none()), ("broker.local", 1883, true));
        let e = MqttSettings::from_config(&config("url = \"mqtts://b:8884\"")).err().unwrap();
        assert!(e.contains("ca_file"), "{e}");
        assert!(MqttSettings::from_config(&config("url = \"http://b\"")).is_err());
    }

    #[test]
    fn credentials_from_the_url_never_show() {
        let s = MqttSettings::from_config(&config("url = \"mqtt://cw:s3cret@b:1999\"")).unwrap();
        assert_eq!(s.username.as_deref(), Some("cw"));
        assert_eq!(s.password.as_ref().unwrap().expose(), "s3cret");
        assert!(!s.display.contains("s3cret"));
        assert_eq!(redact("mqtt://cw:s3cret@b:1999"), "mqtt://cw:***@b:1999");
    }
}
