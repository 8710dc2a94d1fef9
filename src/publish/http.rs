//! The web view and the scrape endpoints, on `[http] listen` (thread `http`).
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the page: cameras, the last 50 hits with their images, active alerts |
//! | `/api/cameras`, `/api/hits`, `/api/alerts` | the same as JSON |
//! | `/metrics` | Prometheus ([`crate::metrics`]) |
//! | `/health` | 200 while inference goes round and every thread runs, else 503 |
//! | `/snapshots/...` | hit snapshots, files under the snapshot directory only |
//! | `/thumbnails/...` | sighting thumbnails (retrospective hits' images) |
//!
//! The page is rendered here, from the [`Board`] the `publish` thread keeps, with its
//! stylesheet inside the binary: no build step, no CDN, nothing fetched from elsewhere;
//! it reloads itself every few seconds. Off by default. A `listen` other machines can
//! reach needs `username` and `password_file` (HTTP Basic) unless `allow_anonymous`
//! says otherwise: the page shows where wanted vehicles were seen.
//!
//! Each connection is answered on a short-lived thread of its own, at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once), and each has 2 seconds to send
//! its request and read the answer: slow or many clients cannot make threads or memory
//! grow, nor hold up a health check for long.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::values::Secret;

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to serve the web view, `/api`, `/metrics` and `/health`; off when absent
    /// (`[metrics] listen` is the older name for the same thing).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTP Basic account: both or neither. Required for a `listen` other machines can
    /// reach, unless `allow_anonymous`.
    #[serde(default)]
    pub username: Option<String>,
    /// The account's password, in a file of its own (relative: a systemd credential,
    /// else beside the config file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Serve a non-loopback `listen` to anyone who reaches it, without an account.
    #[serde(default)]
    pub allow_anonymous: bool,
}

impl HttpConfig {
    /// `[http]` as written: an account is whole, and a reachable listen is guarded.
    pub fn check(&self) -> Result<(), String> {
        if self.username.is_some() != self.password_file.is_some() {
            return Err("set both username and password_file, or neither".into());
        }
        match self.listen {
            Some(listen) => self.guards(listen, "listen"),
            None => Ok(()),
        }
    }

    /// Whether `listen` (named `key` in messages) may be served as configured.
    pub fn guards(&self, listen: SocketAddr, key: &str) -> Result<(), String> {
        if listen.ip().is_loopback() || self.username.is_some() || self.allow_anonymous {
            return Ok(());
        }
        Err(format!(
            "{key} = \"{listen}\" is reachable from other machines and the page shows where wanted vehicles were seen: set [http] username and password_file, or write allow_anonymous = true under [http] to serve it to anyone, or listen on 127.0.0.1"
        ))
    }

    /// The account, its password read from `password_file`.
    pub fn account(&self) -> Result<Option<(String, Secret)>, String> {
        match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => Ok(Some((user.clone(), Secret::from_file(file)?))),
            _ => Ok(None),
        }
    }
}

/// How many hits the page and `/api/hits` show.
pub const RECENT_HITS: usize = 50;

/// What the web view shows, kept by the `publish` thread as it publishes (the same
/// payloads as on MQTT) and read by the `http` thread.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<BoardState>,
}

#[derive(Debug, Default, Clone)]
struct BoardState {
    cameras: BTreeMap<String, Value>,
    /// Newest first.
    hits: VecDeque<Value>,
    alerts: Value,
}

impl Board {
    /// A board listing `cameras` from the start, so a camera that never connects is
    /// shown (as starting) rather than missing.
    pub fn new(cameras: &[String]) -> Arc<Board> {
        let state = BoardState {
            cameras: cameras.iter().map(|c| (c.clone(), Value::Null)).collect(),
            hits: VecDeque::new(),
            alerts: Value::Array(Vec::new()),
        };
        Arc::new(Board { inner: Mutex::new(state) })
    }

    /// A camera's status as last published (`cameras/{name}/status`).
    pub fn camera(&self, name: &str, status: &Value) {
        self.lock().cameras.insert(name.to_string(), status.clone());
    }

    /// A hit as published (its inline image, if any, left out).
    pub fn hit(&self, payload: &Value) {
        let mut hit = payload.clone();
        if let Some(o) = hit.as_object_mut() {
            o.remove("snapshot_jpeg_base64");
        }
        let mut state = self.lock();
        state.hits.push_front(hit);
        state.hits.truncate(RECENT_HITS);
    }

