//! Sightings: every vehicle carwatch tracked, remembered, so that it can be searched.
//!
//! An AMBER alert is issued after the car has gone; the question then is "did it pass
//! one of our cameras in the last hour?". Every track of a `motion` or `detector`
//! camera becomes one row of an embedded SQLite database in `state_dir` when the track
//! ends: camera, track, first and last seen, best box, a thumbnail of its best look,
//! and what the cascade made of it (the most likely view, and the top five makes and
//! (make, model) pairs of the mean of its looks, with their probabilities).
//!
//! The worker hands ended vehicles to the `sightings` thread through a bounded channel
//! (full: counted and dropped, never waited for); that thread writes thumbnails and
//! inserts rows in batched transactions, and prunes rows (and their thumbnails) older
//! than `retain_days` or beyond `max_rows`. A database that is locked, corrupt or on a
//! full disk never stops live hits: the failure is logged and counted. `carwatch
//! search` reads the same file from another process while `watch` writes it (WAL).
//!
//! The file carries its schema version (`PRAGMA user_version`); one written by a newer
//! carwatch is refused with a message rather than misread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, AlertSet};
use crate::colour::Colour;
use crate::locate::Bounds;
use crate::model::Level;
use crate::model::embedding::{Embedding, Query as LikeQuery};
use crate::track::Vehicle;

/// The schema this carwatch writes.
pub const SCHEMA_VERSION: i64 = 2;

/// `[sightings]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SightingsConfig {
    /// Remember tracked vehicles at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The database file [default: `<state_dir>/sightings.db`]; thumbnails go beside it
    /// in `thumbnails/`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rows older than this are removed, with their thumbnails.
    #[serde(default = "default_retain", deserialize_with = "retain_days")]
    pub retain_days: Duration,
    /// Most rows kept; beyond it the oldest go first.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Also publish each sighting (no image) on `{prefix}/sightings/{camera}`, for one
    /// consumer to keep a fleet's history.
    #[serde(default)]
    pub publish: bool,
    /// How often a vehicle still in view (a long track, a parked car) is written again,
    /// so that it can be found before it leaves.
    #[serde(default = "default_refresh", deserialize_with = "crate::values::seconds", rename = "refresh_s")]
    pub refresh: Duration,
    /// How far back a new alert is searched for (each alert may say `lookback_s`).
    #[serde(default = "default_lookback", deserialize_with = "crate::values::seconds", rename = "lookback_s")]
    pub lookback: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

fn default_lookback() -> Duration {
    Duration::from_secs(3600)
}

fn yes() -> bool {
    true
}

fn default_retain() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_max_rows() -> u64 {
    1_000_000
}

fn retain_days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let days = f64::deserialize(d)?;
    if !(days.is_finite() && days > 0.0 && days <= 3650.0) {
        return Err(serde::de::Error::custom(format!(
            "expected a number of days above 0 and at most 3650, found {days}"
        )));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0))
}

impl Default for SightingsConfig {
    fn default() -> Self {
        SightingsConfig {
            enabled: true,
            file: None,
            retain_days: default_retain(),
            max_rows: default_max_rows(),
            publish: false,
            refresh: default_refresh(),
            lookback: default_lookback(),
        }
    }
}

impl SightingsConfig {
    /// The database file, given the instance's `state_dir`.
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        self.file.clone().unwrap_or_else(|| state_dir.join("sightings.db"))
    }

    /// Where thumbnails go: `thumbnails/` beside the database.
    pub fn thumbnails(&self, state_dir: &Path) -> PathBuf {
        thumbnails_beside(&self.path(state_dir))
    }
}

fn thumbnails_beside(database: &Path) -> PathBuf {
    database.with_file_name("thumbnails")
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SightingsError {
    #[error("sightings database {}: {source}", path.display())]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(
        "sightings database {} has schema version {found}, written by a newer carwatch (this one writes {SCHEMA_VERSION}); upgrade carwatch, or move the file away to start a new one",
        path.display()
    )]
    Newer { path: PathBuf, found: i64 },
    #[error("sightings database {}: no such file (has `watch` run with [sightings] enabled?)", path.display())]
    Missing { path: PathBuf },
}

/// A (label, probability) pair as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub label: String,
    pub p: f32,
}

/// One remembered vehicle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sighting {
    pub camera: String,
    pub track_id: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// Its box in its best look, frame pixels.
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// The most likely view, and its probability.
    pub view: String,
    pub view_p: f32,
    /// The most likely (make, model) and its probability.
    pub make: String,
    pub model: String,
    pub confidence: f32,
    /// Classified looks its description is the mean of.
    pub looks: u32,
    /// Its colour in its best look ([`crate::colour`]), and how sure.
    pub colour: Colour,
    pub colour_p: f32,
    /// Top five makes, and top five `make/model` pairs, most likely first.
    pub makes: Vec<Scored>,
    pub make_models: Vec<Scored>,
    /// The JPEG of its best look, cropped to the vehicle.
    pub thumbnail: Option<PathBuf>,
    /// What it looked like, the mean over its looks (`search --like`, example photos);
    /// stored as 512 bytes, not printed.
    #[serde(skip)]
    pub embedding: Option<Embedding>,
    /// Still in view when written (a long track's refresh); replaced when it ends.
    /// Retrospective hits leave such rows to the live matcher.
    #[serde(skip)]
    pub live: bool,
    /// How like the photo asked for it is (`search --like` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
}

impl Sighting {
    /// Marginal probability of `make` (and `model`) as far as the stored top five tell
    /// (0 beyond them): the live rule's number, for the makes and models that matter.
    pub fn probability(&self, make: &str, model: Option<&str>) -> f32 {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        match model {
            None => self.makes.iter().find(|s| eq(&s.label, make)).map_or(0.0, |s| s.p),
            Some(m) => {
                let want = format!("{make}/{m}");
                self.make_models.iter().find(|s| eq(&s.label, &want)).map_or(0.0, |s| s.p)
            }
        }
    }

