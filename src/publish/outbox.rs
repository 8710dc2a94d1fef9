//! The outbox: hits on disk until the broker has acknowledged them.
//!
//! A hit is appended (and fsynced) before it is published, and marked done only after
//! the broker's PUBACK. Hits so survive a broker outage, a crash, `kill -9` and a reboot;
//! on start-up the pending ones are delivered again, in order, with their original
//! `hit_id` and `time`.
//!
//! The file (`<state_dir>/outbox/hits.log`) is append-only. Each record is
//!
//! ```text
//! "CWO2" | kind: u8 | seq: u64 LE | len: u32 LE | header crc32 | payload crc32 | payload
//! ```
//!
//! with `kind` 1 = hit (payload: topic, NUL, message), 2 = acknowledged, 3 = dropped
//! (a bound was reached, or the broker kept refusing it: see [`Outbox::dead_letter`]).
//! The header has its own CRC (over kind, seq and len), so a damaged length is never
//! believed: reading skips a record whose header or payload CRC fails and
//! resynchronises on the next magic. Only a record that runs past the end of the file
//! with no valid record after it is a torn tail (a crash mid-write); anything a valid
//! record follows is damage in the middle, skipped, and the records after it kept.
//! Neither stops start-up. Acknowledgements are not fsynced: losing one only means a
//! hit is delivered twice, with the same `hit_id`. Files of the first format (`CWOB`,
//! one CRC) are still read, and rewritten in this one.
//!
//! Memory holds an index (sequence number -> topic and where the message lies in the
//! file), not the messages: hits with inline snapshots are tens of kilobytes each, and
//! a long broker outage can leave thousands pending. The file is rewritten without its
//! history only when that history (garbage) is at least as large as the live records
//! and above [`COMPACT_MIN`], so the cost of compaction stays proportional to what was
//! written, however large the backlog: it never runs on every acknowledgement.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"CWO2";
const HEADER: usize = 4 + 1 + 8 + 4 + 4 + 4;
/// The first format: `"CWOB" | kind | seq | len | crc32 (kind, seq, len, payload) | payload`.
const MAGIC_V1: &[u8; 4] = b"CWOB";
const HEADER_V1: usize = 4 + 1 + 8 + 4 + 4;
const KIND_HIT: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DROPPED: u8 = 3;
/// Largest record accepted when reading a first-format file (whose length has no CRC).
const MAX_RECORD_V1: u32 = 64 << 20;
/// History below this size is never worth a rewrite.
pub const COMPACT_MIN: u64 = 1 << 20;

/// A hit waiting for its acknowledgement, read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What reading the outbox at start-up found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub pending: usize,
    /// Damaged stretches skipped (each followed by a valid record, or a torn tail).
    pub corrupt: usize,
    /// Bytes at the end that no valid record follows (a record torn by a crash).
    pub truncated: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {}: {source}; check that state_dir is writable and has space", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "a hit of {bytes} bytes is larger than the whole outbox (outbox.max_bytes = {max}); raise max_bytes or turn off inline snapshots"
    )]
    TooLarge { bytes: u64, max: u64 },
}

impl OutboxError {
    /// True when the disk is full: the caller reports it as such.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

/// How much the outbox may hold before it drops the oldest hit (counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub hits: usize,
    pub bytes: u64,
}

/// Where a pending hit lies in the file.
#[derive(Debug, Clone)]
struct Slot {
    topic: String,
    /// Offset and length of the message (after the topic and its NUL).
    message_at: u64,
    message_len: u32,
    /// The whole record's size, for the live-bytes account.
    record_len: u64,
}

/// The open outbox.
pub struct Outbox {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    pending: BTreeMap<u64, Slot>,
    next_seq: u64,
    bounds: Bounds,
    /// Hits dropped because a bound was reached (since start).
    pub dropped: u64,
    /// Hits moved to the dead-letter file (since start).
    pub dead_letters: u64,
    /// File size, and the part of it that pending records take.
    len: u64,
    live: u64,
}

