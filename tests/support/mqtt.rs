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

/// Mosquitto on 127.0.0.1 and a free port; killed on drop. Can be killed and started
/// again on the same port, which is how tests make a broker vanish and come back.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    conf: PathBuf,
    pub dir: tempfile::TempDir,
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed: run `make setup`")
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_, port| format!("listener {port} 127.0.0.1\nallow_anonymous true\n"))
    }

    /// Starts with the listener section `config(dir, port)` returns (the directory is the
    /// broker's own, for certificates and password files).
    pub fn start_with(config: impl FnOnce(&std::path::Path, u16) -> String) -> Mosquitto {
        let dir = super::tempdir();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text = format!("persistence false\nlog_dest stderr\n{}\n", config(dir.path(), port));
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto { port, child: None, conf, dir };
        m.restart();
        m
    }

    /// Kills the broker (as a crash would: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again with the same configuration and port.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join(format!("mosquitto-{}.log", free_port()))).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        assert!(wait_listening(self.port, Duration::from_secs(10)), "mosquitto did not listen on {}", self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command that must succeed (test fixtures: openssl, mosquitto_passwd).
pub fn sh(program: &str, args: &[&str], dir: &std::path::Path) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A certificate authority and a server certificate for 127.0.0.1 signed by it, made
/// with openssl in `dir`: `<name>-ca.pem`, `<name>-server.pem`, `<name>-server.key`.
pub fn make_ca(dir: &std::path::Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}-server.key");
    let csr = format!("{name}-server.csr");
    let cert = format!("{name}-server.pem");
    let ext = format!("{name}-ext.cnf");
    std::fs::write(dir.join(&ext), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
        dir,
    );
    sh(
        "openssl",
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
        dir,
    );
    sh(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
        dir,
    );
    // Mosquitto started as root drops to its own user, which must read the (throwaway) key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    /// The payload as text (lossy: see `bytes` for binary ones).
    pub payload: String,
    pub bytes: Vec<u8>,
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
        Subscriber::connect_as(port, filter, None)
    }

    /// Connects with `credentials` (user, password). The subscription is renewed after
    /// every reconnection, so the subscriber outlives broker restarts.
    pub fn connect_as(port: u16, filter: &str, credentials: Option<(&str, &str)>) -> Subscriber {
        assert!(wait_listening(port, Duration::from_secs(10)), "no broker on {port}");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("test-{}-{port}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(64 << 20, 64 << 20);
        if let Some((u, p)) = credentials {
            opts.set_credentials(u, p);
        }
        let (client, mut connection) = Client::new(opts, 64);
        let resubscribe = client.clone();
        let filter_owned = filter.to_string();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (subscribed_tx, subscribed_rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscribe.try_subscribe(filter_owned.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            bytes: p.payload.to_vec(),
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

    /// Publishes `payload` retained at QoS 1, as an operator's tool would.
    pub fn publish_retained(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.to_vec()).expect("queued");
    }

    /// Publishes `payload` at QoS 1, not retained.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).expect("queued");
    }
}

/// A broker of our own that never acknowledges hits (topics with `/hits/`) and
/// acknowledges everything else: what a broker under load or a lost PUBACK looks like
/// to carwatch, kept up for as long as a test needs. Records every PUBLISH it receives.
pub struct HoldingBroker {
    pub port: u16,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Instant)>>>,
}

impl HoldingBroker {
    pub fn start() -> HoldingBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || serve_holding(stream, log));
            }
        });
        HoldingBroker { port, received }
    }

    /// Payloads received on `topic`, with when.
    pub fn on(&self, topic: &str) -> Vec<(String, Instant)> {
        let r = self.received.lock().unwrap();
        r.iter().filter(|(t, _, _)| t == topic).map(|(_, p, at)| (p.clone(), *at)).collect()
    }
}

fn serve_holding(mut s: TcpStream, log: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Instant)>>>) {
    use std::io::{Read, Write};
    loop {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            len |= ((b[0] & 0x7f) as usize) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let reply: Option<Vec<u8>> = match first[0] >> 4 {
            1 => Some(vec![0x20, 2, 0, 0]),
            3 if body.len() >= 2 => {
                let qos = (first[0] >> 1) & 3;
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = String::from_utf8_lossy(&body[2..2 + tlen]).into_owned();
                let at = 2 + tlen + if qos > 0 { 2 } else { 0 };
                let payload = String::from_utf8_lossy(&body[at..]).into_owned();
                let pkid = (qos > 0).then(|| [body[2 + tlen], body[3 + tlen]]);
                let hold = topic.contains("/hits/");
                log.lock().unwrap().push((topic, payload, Instant::now()));
                pkid.filter(|_| !hold).map(|p| vec![0x40, 2, p[0], p[1]])
            }
            12 => Some(vec![0xd0, 0]),
            14 => return,
            _ => None,
        };
        if let Some(r) = reply
            && s.write_all(&r).is_err()
        {
            return;
        }
    }
}
