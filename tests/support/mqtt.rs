//! A Mosquitto broker and an MQTT subscriber, both owned by one test.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn wait_listening(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Mosquitto on 127.0.0.1 and a free port; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Starts with `extra` appended to the listener's configuration.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = super::tempdir();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n{extra}\n");
        std::fs::write(&conf, text).unwrap();
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("mosquitto is not installed: run `make setup`");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        assert!(wait_listening(port, Duration::from_secs(10)), "mosquitto did not listen on {port}");
        Mosquitto { port, child, _dir: dir }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub at: Instant,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.payload))
    }
}

/// Subscribes to `prefix/#` and keeps everything it receives.
pub struct Subscriber {
    rx: Receiver<Message>,
    pub seen: Vec<Message>,
    client: Client,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        assert!(wait_listening(port, Duration::from_secs(10)), "no broker on {port}");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("test-{}-{port}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut connection) = Client::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (subscribed_tx, subscribed_rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                            at: Instant::now(),
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed_rx.recv_timeout(Duration::from_secs(10)).expect("subscription acknowledged");
        Subscriber { rx, seen: Vec::new(), client }
    }

    /// Waits (at most `limit`) for a message on `topic` for which `pred` holds; every
    /// message received on the way is kept in `seen`.
    pub fn wait_for(&mut self, topic: &str, limit: Duration, pred: impl Fn(&Message) -> bool) -> Option<Message> {
        if let Some(m) = self.seen.iter().find(|m| m.topic == topic && pred(m)) {
            return Some(m.clone());
        }
        let deadline = Instant::now() + limit;
        while let Ok(m) = self.rx.recv_deadline(deadline) {
            self.seen.push(m.clone());
            if m.topic == topic && pred(&m) {
                return Some(m);
            }
        }
        None
    }

    /// Collects whatever arrives during `span`.
    pub fn collect_for(&mut self, span: Duration) {
        let deadline = Instant::now() + span;
        while let Ok(m) = self.rx.recv_deadline(deadline) {
            self.seen.push(m);
        }
    }

    /// Messages seen so far on `topic`.
    pub fn on(&self, topic: &str) -> Vec<&Message> {
        self.seen.iter().filter(|m| m.topic == topic).collect()
    }

    pub fn disconnect(self) {
        let _ = self.client.disconnect();
    }
}