    /// The active alerts as last published (`alerts/active`).
    pub fn alerts(&self, list: &Value) {
        self.lock().alerts = list.clone();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        // A panic elsewhere while holding it left plain data: still fine to show.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> BoardState {
        self.lock().clone()
    }
}

/// Where the images the page links to may come from.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The snapshot directory (`/snapshots/...`).
    pub snapshots: PathBuf,
    /// The sightings' thumbnail directory (`/thumbnails/...`), when sightings are kept.
    pub thumbnails: Option<PathBuf>,
}

/// Why the web view could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot serve http on {listen}: {source}; change or remove [http] listen (or [metrics] listen)")]
    Listen { listen: SocketAddr, source: std::io::Error },
    #[error("[http]: {0}")]
    Account(String),
    #[error("cannot start thread `http`: {source}")]
    Spawn { source: std::io::Error },
}

/// Everything a request is answered from.
struct Site {
    metrics: Arc<Metrics>,
    board: Arc<Board>,
    roots: Roots,
    stale: Duration,
    /// `Authorization` header value expected, when an account is set.
    expected: Option<String>,
}

/// Serves on `listen` (thread `http`) until the process ends.
pub fn serve(
    listen: SocketAddr,
    config: &HttpConfig,
    metrics: Arc<Metrics>,
    board: Arc<Board>,
    roots: Roots,
) -> Result<(), HttpError> {
    config.guards(listen, "listen").map_err(HttpError::Account)?;
    let expected = config.account().map_err(HttpError::Account)?.map(|(user, password)| {
        let pair = format!("{user}:{}", password.expose());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    });
    let server = std::net::TcpListener::bind(listen).map_err(|source| HttpError::Listen { listen, source })?;
    let site = Arc::new(Site { metrics, board, roots, stale: Duration::from_secs(30), expected });
    let open = Arc::new(AtomicUsize::new(0));
    crate::threads::spawn("http", move || {
        for stream in server.incoming() {
            let Ok(stream) = stream else { continue };
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (site, mine) = (Arc::clone(&site), Arc::clone(&open));
            let spawned = std::thread::Builder::new().name("http-client".into()).spawn(move || {
                answer(stream, &site);
                mine.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })
    .map_err(|source| HttpError::Spawn { source })?;
    tracing::info!("web view on http://{listen}/ (and /metrics, /health, /api/...)");
    Ok(())
}

/// Most connections answered at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest a client may take to send its request line and headers, and to read.
const CLIENT_LIMIT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

struct Response {
    status: u16,
    kind: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

impl Response {
    fn ok(kind: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status: 200, kind, body: body.into(), extra: "" }
    }

    fn text(status: u16, body: &str) -> Response {
        Response { status, kind: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), extra: "" }
    }

    fn json(v: &Value) -> Response {
        Response::ok("application/json", serde_json::to_vec_pretty(v).unwrap_or_default())
    }
}

fn answer(mut stream: std::net::TcpStream, site: &Site) {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(CLIENT_LIMIT));
    let _ = stream.set_write_timeout(Some(CLIENT_LIMIT));
    let deadline = std::time::Instant::now() + CLIENT_LIMIT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST || std::time::Instant::now() > deadline {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let r = respond(site, &head);
    let reason = match r.status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let top = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{}Connection: close\r\n\r\n",
        r.status,
        r.kind,
        r.body.len(),
        r.extra
    );
    let body: &[u8] = if head.starts_with("HEAD ") { &[] } else { &r.body };
    let _ = stream.write_all(top.as_bytes()).and_then(|()| stream.write_all(body));
}

/// The answer to the request whose head (request line and headers) is `head`.
fn respond(site: &Site, head: &str) -> Response {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    if let Some(expected) = &site.expected {
        let given = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim());
        if !given.is_some_and(|g| same(g.as_bytes(), expected.as_bytes())) {
            return Response {
                extra: "WWW-Authenticate: Basic realm=\"carwatch\", charset=\"UTF-8\"\r\n",
                ..Response::text(401, "sign in with [http] username and the password in password_file\n")
            };
        }
    }
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    let path = target.split('?').next().unwrap_or("/");
    match path {
        "/" => Response::ok("text/html; charset=utf-8", page(&site.board.read(), &site.roots)),
        "/style.css" => Response::ok("text/css; charset=utf-8", STYLE),
        "/metrics" => Response::ok("application/openmetrics-text; version=1.0.0; charset=utf-8", site.metrics.render()),
        "/health" => {
            let (ok, body) = crate::metrics::health(&site.metrics, site.stale);
            Response::text(if ok { 200 } else { 503 }, &body)
        }
        "/api/cameras" => Response::json(&serde_json::to_value(site.board.read().cameras).unwrap_or_default()),
        "/api/hits" => Response::json(&Value::Array(site.board.read().hits.into())),
        "/api/alerts" => Response::json(&site.board.read().alerts),
        _ => {
            let file = if let Some(rest) = path.strip_prefix("/snapshots/") {
                inside(&site.roots.snapshots, rest)
            } else if let (Some(rest), Some(root)) = (path.strip_prefix("/thumbnails/"), &site.roots.thumbnails) {
                inside(root, rest)
            } else {
                None
            };
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(bytes) => Response::ok("image/jpeg", bytes),
                None => {
                    Response::text(404, "not found: try /, /api/cameras, /api/hits, /api/alerts, /metrics or /health\n")
                }
            }
        }
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `.jpg` file `rest` names under `root`, if it is one: plain names only (no `..`,
/// no absolute or escaped paths), and still under `root` once links are followed.
fn inside(root: &Path, rest: &str) -> Option<PathBuf> {
    let rel = Path::new(rest);
    if rest.is_empty() || rest.contains(['%', '\\']) || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    if rel.extension().is_none_or(|e| e != "jpg") {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let file = root.join(rel).canonicalize().ok()?;
    (file.starts_with(&root) && file.is_file()).then_some(file)
}

/// The link for an image the payload names by file path, if it lies under a root.
fn image_link(path: &str, roots: &Roots) -> Option<String> {
    let p = Path::new(path);
    let under = |root: &Path, prefix: &str| {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        p.strip_prefix(&root).ok().map(|rel| format!("{prefix}{}", rel.to_string_lossy()))
    };
    under(&roots.snapshots, "/snapshots/")
        .or_else(|| roots.thumbnails.as_deref().and_then(|t| under(t, "/thumbnails/")))
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn number(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_f64).map(|x| format!("{x:.1}")).unwrap_or_default()
}

fn thumbnail(hit: &Value, roots: &Roots, class: &str) -> String {
    match hit.get("snapshot").and_then(Value::as_str).and_then(|p| image_link(p, roots)) {
        Some(src) => format!(
            "<img class=\"{class}\" src=\"{}\" alt=\"{} on {}\" onload=\"this.dataset.loaded=1\">",
            esc(&src),
            esc(field(hit, "make")),
            esc(field(hit, "camera"))
        ),
        None => "<span class=\"none\">no image</span>".into(),
    }
}

/// The page: cameras, recent hits, active alerts.
fn page(state: &BoardState, roots: &Roots) -> String {
    let mut cameras = String::new();
    for (name, s) in &state.cameras {
        let last = state.hits.iter().find(|h| field(h, "camera") == name);
        let state_name = if s.is_null() { "starting" } else { field(s, "state") };
        cameras.push_str(&format!(
            "<tr class=\"camera\" data-camera=\"{n}\"><td>{n}</td><td class=\"state {st}\">{st}</td><td>{fi}</td><td>{fa}</td><td>{d}</td><td>{img}</td></tr>\n",
            n = esc(name),
            st = esc(state_name),
            fi = number(s, "fps_in"),
            fa = number(s, "fps_analysed"),
            d = s.get("dropped").and_then(Value::as_u64).unwrap_or(0),
            img = last.map(|h| thumbnail(h, roots, "last")).unwrap_or_default(),
        ));
    }
    let mut hits = String::new();
    for h in &state.hits {
        let retro = if h.get("retrospective").and_then(Value::as_bool).unwrap_or(false) { " (earlier)" } else { "" };
        hits.push_str(&format!(
            "<tr class=\"hit\"><td>{t}{retro}</td><td>{c}</td><td>{a}</td><td>{colour} {make} {model} ({p:.0}%)</td><td>{img}</td></tr>\n",
            t = esc(field(h, "time")),
            c = esc(field(h, "camera")),
            a = esc(field(h, "alert_id")),
            colour = esc(field(h, "colour")),
            make = esc(field(h, "make")),
            model = esc(field(h, "model")),
            p = h.get("confidence").and_then(Value::as_f64).unwrap_or(0.0) * 100.0,
            img = thumbnail(h, roots, "thumb"),
        ));
    }
    if hits.is_empty() {
        hits.push_str("<tr><td colspan=\"5\" class=\"none\">no hits yet</td></tr>\n");
    }
    let mut alerts = String::new();
    for a in state.alerts.as_array().into_iter().flatten() {
        let wanted: Vec<&str> =
            ["colour", "make", "model", "view"].iter().map(|k| field(a, k)).filter(|s| !s.is_empty()).collect();
        alerts.push_str(&format!(
            "<tr class=\"alert\"><td>{id}</td><td>{w}</td><td>{src}</td><td>{note}</td></tr>\n",
            id = esc(field(a, "id")),
            w = esc(&wanted.join(" ")),
            src = esc(field(a, "source")),
            note = esc(field(a, "note")),
        ));
    }
    if alerts.is_empty() {
        alerts.push_str("<tr><td colspan=\"4\" class=\"none\">no active alerts</td></tr>\n");
    }
    format!(
        "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>carwatch</title><link rel=\"stylesheet\" href=\"/style.css\"></head>
<body><h1>carwatch</h1>
<h2>Cameras</h2>
<table id=\"cameras\"><tr><th>camera</th><th>state</th><th>frames/s in</th><th>analysed/s</th><th>dropped</th><th>last hit</th></tr>
{cameras}</table>
<h2>Active alerts</h2>
<table id=\"alerts\"><tr><th>alert</th><th>wanted</th><th>source</th><th>note</th></tr>
{alerts}</table>
<h2>Last {RECENT_HITS} hits</h2>
<table id=\"hits\"><tr><th>time</th><th>camera</th><th>alert</th><th>vehicle</th><th>image</th></tr>
{hits}</table>
<p class=\"foot\">carwatch {version} &middot; <a href=\"/api/hits\">/api/hits</a> &middot; <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/health\">/health</a></p>
</body></html>
",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// Seconds between the page's own reloads.
const REFRESH_S: u32 = 5;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
img.thumb{height:72px}img.last{height:48px}.none{color:#888}
.state.streaming{color:#161}.state.stalled,.state.offline,.state.failed{color:#a11}
.foot{margin-top:2em;color:#888;font-size:.9em}
";

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &Path, expected: Option<String>) -> Site {
        Site {
            metrics: Metrics::new(&[]),
            board: Board::new(&["gate".into()]),
            roots: Roots { snapshots: dir.join("snapshots"), thumbnails: None },
            stale: Duration::from_secs(30),
            expected,
        }
    }

    fn get(site: &Site, path: &str, auth: Option<&str>) -> Response {
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        respond(site, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"))
    }

    #[test]
    fn images_are_served_from_under_the_snapshot_directory_only() {
        let d = tempfile::tempdir().unwrap();
        let snaps = d.path().join("snapshots/gate/2026-12-07");
        std::fs::create_dir_all(&snaps).unwrap();
        std::fs::write(snaps.join("h1.jpg"), b"\xff\xd8jpeg").unwrap();
        std::fs::write(d.path().join("secret.jpg"), b"private").unwrap();
        std::fs::write(snaps.join("notes.txt"), b"text").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.jpg"), snaps.join("link.jpg")).unwrap();
        let s = site(d.path(), None);
        let ok = get(&s, "/snapshots/gate/2026-12-07/h1.jpg", None);
        assert_eq!((ok.status, ok.kind, ok.body.as_slice()), (200, "image/jpeg", &b"\xff\xd8jpeg"[..]));
        for escape in [
            "/snapshots/../secret.jpg",
            "/snapshots/gate/../../secret.jpg",
            "/snapshots/%2e%2e/secret.jpg",
            "/snapshots//etc/passwd",
            "/snapshots/gate/2026-12-07/notes.txt",
            "/snapshots/gate/2026-12-07/link.jpg",
            "/snapshots/",
            "/thumbnails/x.jpg",
        ] {
            assert_eq!(get(&s, escape, None).status, 404, "{escape}");
        }
    }

    #[test]
    fn an_account_is_asked_for_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("op:pw"));
        let s = site(d.path(), Some(good.clone()));
        let refused = get(&s, "/api/hits", None);
        assert_eq!(refused.status, 401);
        assert!(refused.extra.contains("WWW-Authenticate: Basic"));
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("op:px"));
        assert_eq!(get(&s, "/", Some(&wrong)).status, 401);
        assert_eq!(get(&s, "/", Some(&good)).status, 200);
        assert_eq!(get(&s, "/health", Some(&good)).status, 200);
    }

    #[test]
    fn a_reachable_listen_needs_an_account_or_consent() {
        let parse = |t: &str| toml::from_str::<HttpConfig>(t).unwrap().check();
        assert!(parse("listen = \"127.0.0.1:8080\"").is_ok());
        let e = parse("listen = \"0.0.0.0:8080\"").unwrap_err();
        assert!(e.contains("username and password_file") && e.contains("allow_anonymous"), "{e}");
        assert!(parse("listen = \"0.0.0.0:8080\"\nallow_anonymous = true").is_ok());
        assert!(parse("listen = \"0.0.0.0:8080\"\nusername = \"op\"\npassword_file = \"pw\"").is_ok());
        assert!(parse("username = \"op\"").unwrap_err().contains("both"));
    }

    #[test]
    fn the_page_escapes_what_it_shows_and_links_images() {
        let d = tempfile::tempdir().unwrap();
        let snaps = d.path().join("snapshots");
        std::fs::create_dir_all(snaps.join("gate")).unwrap();
        std::fs::write(snaps.join("gate/h.jpg"), b"x").unwrap();
        let s = site(d.path(), None);
        s.board.camera("gate", &serde_json::json!({"state": "streaming", "fps_in": 10.0, "fps_analysed": 8.0}));
        s.board.alerts(&serde_json::json!([{"id": "<b>x</b>", "make": "bmw", "source": "mqtt"}]));
        for i in 0..(RECENT_HITS + 3) {
            s.board.hit(&serde_json::json!({
                "camera": "gate", "make": "bmw", "model": "x5", "alert_id": format!("a{i}"), "confidence": 0.9,
                "snapshot": snaps.join("gate/h.jpg").display().to_string(), "snapshot_jpeg_base64": "AAAA",
            }));
        }
        let html = String::from_utf8(get(&s, "/", None).body).unwrap();
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"), "{html}");
        assert!(html.contains("src=\"/snapshots/gate/h.jpg\""), "{html}");
        assert!(html.contains("class=\"state streaming\""), "{html}");
        let hits: Value = serde_json::from_slice(&get(&s, "/api/hits", None).body).unwrap();
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), RECENT_HITS);
        assert_eq!(hits[0]["alert_id"], format!("a{}", RECENT_HITS + 2), "newest first");
        assert!(hits[0].get("snapshot_jpeg_base64").is_none());
    }

    /// The review's defect 14: connections were unbounded and had no timeouts. Idle
    /// connections beyond the cap are closed, and a scrape still gets through.
    #[test]
    fn idle_connections_are_capped_and_time_out() {
        use std::io::{Read, Write};
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let d = tempfile::tempdir().unwrap();
        let roots = Roots { snapshots: d.path().to_path_buf(), thumbnails: None };
        serve(listen, &HttpConfig::default(), Metrics::new(&[]), Board::new(&[]), roots).unwrap();
        let idle: Vec<std::net::TcpStream> =
            (0..MAX_CONNECTIONS + 4).map(|_| std::net::TcpStream::connect(listen).unwrap()).collect();
        let started = std::time::Instant::now();
        let mut answered = None;
        while answered.is_none() && started.elapsed() < Duration::from_secs(10) {
            let mut s = std::net::TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                answered = Some(started.elapsed());
            }
        }
        let took = answered.expect("/metrics never answered behind idle connections");
        assert!(took < Duration::from_secs(4), "/metrics took {took:?}");
        // Every idle connection is closed by the server: beyond the cap at once, within
        // it after the client limit.
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 16];
            assert!(matches!(s.read(&mut buf), Ok(0)), "an idle connection was kept open");
        }
    }
}