    /// A sighting of `vehicle` of `camera` (none before its first classified look).
    pub fn of(camera: &str, vehicle: &Vehicle, last_seen: Timestamp) -> Option<Sighting> {
        let mean = vehicle.average.as_ref()?.prediction();
        let best = vehicle.best.as_ref()?;
        let makes: Vec<Scored> =
            mean.marginal(Level::Make).into_iter().take(5).map(|(l, p)| Scored { label: l.to_string(), p }).collect();
        let pairs = mean.make_models();
        let make_models: Vec<Scored> =
            pairs.iter().take(5).map(|((m, o), p)| Scored { label: format!("{m}/{o}"), p: *p }).collect();
        let ((make, model), confidence) =
            pairs.first().map(|((m, o), p)| ((m.to_string(), o.to_string()), *p)).unwrap_or_default();
        let b = best.bounds;
        let colour = best.frame.colour((b.x, b.y, b.width, b.height));
        Some(Sighting {
            camera: camera.to_string(),
            track_id: vehicle.track,
            first_seen: Timestamp::try_from(vehicle.first_seen).unwrap_or(last_seen),
            last_seen,
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
            view: mean.label(Level::View).to_string(),
            view_p: mean.marginal(Level::View).first().map_or(0.0, |(_, p)| *p),
            make,
            model,
            confidence,
            looks: vehicle.looks(),
            colour: colour.colour,
            colour_p: colour.p,
            makes,
            make_models,
            thumbnail: None,
            embedding: mean.embedding.clone(),
            live: false,
            similarity: None,
        })
    }
}

/// What `carwatch search` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub make: Option<String>,
    pub model: Option<String>,
    pub camera: Option<String>,
    pub colour: Option<Colour>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Least probability of the make (and model) asked for [default 0.5].
    pub min_confidence: Option<f32>,
    /// Vehicles that look like this, most alike first (`--like PHOTO`).
    pub like: Option<Embedding>,
    /// Least similarity to `like` [default 0: any].
    pub min_similarity: Option<f32>,
    /// Leave out vehicles still in view when their row was written.
    pub ended_only: bool,
    pub limit: usize,
}

/// The database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The row id of each vehicle still in view that this store wrote a row for, by
    /// (camera, track, first seen): its next row replaces that one, found by its key
    /// rather than through an index every insert would have to maintain.
    live: std::collections::HashMap<(String, u64, i64), i64>,
}

