//! The embedded MQTT broker, for when no `[mqtt]` broker is configured.
//!
//! `make run` and a single-box install then work on their own: carwatch starts rumqttd
//! on `broker.listen` (127.0.0.1:1883 by default) and publishes to it like to any
//! broker. Operators with a broker of their own configure `[mqtt]` instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[broker]`: the embedded broker (used only without `[mqtt]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { listen: default_listen() }
    }
}

/// Starts rumqttd on `listen` (thread `broker`) and waits until it accepts connections.
pub fn start(listen: SocketAddr) -> Result<(), String> {
    // Fail with a clear message rather than inside rumqttd's runtime.
    drop(TcpListener::bind(listen).map_err(|e| {
        format!("cannot listen on {listen} for the embedded MQTT broker: {e}. Is another broker running there? Configure [mqtt] url to use it, or set [broker] listen")
    })?);
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
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| format!("embedded broker config: {e}"))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start broker thread: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers_mqtt(listen) {
        if Instant::now() > deadline {
            return Err(format!("embedded MQTT broker did not answer on {listen} within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("no [mqtt] broker configured: started the embedded MQTT broker on {listen}");
    Ok(())
}

/// Whether an MQTT broker on `addr` answers a CONNECT with a CONNACK. A complete
/// exchange, not a bare TCP probe: brokers log half-open connections as errors.
fn answers_mqtt(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "carwatch-probe".
    let id = b"carwatch-probe";
    let mut packet =
        vec![0x10, (10 + 2 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, id.len() as u8];
    packet.extend_from_slice(id);
    let mut ack = [0u8; 4];
    let ok = s.write_all(&packet).is_ok() && s.read_exact(&mut ack).is_ok() && ack[0] == 0x20 && ack[3] == 0;
    let _ = s.write_all(&[0xe0, 0]); // DISCONNECT
    ok
}