fn encode(kind: u8, seq: u64, payload: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let header_crc = crc32fast::hash(&out[4..17]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    for p in payload {
        crc.update(p);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    out
}

/// One record found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub kind: u8,
    pub seq: u64,
    pub start: usize,
    pub payload: Range<usize>,
}

enum Decoded {
    Record(Found),
    /// Damaged at this offset; resume searching after it.
    Corrupt,
    /// Runs past the end of the buffer.
    Torn,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn decode(buf: &[u8], at: usize) -> Decoded {
    let rest = &buf[at..];
    if rest.len() < 4 {
        return Decoded::Torn;
    }
    let v2 = &rest[..4] == MAGIC;
    if !v2 && &rest[..4] != MAGIC_V1 {
        return Decoded::Corrupt;
    }
    let header = if v2 { HEADER } else { HEADER_V1 };
    if rest.len() < header {
        return Decoded::Torn;
    }
    let (kind, seq, len) = (rest[4], le64(&rest[5..13]), le32(&rest[13..17]));
    if v2 && crc32fast::hash(&rest[4..17]) != le32(&rest[17..21]) {
        return Decoded::Corrupt;
    }
    if !(KIND_HIT..=KIND_DROPPED).contains(&kind) || (!v2 && len > MAX_RECORD_V1) {
        return Decoded::Corrupt;
    }
    let Some(end) = header.checked_add(len as usize).filter(|&e| e <= rest.len()) else {
        return Decoded::Torn;
    };
    let payload = &rest[header..end];
    let ok = if v2 {
        crc32fast::hash(payload) == le32(&rest[21..25])
    } else {
        let mut h = crc32fast::Hasher::new();
        h.update(&rest[4..17]);
        h.update(payload);
        h.finalize() == le32(&rest[17..21])
    };
    if !ok {
        return Decoded::Corrupt;
    }
    Decoded::Record(Found { kind, seq, start: at, payload: at + header..at + end })
}

/// The next offset after `from` where a valid record starts.
fn next_valid(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        at += buf.get(at..)?.windows(4).position(|w| w == MAGIC || w == MAGIC_V1)?;
        if let Decoded::Record(_) = decode(buf, at) {
            return Some(at);
        }
        at += 1;
    }
}

/// What a whole file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    pub records: Vec<Found>,
    pub corrupt: usize,
    pub truncated: u64,
    /// Records of the first format were found (the file is then rewritten).
    pub old_format: bool,
}

