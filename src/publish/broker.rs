//! The embedded MQTT broker, for when no `[mqtt]` broker is configured.
//!
//! `make run` and a single-box install then work on their own: carwatch starts rumqttd
//! on `broker.listen` (127.0.0.1:1883 by default) and publishes to it like to any
//! broker. Operators with a broker of their own configure `[mqtt]` instead.
//!
//! Without `username`, anyone who reaches `listen` may read hits and publish on every
//! topic: fine on the loopback default, not on a network address. A non-loopback
//! `listen` without credentials therefore starts with a loud warning (it is not
//! refused: a closed network may be what the operator intends); with `username` and
//! `password_file` the broker accepts only that account, and carwatch connects with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use serde::Deserialize;

use super::PublishError;
use crate::values::Secret;

/// `[broker]`: the embedded broker (used only without `[mqtt]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The one account the broker accepts; unset: anyone who can connect.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding that account's password (required with `username`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl BrokerConfig {
    /// The account, with its password read; `Err` names what is missing.
    pub fn account(&self) -> Result<Option<(String, Secret)>, String> {
        match (&self.username, &self.password_file) {
            (None, None) => Ok(None),
            (Some(u), Some(f)) => Ok(Some((u.clone(), Secret::from_file(f)?))),
            _ => Err("give both username and password_file, or neither".into()),
        }
    }

    /// A warning when the broker would be open to the network without a password.
    pub fn exposure_warning(&self) -> Option<String> {
        (!self.listen.ip().is_loopback() && self.username.is_none()).then(|| {
            format!(
                "the embedded MQTT broker listens on {} without authentication: anyone who reaches it can read hits and publish to carwatch's topics. Set [broker] username and password_file, or listen on 127.0.0.1",
                self.listen
            )
        })
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { listen: default_listen(), username: None, password_file: None }
    }
}

/// Starts rumqttd on `listen` (thread `broker`), accepting only `account` when given,
/// and waits until it answers.
pub fn start(listen: SocketAddr, account: Option<&(String, Secret)>) -> Result<(), PublishError> {
    // Fail with a clear message rather than inside rumqttd's runtime.
    drop(TcpListener::bind(listen).map_err(|source| PublishError::BrokerListen { listen, source })?);
    let text = format!(
        r#"
id = 0
[router]
max_connections = 1024
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "carwatch-embedded"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 33554432
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let mut config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| PublishError::Broker(format!("its config: {e}")))?;
    if let (Some((user, password)), Some(server)) = (account, config.v4.as_mut().and_then(|v| v.get_mut("1"))) {
        server.connections.auth = Some([(user.clone(), password.expose().to_string())].into_iter().collect());
    }
    crate::threads::spawn("broker", move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!("embedded MQTT broker stopped: {e}");
        }
    })
    .map_err(|source| PublishError::Spawn { thread: "broker", source })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers_mqtt(listen, account) {
        if Instant::now() > deadline {
            return Err(PublishError::BrokerSilent(listen));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("no [mqtt] broker configured: started the embedded MQTT broker on {listen}");
    Ok(())
}

/// Whether an MQTT broker on `addr` answers a CONNECT with a CONNACK (accepting or,
/// with authentication on, refusing it). A complete exchange, not a bare TCP probe:
/// brokers log half-open connections as errors.
fn answers_mqtt(addr: SocketAddr, account: Option<&(String, Secret)>) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let Some(packet) = connect_packet("carwatch-probe", account.map(|(u, p)| (u.as_str(), p.expose()))) else {
        return false;
    };
    let mut ack = [0u8; 4];
    let ok = s.write_all(&packet).is_ok() && s.read_exact(&mut ack).is_ok() && ack[0] == 0x20;
    let _ = s.write_all(&[0xe0, 0]); // DISCONNECT
    ok
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s), with credentials if given;
/// `None` if it would not fit the one-byte remaining length used here.
fn connect_packet(client_id: &str, account: Option<(&str, &str)>) -> Option<Vec<u8>> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10];
    let field = |body: &mut Vec<u8>, f: &str| {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
    };
    field(&mut body, client_id);
    if let Some((user, password)) = account {
        body[7] |= 0xc0;
        field(&mut body, user);
        field(&mut body, password);
    }
    let len = u8::try_from(body.len()).ok().filter(|&l| l < 128)?;
    let mut packet = vec![0x10, len];
    packet.extend(body);
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_broker_on_the_network_is_warned_about() {
        let open: BrokerConfig = toml::from_str("listen = \"0.0.0.0:1883\"").unwrap();
        assert!(open.exposure_warning().unwrap().contains("without authentication"));
        assert!(BrokerConfig::default().exposure_warning().is_none(), "loopback is fine");
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!("listen = \"0.0.0.0:1883\"\nusername = \"cw\"\npassword_file = \"{}\"", pw.display());
        let locked: BrokerConfig = toml::from_str(&text).unwrap();
        assert!(locked.exposure_warning().is_none());
        let (user, password) = locked.account().unwrap().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("cw", "s3cret"));
        let half: BrokerConfig = toml::from_str("username = \"cw\"").unwrap();
        assert!(half.account().unwrap_err().contains("both"));
    }

    /// With an account, the broker refuses anyone else, and lets the account in.
    #[test]
    fn the_account_is_required_when_set() {
        let listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let account = ("cw".to_string(), Secret::new("s3cret"));
        start(listen, Some(&account)).unwrap();
        let connack = |user: Option<(&str, &str)>| -> u8 {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&connect_packet("t", user).unwrap()).unwrap();
            let mut ack = [0u8; 4];
            match s.read_exact(&mut ack) {
                Ok(()) => ack[3],
                Err(_) => 255,
            }
        };
        assert_ne!(connack(None), 0, "anonymous refused");
        assert_ne!(connack(Some(("cw", "wrong"))), 0, "a wrong password refused");
        assert_eq!(connack(Some(("cw", "s3cret"))), 0, "the account accepted");
    }
}
