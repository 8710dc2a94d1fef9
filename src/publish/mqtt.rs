//! The MQTT connection: options from config, TLS, last will, and the `mqtt` thread that
//! drives rumqttc's event loop.
//!
//! rumqttc reconnects when its connection is polled again after an error, so the `mqtt`
//! thread never stops polling; it waits (with backoff, logging every failed attempt with
//! the broker's reason) between attempts so that a dead broker does not spin a core.
//!
//! Delivery is ours to guarantee: with a clean session rumqttc drops whatever was queued
//! or unacknowledged when a connection fails, and a PUBACK names only a packet id. So the
//! `mqtt` thread assigns packet ids itself: it takes [`Command`]s from the publisher,
//! gives each QoS 1 publish a free id, inserts it into the event loop between polls, and
//! reports each acknowledgement with the [`Tag`] it was sent with. A PUBACK therefore
//! maps to exactly one message; after a reconnect the publisher sends again whatever was
//! not acknowledged. `MqttOptions` is never logged: its Debug output has the password.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rumqttc::{
    Client, ConnectReturnCode, Connection, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    RecvTimeoutError, Request, TlsConfiguration, Transport,
};
use serde::Deserialize;

use super::Topics;
use crate::values::{Credentials, Secret, seconds};

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
    /// Alerts set over MQTT are read on `{alerts_prefix}/alerts/set/+` [default:
    /// `topic_prefix`]: instances with prefixes of their own give one in common.
    #[serde(default)]
    pub alerts_prefix: Option<String>,
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
        let mut url =
            url::Url::parse(&c.url).map_err(|e| format!("url `{}` is not a valid URL: {e}", redact(&c.url)))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => return Err(format!("url scheme `{other}` is not supported: use mqtt:// or mqtts://")),
        };
        let host = url.host_str().ok_or("url has no host")?.to_string();
        let port = url.port().unwrap_or(default_port);
        let Credentials { username, password } =
            Credentials::resolve(&mut url, c.username.as_deref(), c.password.as_ref(), c.password_file.as_deref())?;
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

    /// rumqttc's options for a connection whose client id is ours with `suffix` (each
    /// connection to a broker needs its own), with `will` if given.
    pub fn options(&self, suffix: &str, will: Option<LastWill>) -> MqttOptions {
        let mut opts = MqttOptions::new(format!("{}{suffix}", self.client_id), self.host.clone(), self.port);
        opts.set_keep_alive(self.keep_alive.max(Duration::from_secs(5)));
        opts.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
        opts.set_inflight(PKIDS);
        opts.set_clean_session(true);
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        if let Some(u) = &self.username {
            opts.set_credentials(u.clone(), self.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client.clone(),
            }));
        }
        opts
    }

    /// A plain connection to a broker on `addr` (the embedded one), as `account`.
    pub fn local(addr: std::net::SocketAddr, account: Option<(String, Secret)>) -> MqttSettings {
        let (username, password) = account.map_or((None, None), |(u, p)| (Some(u), Some(p)));
        MqttSettings {
            host: addr.ip().to_string(),
            port: addr.port(),
            display: format!("mqtt://{addr}"),
            client_id: default_client_id(),
            username,
            password,
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

/// What a message is, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A hit: its outbox sequence number.
    Hit(u64),
    /// The `offline` status sent at shutdown.
    Offline,
    /// Status and other state, superseded by the next one.
    State,
    /// Sent at QoS 0, never acknowledged nor sent again (sightings): worth less than
    /// anything else, and it never takes a place in the in-flight window.
    Fleeting,
}

/// A publish for the `mqtt` thread: QoS 1, except [`Tag::Fleeting`] ones.
#[derive(Debug)]
pub struct Command {
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub tag: Tag,
}

/// What the `mqtt` thread tells the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A new session began: nothing sent before it will be acknowledged.
    Connected,
    Acked(Tag),
}

/// Connection state, for status and metrics.
#[derive(Debug, Default)]
pub struct Link {
    pub connected: AtomicBool,
    /// Successful connections so far.
    pub connects: AtomicU64,
}

/// Most QoS 1 messages in flight at once.
pub const WINDOW: usize = 32;
/// Packet ids we use: 1..=PKIDS (rumqttc's in-flight table has max_inflight + 1 slots).
const PKIDS: u16 = 64;

/// The client side of the connection, held by the publisher.
pub struct Mqtt {
    client: Client,
    commands: Sender<Command>,
    pub reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
    pub link: Arc<Link>,
}

impl Mqtt {
    /// Starts the client and its `mqtt` thread. Connection failures are retried in the
    /// background; this returns at once.
    pub fn start(settings: &MqttSettings, topics: &Topics) -> Result<Mqtt, super::PublishError> {
        let will = LastWill::new(topics.status(), "offline", QoS::AtLeastOnce, true);
        let (client, connection) = Client::new(settings.options("", Some(will)), 16);
        let (commands, commands_rx) = crossbeam_channel::bounded(1024);
        let (reports_tx, reports) = crossbeam_channel::unbounded();
        let link = Arc::new(Link::default());
        let transport = Driver {
            connection,
            commands: commands_rx,
            reports: reports_tx,
            link: Arc::clone(&link),
            broker: settings.display.clone(),
            status_topic: topics.status(),
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            next_pkid: 1,
        };
        let thread = crate::threads::spawn("mqtt", move || transport.run())
            .map_err(|source| super::PublishError::Spawn { thread: "mqtt", source })?;
        Ok(Mqtt { client, commands, reports, thread: Some(thread), link })
    }