/// Reads every valid record of `buf`, skipping damage. Never panics, whatever the bytes.
pub(crate) fn scan(buf: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut at = 0;
    while at < buf.len() {
        match decode(buf, at) {
            Decoded::Record(found) => {
                out.old_format |= &buf[at..at + 4] == MAGIC_V1;
                at = found.payload.end;
                out.records.push(found);
            }
            // Damage, or a record that claims to run past the end: it is a torn tail only
            // if nothing valid follows it.
            Decoded::Corrupt | Decoded::Torn => match next_valid(buf, at + 1) {
                Some(next) => {
                    out.corrupt += 1;
                    at = next;
                }
                None => {
                    out.truncated = (buf.len() - at) as u64;
                    break;
                }
            },
        }
    }
    out
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, within `bounds`.
    pub fn open(dir: &Path, bounds: Bounds) -> Result<(Outbox, Recovery), OutboxError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("hits.log");
        let tmp = path.with_extension("log.tmp");
        if tmp.exists() {
            // A compaction interrupted before its rename: the log itself is intact.
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
        }
        let file =
            OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let mut pending = BTreeMap::new();
        let mut recovery = Recovery::default();
        let mut max_seq = 0;
        let mut old_format = false;
        if len > 0 {
            // SAFETY: the outbox directory is ours alone (the state_dir lock), so nobody
            // changes the file while it is mapped; the map is dropped before any write.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
            let found = scan(&map);
            for r in &found.records {
                max_seq = max_seq.max(r.seq);
                if r.kind != KIND_HIT {
                    pending.remove(&r.seq);
                    continue;
                }
                let body = &map[r.payload.clone()];
                let topic = body.iter().position(|&b| b == 0).and_then(|n| std::str::from_utf8(&body[..n]).ok());
                match topic {
                    Some(topic) => {
                        let message_at = (r.payload.start + topic.len() + 1) as u64;
                        let slot = Slot {
                            topic: topic.to_string(),
                            message_at,
                            message_len: (r.payload.end as u64 - message_at) as u32,
                            record_len: (r.payload.end - r.start) as u64,
                        };
                        pending.insert(r.seq, slot);
                    }
                    None => recovery.corrupt += 1,
                }
            }
            recovery.corrupt += found.corrupt;
            recovery.truncated = found.truncated;
            old_format = found.old_format;
        }
        recovery.pending = pending.len();
        let live = pending.values().map(|s| s.record_len).sum();
        let bounds = Bounds { hits: bounds.hits.max(1), bytes: bounds.bytes.max(1) };
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            path,
            file,
            pending,
            next_seq: max_seq + 1,
            bounds,
            dropped: 0,
            dead_letters: 0,
            len,
            live,
        };
        if recovery.corrupt > 0 || recovery.truncated > 0 || old_format {
            outbox.compact()?;
        }
        Ok((outbox, recovery))
    }

    fn io_err(&self) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
        move |source| OutboxError::Io { path: self.path.clone(), source }
    }

    /// Appends a record; returns its offset.
    fn write(&mut self, record: &[u8], sync: bool) -> Result<u64, OutboxError> {
        let at = self.len;
        let result =
            self.file.write_all_at(record, at).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            // Leave no partial record behind for the next append to follow.
            let _ = self.file.set_len(at);
            return Err(self.io_err()(e));
        }
        self.len += record.len() as u64;
        Ok(at)
    }

    fn forget(&mut self, seq: u64, kind: u8) -> Result<bool, OutboxError> {
        let Some(slot) = self.pending.remove(&seq) else { return Ok(false) };
        self.live -= slot.record_len;
        self.write(&encode(kind, seq, &[]), false)?;
        Ok(true)
    }

    /// Stores a hit for `topic` durably (fsynced) and returns its sequence number.
    /// At a bound, the oldest pending hits are dropped first (and counted).
    pub fn append(&mut self, topic: &str, payload: &[u8]) -> Result<u64, OutboxError> {
        let record_len = (HEADER + topic.len() + 1 + payload.len()) as u64;
        if record_len > self.bounds.bytes {
            return Err(OutboxError::TooLarge { bytes: record_len, max: self.bounds.bytes });
        }
        while self.pending.len() >= self.bounds.hits || self.live + record_len > self.bounds.bytes {
            let Some(&oldest) = self.pending.keys().next() else { break };
            self.forget(oldest, KIND_DROPPED)?;
            self.dropped += 1;
            tracing::error!(
                "outbox full ({} hits, {} bytes at most): dropped the oldest undelivered hit (#{oldest})",
                self.bounds.hits,
                self.bounds.bytes
            );
        }
        let seq = self.next_seq;
        let record = encode(KIND_HIT, seq, &[topic.as_bytes(), &[0], payload]);
        let at = self.write(&record, true)?;
        self.next_seq += 1;
        let message_at = at + (HEADER + topic.len() + 1) as u64;
        self.pending
            .insert(seq, Slot { topic: topic.to_string(), message_at, message_len: payload.len() as u32, record_len });
        self.live += record_len;
        Ok(seq)
    }

    /// Marks hit `seq` delivered. Unknown (already acknowledged) numbers are ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        if self.forget(seq, KIND_ACK)? {
            self.maybe_compact()?;
        }
        Ok(())
    }

    /// Takes hit `seq` out of the outbox into `dead-letter.jsonl` beside it (one JSON
    /// object a line: `topic` and `message`), for a hit the broker keeps refusing: kept
    /// for the operator, and no longer blocking the hits behind it.
    pub fn dead_letter(&mut self, seq: u64) -> Result<(), OutboxError> {
        let Some(p) = self.get(seq)? else { return Ok(()) };
        let message = serde_json::from_slice::<serde_json::Value>(&p.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&p.payload).into_owned()));
        let mut line =
            serde_json::to_vec(&serde_json::json!({ "topic": p.topic, "message": message })).unwrap_or_default();
        line.push(b'\n');
        let path = self.dir.join("dead-letter.jsonl");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()));
        written.map_err(|source| OutboxError::Io { path, source })?;
        self.forget(seq, KIND_DROPPED)?;
        self.dead_letters += 1;
        self.maybe_compact()
    }

    /// Pending hits' sequence numbers, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }

    /// Reads pending hit `seq` back from the file.
    pub fn get(&self, seq: u64) -> Result<Option<Pending>, OutboxError> {
        let Some(slot) = self.pending.get(&seq) else { return Ok(None) };
        let mut payload = vec![0; slot.message_len as usize];
        self.file.read_exact_at(&mut payload, slot.message_at).map_err(self.io_err())?;
        Ok(Some(Pending { seq, topic: slot.topic.clone(), payload }))
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes the file takes on disk.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    fn maybe_compact(&mut self) -> Result<(), OutboxError> {
        let garbage = self.len - self.live;
        if garbage >= COMPACT_MIN && garbage >= self.live { self.compact() } else { Ok(()) }
    }

    /// Rewrites the file with only the pending hits (to a temporary file, fsynced,
    /// renamed, directory fsynced), copying each message from the old file.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let tmp = self.path.with_extension("log.tmp");
        let mut slots = BTreeMap::new();
        let mut rewrite = || -> std::io::Result<(File, u64)> {
            let mut out = BufWriter::new(File::create(&tmp)?);
            let mut at = 0u64;
            for (&seq, slot) in &self.pending {
                let mut message = vec![0; slot.message_len as usize];
                self.file.read_exact_at(&mut message, slot.message_at)?;
                let record = encode(KIND_HIT, seq, &[slot.topic.as_bytes(), &[0], &message]);
                out.write_all(&record)?;
                let message_at = at + (HEADER + slot.topic.len() + 1) as u64;
                slots.insert(seq, Slot { message_at, record_len: record.len() as u64, ..slot.clone() });
                at += record.len() as u64;
            }
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()?;
            let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
            file.seek(std::io::SeekFrom::End(0))?;
            Ok((file, at))
        };
        match rewrite() {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.live = len;
                self.pending = slots;
                Ok(())
            }
            Err(e) => {
                // The old file is intact and still in use; try again after the next ack.
                let _ = std::fs::remove_file(&tmp);
                Err(self.io_err()(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROOMY: Bounds = Bounds { hits: 100, bytes: 1 << 30 };

    fn open(dir: &Path) -> (Outbox, Recovery) {
        Outbox::open(dir, ROOMY).unwrap()
    }

    fn payloads(o: &Outbox) -> Vec<Vec<u8>> {
        o.pending().map(|s| o.get(s).unwrap().unwrap().payload).collect()
    }

    #[test]
    fn pending_hits_survive_reopening_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, r) = open(d.path());
        assert_eq!(r, Recovery::default());
        let a = o.append("cw/hits/a", b"{\"n\":1}").unwrap();
        let b = o.append("cw/hits/b", b"{\"n\":2}").unwrap();
        let c = o.append("cw/hits/a", b"{\"n\":3}").unwrap();
        o.ack(b).unwrap();
        drop(o);
        let (mut o, r) = open(d.path());
        assert_eq!(r.pending, 2);
        assert_eq!(o.pending().collect::<Vec<_>>(), vec![a, c]);
        assert_eq!(o.get(c).unwrap().unwrap().payload, b"{\"n\":3}");
        assert_eq!(o.get(a).unwrap().unwrap().topic, "cw/hits/a");
        // New sequence numbers continue after the old ones.
        assert!(o.append("t", b"x").unwrap() > c);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_corrupt_record_skipped() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = open(d.path());
        o.append("t", b"first").unwrap();
        o.append("t", b"second").unwrap();
        o.append("t", b"third").unwrap();
        drop(o);
        let path = d.path().join("hits.log");
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the second record's payload, and tear the third.
        let second = bytes.windows(6).position(|w| w == b"second").unwrap();
        bytes[second] ^= 0xff;
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let (o, r) = open(d.path());
        // No valid record follows the damage: the damaged record and the torn one are
        // one torn tail together.
        assert_eq!(r.corrupt, 0, "{r:?}");
        assert!(r.truncated > 0, "{r:?}");
        assert_eq!(payloads(&o), vec![b"first".to_vec()]);
        drop(o);
        // The damage was compacted away: reading again finds nothing wrong.
        let (o, r) = open(d.path());
        assert_eq!((r.corrupt, r.truncated, o.len()), (0, 0, 1));
    }

    /// The review's defect: a damaged length mid-file was taken for a torn tail and every
    /// later, fsynced record was cut.
    #[test]
    fn a_bad_length_mid_file_loses_only_its_own_record() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = open(d.path());
        for name in ["one", "two", "three", "four"] {
            o.append("t", name.as_bytes()).unwrap();
        }
        drop(o);
        let path = d.path().join("hits.log");
        let mut bytes = std::fs::read(&path).unwrap();
        // The second record's length field: a huge value, as a flipped high byte gives.
        let second = bytes.windows(4).enumerate().filter(|(_, w)| *w == MAGIC).nth(1).unwrap().0;
        bytes[second + 16] = 0x7f;
        std::fs::write(&path, &bytes).unwrap();
        let (o, r) = open(d.path());
        assert_eq!((r.corrupt, r.truncated), (1, 0), "{r:?}");
        assert_eq!(payloads(&o), vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]);
    }

    #[test]
    fn first_format_files_are_read_and_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let v1 = |kind: u8, seq: u64, payload: &[u8]| {
            let mut body = vec![kind];
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let mut h = crc32fast::Hasher::new();
            h.update(&body);
            h.update(payload);
            let mut out = MAGIC_V1.to_vec();
            out.extend_from_slice(&body);
            out.extend_from_slice(&h.finalize().to_le_bytes());
            out.extend_from_slice(payload);
            out
        };
        let mut bytes = v1(KIND_HIT, 1, b"t\0old-a");
        bytes.extend(v1(KIND_HIT, 2, b"t\0old-b"));
        bytes.extend(v1(KIND_ACK, 1, b""));
        std::fs::write(d.path().join("hits.log"), &bytes).unwrap();
        let (mut o, r) = open(d.path());
        assert_eq!(r.pending, 1);
        assert_eq!(payloads(&o), vec![b"old-b".to_vec()]);
        assert_eq!(o.append("t", b"new").unwrap(), 3);
        let on_disk = std::fs::read(d.path().join("hits.log")).unwrap();
        assert!(!on_disk.windows(4).any(|w| w == MAGIC_V1), "rewritten in the current format");
    }

    #[test]
    fn garbage_files_never_stop_start_up() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hits.log"), b"CWO2CWOB\x01garbage\x00\x00CWO2").unwrap();
        let (mut o, r) = open(d.path());
        assert!(o.is_empty());
        assert!(r.corrupt + r.truncated as usize > 0);
        o.append("t", b"ok").unwrap();
        drop(o);
        assert_eq!(open(d.path()).0.len(), 1);
    }

    #[test]
    fn the_bounds_drop_the_oldest_and_count_them() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(d.path(), Bounds { hits: 3, bytes: 1 << 20 }).unwrap();
        for i in 0..5u8 {
            o.append("t", &[b'0' + i]).unwrap();
        }
        assert_eq!(o.dropped, 2);
        let left: Vec<u8> = payloads(&o).iter().map(|p| p[0]).collect();
        assert_eq!(left, b"234".to_vec());
        drop(o);
        assert_eq!(Outbox::open(d.path(), Bounds { hits: 3, bytes: 1 << 20 }).unwrap().0.len(), 3);

        // By bytes: room for two 1000-byte hits.
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(d.path(), Bounds { hits: 100, bytes: 2 * (HEADER as u64 + 1002) }).unwrap();
        for i in 0..4u8 {
            o.append("t", &[b'0' + i; 1000]).unwrap();
        }
        assert_eq!((o.len(), o.dropped), (2, 2));
        assert_eq!(payloads(&o).iter().map(|p| p[0]).collect::<Vec<_>>(), b"23".to_vec());
        let e = o.append("t", &[0; 5000]).unwrap_err();
        assert!(matches!(e, OutboxError::TooLarge { .. }), "{e}");
        assert_eq!(o.len(), 2, "a hit too large for the outbox drops nothing");
    }

    #[test]
    fn compaction_keeps_exactly_the_pending() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = open(d.path());
        let big = vec![b'x'; 1 << 20];
        let mut keep = Vec::new();
        for i in 0..12 {
            let s = o.append("t", &big).unwrap();
            if i % 5 == 0 {
                keep.push(s);
            } else {
                o.ack(s).unwrap();
            }
        }
        let size = std::fs::metadata(d.path().join("hits.log")).unwrap().len();
        assert!(size < 10 << 20, "compaction did not run: {size} bytes");
        drop(o);
        let (o, _) = open(d.path());
        assert_eq!(o.pending().collect::<Vec<_>>(), keep);
    }

    /// The review's defect: with more than 8 MiB pending, every acknowledgement rewrote
    /// the whole file. Acknowledging a large backlog one by one must write (in records
    /// and compactions) only a small multiple of its size.
    #[test]
    fn acknowledging_a_large_backlog_stays_linear() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = open(d.path());
        let hit = vec![b'j'; 40 << 10];
        let seqs: Vec<u64> = (0..60).map(|_| o.append("t", &hit).unwrap()).collect();
        let backlog = o.file_len();
        assert!(backlog > 2 << 20);
        let mut rewritten = 0u64;
        for s in seqs {
            let before = o.file_len();
            o.ack(s).unwrap();
            if o.file_len() < before {
                rewritten += o.file_len();
            }
        }
        assert!(o.is_empty());
        assert!(rewritten <= backlog, "compactions rewrote {rewritten} bytes for a {backlog}-byte backlog");
    }

    #[test]
    fn dead_letters_leave_the_outbox_for_their_own_file() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = open(d.path());
        let a = o.append("cw/hits/x", b"{\"hit_id\":\"a\"}").unwrap();
        let b = o.append("cw/hits/x", b"{\"hit_id\":\"b\"}").unwrap();
        o.dead_letter(a).unwrap();
        assert_eq!((o.pending().collect::<Vec<_>>(), o.dead_letters), (vec![b], 1));
        let text = std::fs::read_to_string(d.path().join("dead-letter.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!((v["topic"].as_str(), v["message"]["hit_id"].as_str()), (Some("cw/hits/x"), Some("a")));
        drop(o);
        assert_eq!(open(d.path()).0.pending().collect::<Vec<_>>(), vec![b]);
    }

    /// Records as `(kind, seq, payload)` and their encoding, for the fuzz test.
    fn file_of(records: &[(u8, u64, Vec<u8>)]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for (kind, seq, p) in records {
            let r = encode(*kind, *seq, &[p]);
            spans.push(bytes.len()..bytes.len() + r.len());
            bytes.extend(r);
        }
        (bytes, spans)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The decoder never panics on arbitrary bytes.
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                                 magic_at in proptest::collection::vec(0usize..400, 0..6)) {
            let mut bytes = bytes;
            for at in magic_at {
                if at + 4 <= bytes.len() {
                    bytes[at..at + 4].copy_from_slice(if at % 2 == 0 { MAGIC } else { MAGIC_V1 });
                }
            }
            let s = scan(&bytes);
            for r in &s.records {
                prop_assert!(r.payload.end <= bytes.len());
            }
        }

        /// Damage to one record (any bytes overwritten inside it) loses that record at
        /// most: every valid record after it is read back.
        #[test]
        fn damage_never_loses_a_later_valid_record(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 2..8),
            victim in any::<proptest::sample::Index>(),
            noise in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let records: Vec<(u8, u64, Vec<u8>)> =
                payloads.into_iter().enumerate().map(|(i, p)| (KIND_HIT, i as u64 + 1, p)).collect();
            let (mut bytes, spans) = file_of(&records);
            let v = victim.index(records.len());
            for (at, byte) in noise {
                let i = spans[v].start + at.index(spans[v].len());
                bytes[i] = byte;
            }
            let s = scan(&bytes);
            let seqs: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
            for (i, (_, seq, payload)) in records.iter().enumerate() {
                if i == v {
                    continue;
                }
                let found = s.records.iter().find(|r| r.seq == *seq);
                prop_assert!(found.is_some(), "record {} lost: read {:?}", seq, seqs);
                prop_assert_eq!(&bytes[found.unwrap().payload.clone()], payload.as_slice());
            }
        }
    }
}