impl Store {
    fn err(&self) -> impl FnOnce(rusqlite::Error) -> SightingsError + '_ {
        move |source| SightingsError::Sqlite { path: self.path.clone(), source }
    }

    /// Opens (creating it and its directory if needed) the database at `path` for
    /// writing: WAL, so readers in other processes never block the writer.
    pub fn open(path: &Path) -> Result<Store, SightingsError> {
        let sql = |source| SightingsError::Sqlite { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql)?;
        // 32 MiB of page cache for the writer: the indexes by time and by make take
        // rows in no particular order, and beyond the default 8 MiB most inserts would
        // read and write index pages back and forth (inserts into a million-row file
        // were half as fast). Pages are cached only once used.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768").map_err(sql)?;
        let store = Store { conn, path: path.to_path_buf(), live: Default::default() };
        store.migrate()?;
        Ok(store)
    }

    /// Marks the rows of vehicles an earlier run was still watching as ended: that run
    /// is gone, and their last refresh is all there will be. For the daemon's writer,
    /// at start.
    pub fn end_earlier_runs(&self) -> Result<usize, SightingsError> {
        self.conn.execute("UPDATE sightings SET live = 0 WHERE live = 1", []).map_err(self.err())
    }

    /// Opens an existing database for reading (`carwatch search`).
    pub fn open_read_only(path: &Path) -> Result<Store, SightingsError> {
        if !path.is_file() {
            return Err(SightingsError::Missing { path: path.to_path_buf() });
        }
        let sql = |source| SightingsError::Sqlite { path: path.to_path_buf(), source };
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        let store = Store { conn, path: path.to_path_buf(), live: Default::default() };
        let version = store.version()?;
        if version > SCHEMA_VERSION {
            return Err(SightingsError::Newer { path: path.to_path_buf(), found: version });
        }
        Ok(store)
    }

    fn version(&self) -> Result<i64, SightingsError> {
        self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(self.err())
    }

    /// Brings an older schema up to this one; refuses a newer one.
    fn migrate(&self) -> Result<(), SightingsError> {
        let version = self.version()?;
        if version > SCHEMA_VERSION {
            return Err(SightingsError::Newer { path: self.path.clone(), found: version });
        }
        if version < 1 {
            self.conn
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS sightings (
                         id INTEGER PRIMARY KEY,
                         camera TEXT NOT NULL,
                         track INTEGER NOT NULL,
                         first_seen INTEGER NOT NULL,
                         last_seen INTEGER NOT NULL,
                         x INTEGER NOT NULL, y INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
                         view TEXT NOT NULL,
                         view_p REAL NOT NULL,
                         make TEXT NOT NULL COLLATE NOCASE,
                         model TEXT NOT NULL COLLATE NOCASE,
                         confidence REAL NOT NULL,
                         looks INTEGER NOT NULL,
                         colour TEXT NOT NULL,
                         colour_p REAL NOT NULL,
                         makes TEXT NOT NULL,
                         make_models TEXT NOT NULL,
                         thumbnail TEXT
                     );
                     CREATE INDEX IF NOT EXISTS sightings_seen ON sightings (last_seen);
                     CREATE INDEX IF NOT EXISTS sightings_make ON sightings (make, model, last_seen);
                     CREATE TABLE IF NOT EXISTS announced (
                         alert TEXT NOT NULL,
                         definition TEXT NOT NULL,
                         camera TEXT NOT NULL,
                         track INTEGER NOT NULL,
                         first_seen INTEGER NOT NULL,
                         at INTEGER NOT NULL,
                         PRIMARY KEY (alert, definition, camera, track, first_seen)
                     );
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(self.err())?;
        }
        if version < 2 {
            // Version 2: embeddings (`search --like`, example photos; older rows have
            // none) and rows of vehicles still in view (long tracks, refreshed).
            self.conn
                .execute_batch(
                    "BEGIN;
                     ALTER TABLE sightings ADD COLUMN embedding BLOB;
                     ALTER TABLE sightings ADD COLUMN live INTEGER NOT NULL DEFAULT 0;
                     PRAGMA user_version = 2;
                     COMMIT;",
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Inserts `rows` in one transaction; a row of the same vehicle (camera, track,
    /// first seen) written while it was in view is replaced.
    pub fn insert(&mut self, rows: &[Sighting]) -> Result<(), SightingsError> {
        let path = self.path.clone();
        let sql = move |source| SightingsError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(sql.clone())?;
        {
            let mut replace =
                tx.prepare_cached("DELETE FROM sightings WHERE id = ?1 AND live = 1").map_err(sql.clone())?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO sightings (camera, track, first_seen, last_seen, x, y, width, height, view, view_p,
                         make, model, confidence, looks, colour, colour_p, makes, make_models, thumbnail, embedding, live)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                )
                .map_err(sql.clone())?;
            for s in rows {
                let key = (s.camera.clone(), s.track_id, s.first_seen.as_millisecond());
                if let Some(id) = self.live.remove(&key) {
                    replace.execute([id]).map_err(sql.clone())?;
                }
                insert
                    .execute(params![
                        s.camera,
                        s.track_id as i64,
                        s.first_seen.as_millisecond(),
                        s.last_seen.as_millisecond(),
                        s.x,
                        s.y,
                        s.width,
                        s.height,
                        s.view,
                        s.view_p as f64,
                        s.make,
                        s.model,
                        s.confidence as f64,
                        s.looks,
                        s.colour.name(),
                        s.colour_p as f64,
                        serde_json::to_string(&s.makes).unwrap_or_default(),
                        serde_json::to_string(&s.make_models).unwrap_or_default(),
                        s.thumbnail.as_ref().map(|p| p.to_string_lossy().into_owned()),
                        s.embedding.as_ref().map(Embedding::to_bytes),
                        s.live,
                    ])
                    .map_err(sql.clone())?;
                if s.live {
                    self.live.insert(key, tx.last_insert_rowid());
                }
            }
        }
        tx.commit().map_err(sql)
    }

    /// Removes rows last seen before `before`, and the oldest beyond `max_rows`;
    /// returns their thumbnails, for the caller to delete.
    pub fn prune(&mut self, before: Timestamp, max_rows: u64) -> Result<Vec<PathBuf>, SightingsError> {
        let path = self.path.clone();
        let sql = move |source| SightingsError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(sql.clone())?;
        let cutoff: i64 = {
            let count: i64 = tx.query_row("SELECT count(*) FROM sightings", [], |r| r.get(0)).map_err(sql.clone())?;
            let excess = count - max_rows.min(i64::MAX as u64) as i64;
            let by_count: i64 = if excess > 0 {
                tx.query_row(
                    "SELECT last_seen FROM sightings ORDER BY last_seen, id LIMIT 1 OFFSET ?1",
                    [excess - 1],
                    |r| r.get(0),
                )
                .map_err(sql.clone())?
            } else {
                i64::MIN
            };
            // Strictly older than `before`; up to and including the by-count cutoff.
            by_count.max(before.as_millisecond() - 1)
        };
        let thumbnails: Vec<PathBuf> = {
            let mut q = tx
                .prepare("SELECT thumbnail FROM sightings WHERE last_seen <= ?1 AND thumbnail IS NOT NULL")
                .map_err(sql.clone())?;
            q.query_map([cutoff], |r| r.get::<_, String>(0))
                .map_err(sql.clone())?
                .filter_map(Result::ok)
                .map(PathBuf::from)
                .collect()
        };
        tx.execute("DELETE FROM sightings WHERE last_seen <= ?1", [cutoff]).map_err(sql.clone())?;
        tx.commit().map_err(sql)?;
        Ok(thumbnails)
    }

    /// Notes that `alert` (as defined by `definition`) was published for `s`; false if
    /// it already was, so a retrospective hit goes out once, across restarts too.
    pub fn announce(&mut self, alert: &str, definition: &str, s: &Sighting) -> Result<bool, SightingsError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO announced (alert, definition, camera, track, first_seen, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    alert,
                    definition,
                    s.camera,
                    s.track_id as i64,
                    s.first_seen.as_millisecond(),
                    Timestamp::now().as_millisecond()
                ],
            )
            .map_err(self.err())?;
        Ok(n == 1)
    }

    /// (similarity, id) of every row of `sql` (selecting id and embedding) with `args`
    /// at least `least` alike to `query`.
    fn similar(
        &self,
        sql: &str,
        args: &[rusqlite::types::Value],
        query: &LikeQuery,
        least: f32,
    ) -> Result<Vec<(f32, i64)>, SightingsError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.err())?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(self.err())?;
        let mut scored = Vec::new();
        while let Some(r) = rows.next().map_err(self.err())? {
            let blob = r.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(self.err())?;
            let similarity = query.similarity(blob);
            if similarity >= least {
                scored.push((similarity, r.get(0).map_err(self.err())?));
            }
        }
        Ok(scored)
    }

    /// Rows matching `q`: most recent first, or with `q.like`, most alike first.
    pub fn search(&self, q: &Query) -> Result<Vec<Sighting>, SightingsError> {
        let min = q.min_confidence.unwrap_or(0.5);
        // A make (or pair) at 0.5 or more is the most likely one: the index finds it.
        // Below that, any row may qualify and the stored top five decide.
        let by_top = min >= 0.5;
        // `--like` reads every candidate's embedding anyway: in table order, not through
        // the time index (a lookup per row, several times slower over a million rows).
        // Bounds not asked for are left out: each costs a column read per row.
        let seen = if q.like.is_some() { "+last_seen" } else { "last_seen" };
        let mut filter = String::from("1");
        use rusqlite::types::Value as V;
        let mut args: Vec<V> = Vec::new();
        for (bound, op) in [(q.since, ">="), (q.until, "<=")] {
            if let Some(t) = bound {
                args.push(V::Integer(t.as_millisecond()));
                filter.push_str(&format!(" AND {seen} {op} ?{}", args.len()));
            }
        }
        if let Some(c) = &q.camera {
            args.push(V::Text(c.clone()));
            filter.push_str(&format!(" AND camera = ?{}", args.len()));
        }
        if let Some(c) = q.colour {
            args.push(V::Text(c.name().to_string()));
            filter.push_str(&format!(" AND colour = ?{}", args.len()));
        }
        if q.ended_only {
            filter.push_str(" AND live = 0");
        }
        if let (Some(m), true) = (&q.make, by_top) {
            args.push(V::Text(m.clone()));
            filter.push_str(&format!(" AND make = ?{}", args.len()));
            if let Some(o) = &q.model {
                args.push(V::Text(o.clone()));
                filter.push_str(&format!(" AND model = ?{}", args.len()));
            }
        }
        let wanted = |s: &Sighting| q.make.as_ref().is_none_or(|m| s.probability(m, q.model.as_deref()) >= min);
        let full = |s: &Vec<Sighting>| q.limit > 0 && s.len() >= q.limit;
        let mut out = Vec::new();
        match &q.like {
            None => {
                let sql = format!("SELECT {COLUMNS} FROM sightings WHERE {filter} ORDER BY last_seen DESC, id DESC");
                let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), read_row).map_err(self.err())?;
                for row in rows {
                    let s = row.map_err(self.err())?;
                    if wanted(&s) {
                        out.push(s);
                        if full(&out) {
                            break;
                        }
                    }
                }
            }
            Some(like) => {
                // First the similarity of every candidate, reading only its embedding
                // (in place, not copied), the upper half of the rows on a second
                // connection and core; then the whole rows of the most alike.
                let query = LikeQuery::new(like.quantised());
                let least = q.min_similarity.unwrap_or(f32::MIN);
                let sql = format!(
                    "SELECT id, embedding FROM sightings WHERE {filter} AND embedding IS NOT NULL AND id >= ?{} AND id < ?{}",
                    args.len() + 1,
                    args.len() + 2
                );
                let top: i64 = self
                    .conn
                    .query_row("SELECT coalesce(max(id), 0) FROM sightings", [], |r| r.get(0))
                    .map_err(self.err())?;
                let half = top / 2 + 1;
                let span = |from: i64, to: i64| {
                    let mut a = args.clone();
                    a.extend([V::Integer(from), V::Integer(to)]);
                    a
                };
                let upper = (top >= SPLIT_ABOVE).then(|| (span(half, i64::MAX), Store::open_read_only(&self.path)));
                let lower = if upper.is_some() { span(i64::MIN, half) } else { span(i64::MIN, i64::MAX) };
                let mut scored = std::thread::scope(|scope| {
                    let other = upper.map(|(a, store)| {
                        let (sql, query) = (&sql, &query);
                        scope.spawn(move || store.and_then(|s| s.similar(sql, &a, query, least)))
                    });
                    let mut mine = self.similar(&sql, &lower, &query, least)?;
                    if let Some(other) = other {
                        let theirs = other.join().unwrap_or_else(|_| Ok(Vec::new()))?;
                        mine.extend(theirs);
                    }
                    Ok::<_, SightingsError>(mine)
                })?;
                scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut one = self
                    .conn
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM sightings WHERE id = ?1"))
                    .map_err(self.err())?;
                for (similarity, id) in scored {
                    let mut s = one.query_row([id], read_row).map_err(self.err())?;
                    if wanted(&s) {
                        s.similarity = Some(similarity);
                        out.push(s);
                        if full(&out) {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Above this many rows a `--like` scan is split over two connections (two cores).
const SPLIT_ABOVE: i64 = 50_000;

/// The columns [`read_row`] reads, in its order.
const COLUMNS: &str = "camera, track, first_seen, last_seen, x, y, width, height, view, view_p, make, model, \
                       confidence, looks, colour, colour_p, makes, make_models, thumbnail, embedding, live";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Sighting> {
    Ok(Sighting {
        camera: r.get(0)?,
        track_id: r.get::<_, i64>(1)? as u64,
        first_seen: Timestamp::from_millisecond(r.get(2)?).unwrap_or(Timestamp::UNIX_EPOCH),
        last_seen: Timestamp::from_millisecond(r.get(3)?).unwrap_or(Timestamp::UNIX_EPOCH),
        x: r.get(4)?,
        y: r.get(5)?,
        width: r.get(6)?,
        height: r.get(7)?,
        view: r.get(8)?,
        view_p: r.get::<_, f64>(9)? as f32,
        make: r.get(10)?,
        model: r.get(11)?,
        confidence: r.get::<_, f64>(12)? as f32,
        looks: r.get(13)?,
        colour: Colour::parse(&r.get::<_, String>(14)?).unwrap_or(Colour::Unknown),
        colour_p: r.get::<_, f64>(15)? as f32,
        makes: serde_json::from_str(&r.get::<_, String>(16)?).unwrap_or_default(),
        make_models: serde_json::from_str(&r.get::<_, String>(17)?).unwrap_or_default(),
        thumbnail: r.get::<_, Option<String>>(18)?.map(PathBuf::from),
        embedding: r.get::<_, Option<Vec<u8>>>(19)?.map(|b| Embedding::from_bytes(&b)),
        live: r.get(20)?,
        similarity: None,
    })
}

/// A vehicle whose track ended, for the `sightings` thread.
pub struct Ended {
    pub camera: String,
    pub vehicle: Vehicle,
    /// Still in view: a refresh of a long track; its row is replaced when it ends.
    pub live: bool,
}

/// The worker's end: hands ended vehicles (and each alert set it applies) over without
/// ever waiting.
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Ended>,
    alerts: Sender<AlertSet>,
    counters: Arc<Counters>,
    /// How often a vehicle still in view is written again (`refresh_s`).
    pub refresh: Duration,
}

impl Recorder {
    /// The alert set now in force: new and changed alerts are searched for in the
    /// sightings (retrospective hits).
    pub fn alerts(&self, set: &AlertSet) {
        if self.alerts.try_send(set.clone()).is_err() {
            tracing::warn!("the sightings thread is behind: an alert set was not searched for in the sightings");
        }
    }

    /// Queues `ended` for the store; counted and dropped when the queue is full.
    pub fn record(&self, ended: Ended) {
        match self.tx.try_send(ended) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What happened to the vehicles handed over (in `/metrics` and `{prefix}/stats`).
#[derive(Debug, Default)]
pub struct Counters {
    pub written: AtomicU64,
    /// Not stored: the database could not be opened or written.
    pub failed: AtomicU64,
    /// Not handed over: the thread was behind (or gone).
    pub dropped: AtomicU64,
    pub pruned: AtomicU64,
}

/// The `sightings` thread's end of its channels.
pub struct Inbox {
    ended: Receiver<Ended>,
    alerts: Receiver<AlertSet>,
}

/// A channel to the `sightings` thread: the worker's [`Recorder`] and the thread's end.
pub fn channel(counters: Arc<Counters>, refresh: Duration) -> (Recorder, Inbox) {
    let (tx, ended) = crossbeam_channel::bounded(1024);
    let (alerts_tx, alerts) = crossbeam_channel::bounded(8);
    (Recorder { tx, alerts: alerts_tx, counters, refresh }, Inbox { ended, alerts })
}

/// What the `sightings` thread hands to the publisher.
#[derive(Debug, Clone)]
pub enum Found {
    /// A vehicle that would have hit a new alert.
    Retrospective(Retrospective),
    /// A vehicle just stored, with `[sightings] publish = true`.
    Sighting(Sighting),
}

/// A hit found in the sightings when its alert appeared: the vehicle passed before
/// anyone asked for it.
#[derive(Debug, Clone)]
pub struct Retrospective {
    pub hit_id: uuid::Uuid,
    pub alert: Arc<Alert>,
    pub sighting: Sighting,
    /// The live rule's number: probability of the alert's make (and model); for an
    /// alert by colour alone, the colour estimate's.
    pub confidence: f32,
    /// Cosine similarity to the alert's example photos, when it has them.
    pub similarity: Option<f32>,
}

/// Retrospective matching: which alerts have been searched for already.
struct Lookback {
    known: Vec<Arc<Alert>>,
    default: Duration,
}

impl Lookback {
    /// The vehicles in `store` that alerts of `set` not seen before (new, or edited)
    /// would have hit, within their lookback, by the live rule; each once.
    fn search(&mut self, set: AlertSet, store: &mut Store, now: Timestamp) -> Vec<Retrospective> {
        let fresh: Vec<Arc<Alert>> =
            set.alerts.iter().filter(|a| !self.known.iter().any(|k| k == *a)).cloned().collect();
        self.known = set.alerts;
        let mut found = Vec::new();
        for alert in fresh.into_iter().filter(|a| a.active_at(now)) {
            let back = alert.lookback.unwrap_or(self.default);
            let since = now.checked_sub(jiff::SignedDuration::try_from(back).unwrap_or(jiff::SignedDuration::MAX));
            // The live rule, on what the sightings keep: the probability of the make (and
            // model) from the stored top five, the view, the colour, the similarity.
            let query = Query {
                make: alert.make().map(|m| m.to_string()),
                model: alert.model().map(|m| m.to_string()),
                colour: alert.colour(),
                since: since.ok(),
                min_confidence: Some(alert.min_confidence),
                // Vehicles still in view are the live matcher's: it sees the new alert too.
                ended_only: true,
                ..Query::default()
            };
            let rows = match store.search(&query) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(alert = %alert.id, "searching the sightings for alert {}: {e}", alert.id);
                    continue;
                }
            };
            let definition = alert.definition();
            for s in rows {
                let view_ok = alert.view.as_ref().is_none_or(|v| *v == s.view.as_str());
                if !alert.watches(&s.camera) || !view_ok || s.looks < alert.rule.confirm_frames {
                    continue;
                }
                let similarity = alert.embedding().map(|e| s.embedding.as_ref().map_or(0.0, |v| e.similarity(v)));
                if let (Some(least), Some(sim)) = (alert.min_similarity, similarity)
                    && sim < least
                {
                    continue;
                }
                match store.announce(alert.id.as_str(), &definition, &s) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!("{e}; retrospective hit not sent, to avoid repeating it");
                        continue;
                    }
                }
                let confidence = match alert.make() {
                    Some(m) => s.probability(m, alert.model().map(|m| m.as_str())),
                    None => s.colour_p,
                };
                found.push(Retrospective {
                    hit_id: uuid::Uuid::now_v7(),
                    alert: Arc::clone(&alert),
                    sighting: s,
                    confidence,
                    similarity,
                });
            }
        }
        found
    }
}

/// Most rows per transaction, and longest a row waits for its batch.
const BATCH: usize = 256;
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The `sightings` thread: thumbnails and rows, batched, until the worker's end
/// closes; and, for each new alert, the vehicles it would have hit, handed to `found`
/// (retrospective hits). Failures are logged and counted; they never reach the frame
/// path.
pub fn run(
    config: SightingsConfig,
    path: PathBuf,
    inbox: Inbox,
    counters: Arc<Counters>,
    mut found: impl FnMut(Found) -> bool,
) {
    let thumbs = thumbnails_beside(&path);
    let mut store = match Store::open(&path) {
        Ok(s) => {
            if let Err(e) = s.end_earlier_runs() {
                tracing::warn!("{e}; vehicles in view when carwatch last stopped stay marked as in view");
            }
            Some(s)
        }
        Err(e) => {
            tracing::error!("{e}; vehicles are not remembered until carwatch restarts (live hits go on)");
            None
        }
    };
    let mut lookback = Lookback { known: Vec::new(), default: config.lookback };
    let mut alerts = inbox.alerts;
    let mut pending: Vec<Sighting> = Vec::new();
    let mut last_prune = Instant::now() - PRUNE_EVERY;
    loop {
        crossbeam_channel::select! {
            recv(inbox.ended) -> m => match m {
                Ok(first) => {
                    for ended in std::iter::once(first).chain(inbox.ended.try_iter().take(BATCH)) {
                        if store.is_none() {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let last_seen = Timestamp::try_from(ended.vehicle.last_seen).unwrap_or_else(|_| Timestamp::now());
                        if let Some(mut s) = Sighting::of(&ended.camera, &ended.vehicle, last_seen) {
                            s.live = ended.live;
                            s.thumbnail = thumbnail(&thumbs, &ended, &s);
                            pending.push(s);
                        }
                    }
                    let published = if config.publish { pending.clone() } else { Vec::new() };
                    if flush(&mut store, &mut pending, &counters) {
                        for s in published {
                            if !found(Found::Sighting(s)) {
                                return;
                            }
                        }
                    }
                }
                Err(_) => {
                    flush(&mut store, &mut pending, &counters);
                    return;
                }
            },
            recv(alerts) -> m => match m {
                Ok(set) => {
                    if let Some(st) = store.as_mut() {
                        for r in lookback.search(set, st, Timestamp::now()) {
                            tracing::info!(alert = %r.alert.id, camera = %r.sighting.camera,
                                "retrospective hit: {} passed {} at {}", r.alert.describe(), r.sighting.camera,
                                crate::time::rfc3339(r.sighting.last_seen));
                            if !found(Found::Retrospective(r)) {
                                return;
                            }
                        }
                    }
                }
                Err(_) => alerts = crossbeam_channel::never(),
            },
            default(BATCH_WAIT) => {}
        }
        if last_prune.elapsed() >= PRUNE_EVERY
            && let Some(st) = store.as_mut()
        {
            last_prune = Instant::now();
            let before = Timestamp::now()
                .checked_sub(jiff::SignedDuration::try_from(config.retain_days).unwrap_or(jiff::SignedDuration::MAX))
                .unwrap_or(Timestamp::MIN);
            match st.prune(before, config.max_rows) {
                Ok(gone) => {
                    for t in &gone {
                        let _ = std::fs::remove_file(t);
                    }
                    counters.pruned.fetch_add(gone.len() as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::error!("pruning sightings: {e}"),
            }
        }
    }
}

/// Stores `pending` (emptied); whether it was stored.
fn flush(store: &mut Option<Store>, pending: &mut Vec<Sighting>, counters: &Counters) -> bool {
    if pending.is_empty() {
        return false;
    }
    let stored = match store.as_mut().map(|s| s.insert(pending)) {
        Some(Ok(())) => {
            counters.written.fetch_add(pending.len() as u64, Ordering::Relaxed);
            true
        }
        Some(Err(e)) => {
            counters.failed.fetch_add(pending.len() as u64, Ordering::Relaxed);
            tracing::error!("{e}; {} sighting(s) not remembered (live hits go on)", pending.len());
            for t in pending.iter().filter_map(|s| s.thumbnail.as_ref()) {
                let _ = std::fs::remove_file(t);
            }
            false
        }
        None => {
            counters.failed.fetch_add(pending.len() as u64, Ordering::Relaxed);
            false
        }
    };
    pending.clear();
    stored
}

/// Writes the best look's crop as `thumbnails/<camera>/<date>/<track>-<ms>.jpg`.
fn thumbnail(dir: &Path, ended: &Ended, s: &Sighting) -> Option<PathBuf> {
    let best = ended.vehicle.best.as_ref()?;
    let f = &best.frame;
    let b: Bounds = best.bounds;
    let (x, y) = (b.x.min(f.width.saturating_sub(1)), b.y.min(f.height.saturating_sub(1)));
    let (w, h) = (b.width.clamp(1, f.width - x), b.height.clamp(1, f.height - y));
    let crop = image::RgbImage::from_raw(w, h, f.rgb_of((x, y, w, h)))?;
    let side = 160u32;
    let scale = side as f32 / crop.width().max(crop.height()).max(1) as f32;
    let small = if scale < 1.0 {
        image::imageops::resize(
            &crop,
            ((crop.width() as f32 * scale) as u32).max(1),
            ((crop.height() as f32 * scale) as u32).max(1),
            image::imageops::FilterType::Triangle,
        )
    } else {
        crop
    };
    let day = crate::time::rfc3339(s.last_seen);
    let path =
        dir.join(&s.camera).join(&day[..10]).join(format!("{}-{}.jpg", s.track_id, s.first_seen.as_millisecond()));
    std::fs::create_dir_all(path.parent()?).ok()?;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&small).ok()?;
    std::fs::write(&path, out).ok()?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(camera: &str, track: u64, at_ms: i64, make: &str, model: &str, p: f32) -> Sighting {
        Sighting {
            camera: camera.into(),
            track_id: track,
            first_seen: Timestamp::from_millisecond(at_ms - 3000).unwrap(),
            last_seen: Timestamp::from_millisecond(at_ms).unwrap(),
            x: 1,
            y: 2,
            width: 30,
            height: 20,
            view: "front".into(),
            view_p: 0.9,
            make: make.into(),
            model: model.into(),
            confidence: p,
            looks: 3,
            colour: Colour::Blue,
            colour_p: 0.8,
            makes: vec![Scored { label: make.into(), p }, Scored { label: "other".into(), p: 1.0 - p }],
            make_models: vec![Scored { label: format!("{make}/{model}"), p }],
            thumbnail: None,
            embedding: None,
            live: false,
            similarity: None,
        }
    }

    #[test]
    fn rows_are_written_searched_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let t0 = 1_800_000_000_000i64;
        let mut rows = vec![
            sighting("gate", 1, t0, "bmw", "3-series", 0.9),
            sighting("gate", 2, t0 + 1000, "audi", "a4", 0.8),
            sighting("yard", 3, t0 + 2000, "BMW", "x5", 0.7),
            sighting("yard", 4, t0 + 3000, "bmw", "3-series", 0.3),
        ];
        let thumb = dir.path().join("t.jpg");
        std::fs::write(&thumb, b"jpeg").unwrap();
        rows[0].thumbnail = Some(thumb.clone());
        store.insert(&rows).unwrap();
        // Another process may read while this one writes.
        let reader = Store::open_read_only(&path).unwrap();
        let q = |make: Option<&str>, model: Option<&str>| Query {
            make: make.map(String::from),
            model: model.map(String::from),
            ..Query::default()
        };
        let found = reader.search(&q(Some("bmw"), None)).unwrap();
        assert_eq!(found.iter().map(|s| s.track_id).collect::<Vec<_>>(), vec![3, 1], "newest first; 0.3 is too low");
        assert_eq!(found[1], rows[0]);
        let found = reader.search(&q(Some("bmw"), Some("3-series"))).unwrap();
        assert_eq!(found.len(), 1);
        let low = Query { min_confidence: Some(0.25), ..q(Some("bmw"), Some("3-series")) };
        assert_eq!(reader.search(&low).unwrap().len(), 2, "below 0.5 the stored top five decide");
        let yard = Query { camera: Some("yard".into()), ..Query::default() };
        assert_eq!(reader.search(&yard).unwrap().len(), 2);
        let window = Query {
            since: Timestamp::from_millisecond(t0 + 500).ok(),
            until: Timestamp::from_millisecond(t0 + 2500).ok(),
            ..Query::default()
        };
        assert_eq!(reader.search(&window).unwrap().iter().map(|s| s.track_id).collect::<Vec<_>>(), vec![3, 2]);
        // Older than t0 + 1500 goes, with its thumbnail path; then at most one row is kept.
        let gone = store.prune(Timestamp::from_millisecond(t0 + 1500).unwrap(), 100).unwrap();
        assert_eq!(gone, vec![thumb]);
        assert_eq!(reader.search(&Query::default()).unwrap().len(), 2);
        store.prune(Timestamp::from_millisecond(0).unwrap(), 1).unwrap();
        let left = reader.search(&Query::default()).unwrap();
        assert_eq!(left.iter().map(|s| s.track_id).collect::<Vec<_>>(), vec![4], "the newest stays");
    }

    #[test]
    fn a_database_from_a_newer_carwatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path).unwrap());
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 9").unwrap();
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 9") && e.contains("newer carwatch"), "{e}");
        assert!(Store::open_read_only(&path).is_err());
        let e = Store::open_read_only(&dir.path().join("none.db")).err().unwrap().to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    /// A vehicle of camera `gate`, seen and classified twice.
    fn ended() -> Ended {
        let cam = crate::camera::testing::camera("gate");
        let frame = Arc::new(crate::camera::testing::frame(&cam, 64, 48));
        let mut vehicles = crate::track::Vehicles::new(crate::track::TrackerConfig::default());
        let (ids, _) = vehicles.locate(&frame, &[Bounds { x: 10, y: 10, width: 20, height: 12 }]);
        let p = crate::model::cascade::testing::prediction(&[
            (("front", "bmw", "3-series"), 0.8),
            (("front", "audi", "a4"), 0.2),
        ]);
        vehicles.classified(ids[0], &p);
        let vehicle = vehicles.classified(ids[0], &p).unwrap().clone();
        Ended { camera: "gate".into(), vehicle, live: false }
    }

    #[test]
    fn the_thread_stores_what_it_is_given_with_a_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let counters = Arc::new(Counters::default());
        let (recorder, rx) = channel(Arc::clone(&counters), Duration::from_secs(60));
        recorder.record(ended());
        drop(recorder);
        run(SightingsConfig::default(), path.clone(), rx, Arc::clone(&counters), |_| true);
        assert_eq!(counters.written.load(Ordering::Relaxed), 1);
        let rows = Store::open_read_only(&path).unwrap().search(&Query::default()).unwrap();
        assert_eq!(
            (rows[0].make.as_str(), rows[0].model.as_str(), rows[0].view.as_str()),
            ("bmw", "3-series", "front")
        );
        assert!((rows[0].probability("BMW", Some("3-series")) - 0.8).abs() < 1e-6);
        assert_eq!((rows[0].x, rows[0].width), (10, 20));
        let thumb = rows[0].thumbnail.clone().unwrap();
        assert!(thumb.starts_with(dir.path().join("thumbnails/gate")), "{}", thumb.display());
        assert_eq!(image::open(&thumb).unwrap().width(), 20);
    }

    #[test]
    fn an_unusable_database_is_counted_and_never_stops_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let counters = Arc::new(Counters::default());
        let (recorder, rx) = channel(Arc::clone(&counters), Duration::from_secs(60));
        // More than the channel holds, with nobody reading yet: the sender never waits.
        for _ in 0..1100 {
            recorder.record(ended());
        }
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1100 - 1024);
        drop(recorder);
        run(SightingsConfig::default(), path, rx, Arc::clone(&counters), |_| true);
        assert_eq!(counters.failed.load(Ordering::Relaxed), 1024);
        assert_eq!(counters.written.load(Ordering::Relaxed), 0);
    }

    fn alerts(text: &str) -> AlertSet {
        let leaf = |v: &str, m: &str, o: &str| crate::model::Leaf { view: v.into(), make: m.into(), model: o.into() };
        let vocab = crate::alerts::Vocabulary {
            leaves: vec![leaf("front", "bmw", "3-series"), leaf("front", "audi", "a4")],
            cameras: vec![crate::values::Name::new("gate").unwrap(), crate::values::Name::new("yard").unwrap()],
        };
        AlertSet::parse(Path::new("a.toml"), text, &vocab, &crate::rule::MatcherConfig::default()).unwrap()
    }

    #[test]
    fn a_new_alert_finds_what_passed_within_its_lookback_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Timestamp::now();
        let ago = |s: i64| now.as_millisecond() - s * 1000;
        store
            .insert(&[
                sighting("gate", 1, ago(600), "bmw", "3-series", 0.9),
                sighting("yard", 2, ago(300), "bmw", "3-series", 0.8),
                sighting("gate", 3, ago(7200), "bmw", "3-series", 0.9),
                sighting("gate", 4, ago(60), "audi", "a4", 0.9),
                sighting("gate", 5, ago(30), "bmw", "3-series", 0.55),
            ])
            .unwrap();
        let mut lookback = Lookback { known: Vec::new(), default: Duration::from_secs(3600) };
        let bmw = "[[alert]]\nid = \"bmw\"\nmake = \"bmw\"\nmodel = \"3-series\"\ncameras = [\"gate\"]\n";
        let found = lookback.search(alerts(bmw), &mut store, now);
        let tracks: Vec<u64> = found.iter().map(|r| r.sighting.track_id).collect();
        assert_eq!(tracks, vec![1], "gate only, within an hour, at min_confidence 0.6");
        assert!((found[0].confidence - 0.9).abs() < 1e-6);
        // The same alert again (a reload): nothing new. A restart: still nothing.
        assert!(lookback.search(alerts(bmw), &mut store, now).is_empty());
        let mut restarted = Lookback { known: Vec::new(), default: Duration::from_secs(3600) };
        assert!(restarted.search(alerts(bmw), &mut store, now).is_empty(), "announced once, across restarts");
        // An edited alert looks again, with its own lookback.
        let wider = format!("{bmw}lookback_s = 10000\nmin_confidence = 0.5\n");
        let found = lookback.search(alerts(&wider), &mut store, now);
        let mut tracks: Vec<u64> = found.iter().map(|r| r.sighting.track_id).collect();
        tracks.sort();
        assert_eq!(tracks, vec![1, 3, 5]);
    }

    #[test]
    fn a_large_like_scan_is_split_and_finds_rows_in_both_halves() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let unit = |i: usize| {
            let mut v = vec![0.0f32; 512];
            v[i] = 1.0;
            v[(i + 1) % 512] = 0.3;
            Embedding::normalised(&v)
        };
        let n = SPLIT_ABOVE as u64 + 5000;
        let t0 = 1_800_000_000_000i64;
        for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
            let rows: Vec<Sighting> = chunk
                .iter()
                .map(|&t| {
                    let mut s = sighting("gate", t, t0 + t as i64, "bmw", "3-series", 0.9);
                    // Two rows alike to the query, one early (lower half) and one late.
                    let axis = if t == 10 || t == n - 10 { 7 } else { 100 + (t as usize % 300) };
                    s.embedding = Some(unit(axis));
                    s
                })
                .collect();
            store.insert(&rows).unwrap();
        }
        let found = store.search(&Query { like: Some(unit(7)), limit: 2, ..Query::default() }).unwrap();
        let mut ids: Vec<u64> = found.iter().map(|s| s.track_id).collect();
        ids.sort();
        assert_eq!(ids, vec![10, n - 10]);
        assert!(found.iter().all(|s| s.similarity.unwrap() > 0.99));
    }

    #[test]
    fn like_ranks_by_similarity_and_honours_the_other_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let axis = |i: usize, j: usize, w: f32| {
            let mut v = vec![0.0f32; 512];
            v[i] = 1.0;
            v[j] = w;
            Embedding::normalised(&v)
        };
        let t0 = 1_800_000_000_000i64;
        let mut rows = vec![
            sighting("gate", 1, t0, "bmw", "3-series", 0.9),
            sighting("gate", 2, t0 + 1000, "bmw", "3-series", 0.9),
            sighting("yard", 3, t0 + 2000, "audi", "a4", 0.9),
            sighting("yard", 4, t0 + 3000, "audi", "a4", 0.9),
        ];
        rows[0].embedding = Some(axis(0, 1, 0.1)); // very like the query
        rows[1].embedding = Some(axis(1, 0, 0.2)); // hardly
        rows[2].embedding = Some(axis(0, 2, 0.5)); // rather
        store.insert(&rows).unwrap();
        let like = Query { like: Some(axis(0, 3, 0.0)), ..Query::default() };
        let found = store.search(&like).unwrap();
        let order: Vec<u64> = found.iter().map(|s| s.track_id).collect();
        assert_eq!(order, vec![1, 3, 2], "most alike first; a row without an embedding is left out");
        let sims: Vec<f32> = found.iter().map(|s| s.similarity.unwrap()).collect();
        assert!((sims[0] - 0.995).abs() < 0.02 && (sims[1] - 0.894).abs() < 0.02, "{sims:?}");
        let close = Query { min_similarity: Some(0.5), ..like.clone() };
        assert_eq!(store.search(&close).unwrap().len(), 2);
        let audi = Query { make: Some("audi".into()), ..like.clone() };
        assert_eq!(store.search(&audi).unwrap().iter().map(|s| s.track_id).collect::<Vec<_>>(), vec![3]);
        let one = Query { limit: 1, ..like };
        assert_eq!(store.search(&one).unwrap()[0].track_id, 1);
        // The stored embedding comes back (as bytes: within rounding).
        let back = store.search(&Query { camera: Some("gate".into()), ..Query::default() }).unwrap();
        assert!(back[1].embedding.as_ref().unwrap().similarity(&axis(0, 1, 0.1)) > 0.999);
    }

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            // What carwatch wrote before embeddings: version 1, no embedding column.
            let store = Store::open(&path).unwrap();
            store
                .conn
                .execute_batch(
                    "ALTER TABLE sightings DROP COLUMN embedding;
                     ALTER TABLE sightings DROP COLUMN live; PRAGMA user_version = 1;
                     INSERT INTO sightings (camera, track, first_seen, last_seen, x, y, width, height, view, view_p,
                         make, model, confidence, looks, colour, colour_p, makes, make_models)
                     VALUES ('gate', 7, 1, 2, 0, 0, 10, 10, 'front', 0.9, 'bmw', 'x5', 0.9, 3, 'red', 0.8, '[]', '[]');",
                )
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.version().unwrap(), SCHEMA_VERSION);
        let rows = store.search(&Query::default()).unwrap();
        assert_eq!((rows.len(), rows[0].track_id, rows[0].embedding.is_none()), (1, 7, true));
        store.insert(&[sighting("gate", 8, 5, "bmw", "x5", 0.9)]).unwrap();
    }

    #[test]
    fn a_refreshed_row_is_replaced_when_the_track_ends_and_left_to_the_live_matcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Timestamp::now().as_millisecond();
        let mut live = sighting("gate", 9, now - 60_000, "bmw", "3-series", 0.9);
        live.live = true;
        store.insert(&[live.clone()]).unwrap();
        store.insert(&[live.clone()]).unwrap();
        assert_eq!(store.search(&Query::default()).unwrap().len(), 1, "a refresh replaces the last one");
        let mut lookback = Lookback { known: Vec::new(), default: Duration::from_secs(3600) };
        let bmw = "[[alert]]\nid = \"bmw\"\nmake = \"bmw\"\n";
        assert!(lookback.search(alerts(bmw), &mut store, Timestamp::now()).is_empty(), "still in view: live");
        let ended = Sighting { live: false, last_seen: Timestamp::from_millisecond(now).unwrap(), looks: 9, ..live };
        store.insert(&[ended]).unwrap();
        let rows = store.search(&Query::default()).unwrap();
        assert_eq!((rows.len(), rows[0].looks, rows[0].live), (1, 9, false));
        let mut restarted = Lookback { known: Vec::new(), default: Duration::from_secs(3600) };
        assert_eq!(restarted.search(alerts(bmw), &mut store, Timestamp::now()).len(), 1);
    }

    #[test]
    fn a_corrupt_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(Store::open(&path).is_err());
    }
}