    /// Hands a QoS 1 publish to the `mqtt` thread; never blocks. Fails when its queue is
    /// full, leaving the retry (or the drop, for superseded state) to the caller.
    pub fn publish(&self, topic: String, retain: bool, payload: Vec<u8>, tag: Tag) -> Result<(), Command> {
        self.commands.try_send(Command { topic, retain, payload, tag }).map_err(|e| match e {
            TrySendError::Full(c) | TrySendError::Disconnected(c) => c,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::SeqCst)
    }

    /// Disconnects cleanly and waits (at most `limit`) for the `mqtt` thread to end.
    pub fn disconnect(mut self, limit: Duration) {
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + limit;
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

/// The `mqtt` thread's state.
struct Driver {
    connection: Connection,
    commands: Receiver<Command>,
    reports: Sender<Report>,
    link: Arc<Link>,
    broker: String,
    status_topic: String,
    /// Commands taken from the channel, not yet handed to rumqttc.
    queue: VecDeque<Command>,
    /// Packet id -> tag of each unacknowledged publish.
    inflight: HashMap<u16, Tag>,
    next_pkid: u16,
}

/// Longest pause between connection attempts: short enough that hits flow again soon
/// after a broker returns, long enough not to hammer a broker that refuses us.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest a connected poll waits before the thread looks for new commands.
const POLL: Duration = Duration::from_millis(20);
/// A poll while not connected may be establishing a connection: never cut it short.
const CONNECT_POLL: Duration = Duration::from_secs(30);
/// State messages kept while the broker is away (they are superseded anyway).
const STATE_QUEUE: usize = 1000;

impl Driver {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        let mut attempt: u32 = 0;
        loop {
            crate::threads::checkpoint();
            self.take_commands();
            let connected = self.link.connected.load(Ordering::SeqCst);
            if connected {
                self.inject();
            }
            let event = self.connection.recv_timeout(if connected { POLL } else { CONNECT_POLL });
            match event {
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                    tracing::info!("connected to MQTT broker {}", self.broker);
                    attempt = 0;
                    backoff = Duration::from_millis(500);
                    // A new session: nothing in flight will be acknowledged, and hits
                    // queued here are all sent again by the publisher.
                    self.inflight.clear();
                    self.queue.retain(|c| !matches!(c.tag, Tag::Hit(_)));
                    self.queue.push_front(Command {
                        topic: self.status_topic.clone(),
                        retain: true,
                        payload: b"online".to_vec(),
                        tag: Tag::State,
                    });
                    self.link.connected.store(true, Ordering::SeqCst);
                    self.link.connects.fetch_add(1, Ordering::SeqCst);
                    let _ = self.reports.send(Report::Connected);
                }
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    self.failed(&format!("broker refused the connection: {:?}", ack.code), &mut attempt, &mut backoff);
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(tag) = self.inflight.remove(&ack.pkid) {
                        let _ = self.reports.send(Report::Acked(tag));
                    }
                }
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                    self.link.connected.store(false, Ordering::SeqCst);
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.failed(&e.to_string(), &mut attempt, &mut backoff),
            }
        }
    }

    /// One failed attempt: logged once, then a pause before rumqttc tries again.
    fn failed(&mut self, reason: &str, attempt: &mut u32, backoff: &mut Duration) {
        self.link.connected.store(false, Ordering::SeqCst);
        self.inflight.clear();
        *attempt += 1;
        tracing::warn!(
            "MQTT broker {}: {reason}; attempt {attempt} failed, retrying in {:.1} s",
            self.broker,
            backoff.as_secs_f64()
        );
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    fn take_commands(&mut self) {
        while let Ok(c) = self.commands.try_recv() {
            self.queue.push_back(c);
        }
        // While the broker is away, keep only the newest state messages.
        let superseded = |c: &Command| matches!(c.tag, Tag::State | Tag::Fleeting);
        let states = self.queue.iter().filter(|c| superseded(c)).count();
        if states > STATE_QUEUE {
            let mut excess = states - STATE_QUEUE;
            self.queue.retain(|c| {
                if excess > 0 && superseded(c) {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Hands queued commands to rumqttc, each with a packet id of ours.
    fn inject(&mut self) {
        while self.inflight.len() < WINDOW {
            let Some(c) = self.queue.pop_front() else { return };
            if c.tag == Tag::Fleeting {
                let mut publish = Publish::new(c.topic, QoS::AtMostOnce, c.payload);
                publish.retain = c.retain;
                self.connection.eventloop.pending.push_back(Request::Publish(publish));
                continue;
            }
            let pkid = self.free_pkid();
            let mut publish = Publish::new(c.topic, QoS::AtLeastOnce, c.payload);
            publish.retain = c.retain;
            publish.pkid = pkid;
            self.inflight.insert(pkid, c.tag);
            self.connection.eventloop.pending.push_back(Request::Publish(publish));
        }
    }

    fn free_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_pkid;
            self.next_pkid = if p >= PKIDS { 1 } else { p + 1 };
            if !self.inflight.contains_key(&p) {
                return p;
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
        // Percent-encoded, as the camera URLs are (the review found `p%40ss` sent as is).
        let s = MqttSettings::from_config(&config("url = \"mqtt://c%40w:p%40ss%2Bx@b\"")).unwrap();
        assert_eq!((s.username.as_deref(), s.password.as_ref().unwrap().expose()), (Some("c@w"), "p@ss+x"));
        assert_eq!(redact("mqtt://cw:s3cret@b:1999"), "mqtt://cw:***@b:1999");
    }
}
