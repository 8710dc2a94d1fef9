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
//! "CWOB" | kind: u8 | seq: u64 LE | len: u32 LE | crc32: u32 LE | payload: len bytes
//! ```
//!
//! with `kind` 1 = hit (payload: topic, NUL, message), 2 = acknowledged, 3 = dropped
//! (the bound was reached), and the CRC over kind, seq, len and payload. Reading skips a
//! record whose CRC does not match and resynchronises on the next magic; a torn record at
//! the end (a crash mid-write) is cut off. Neither stops start-up. Acknowledgements are
//! not fsynced: losing one only means a hit is delivered twice, with the same `hit_id`.
//! When most of the file is acknowledged history it is rewritten with only the pending
//! hits (to a temporary file, fsynced, renamed).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"CWOB";
const HEADER: usize = 4 + 1 + 8 + 4 + 4;
const KIND_HIT: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DROPPED: u8 = 3;
/// Largest record accepted when reading (a hit with an inline snapshot is well below).
const MAX_RECORD: u32 = 64 << 20;
/// Rewrite the file when it is larger than this and mostly history.
const COMPACT_BYTES: u64 = 8 << 20;

/// A hit waiting for its acknowledgement.
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
    /// Records skipped because they were damaged.
    pub corrupt: usize,
    /// Bytes cut off the end (a record torn by a crash).
    pub truncated: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("outbox {}: {source}", path.display())]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The open outbox.
pub struct Outbox {
    path: PathBuf,
    file: File,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    bound: usize,
    /// Hits dropped because the bound was reached (since start).
    pub dropped: u64,
    len: u64,
}

fn encode(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(13 + payload.len());
    body.push(kind);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body);
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// One record read back.
enum Read_ {
    Record {
        kind: u8,
        seq: u64,
        payload: Vec<u8>,
        next: usize,
    },
    /// Damaged at this offset; resume searching after it.
    Corrupt,
    /// Not enough bytes left for a whole record.
    Torn,
}

fn decode(buf: &[u8], at: usize) -> Read_ {
    if buf.len() < at + HEADER {
        return Read_::Torn;
    }
    let h = &buf[at..at + HEADER];
    if &h[0..4] != MAGIC {
        return Read_::Corrupt;
    }
    let kind = h[4];
    let seq = u64::from_le_bytes(h[5..13].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(h[13..17].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(h[17..21].try_into().unwrap_or_default());
    if len > MAX_RECORD || !(KIND_HIT..=KIND_DROPPED).contains(&kind) {
        return Read_::Corrupt;
    }
    let end = at + HEADER + len as usize;
    if buf.len() < end {
        return Read_::Torn;
    }
    let payload = &buf[at + HEADER..end];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[4..17]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Read_::Corrupt;
    }
    Read_::Record { kind, seq, payload: payload.to_vec(), next: end }
}

fn split_hit(payload: &[u8]) -> Option<(String, Vec<u8>)> {
    let nul = payload.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&payload[..nul]).ok()?.to_string();
    Some((topic, payload[nul + 1..].to_vec()))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, keeping at most `bound` pending hits.
    pub fn open(dir: &Path, bound: usize) -> Result<(Outbox, Recovery), OutboxError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let path = dir.join("hits.log");
        let mut buf = Vec::new();
        if path.exists() {
            File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(err(&path))?;
        }
        let mut recovery = Recovery::default();
        let mut pending = BTreeMap::new();
        let mut max_seq = 0;
        let mut at = 0;
        let mut good_end = 0;
        while at < buf.len() {
            match decode(&buf, at) {
                Read_::Record { kind, seq, payload, next } => {
                    max_seq = max_seq.max(seq);
                    match kind {
                        KIND_HIT => match split_hit(&payload) {
                            Some((topic, payload)) => {
                                pending.insert(seq, Pending { seq, topic, payload });
                            }
                            None => recovery.corrupt += 1,
                        },
                        _ => {
                            pending.remove(&seq);
                        }
                    }
                    at = next;
                    good_end = next;
                }
                Read_::Corrupt => {
                    recovery.corrupt += 1;
                    // Resynchronise on the next magic.
                    at = match buf[at + 1..].windows(4).position(|w| w == MAGIC) {
                        Some(p) => at + 1 + p,
                        None => buf.len(),
                    };
                    good_end = at;
                }
                Read_::Torn => {
                    recovery.truncated = (buf.len() - at) as u64;
                    break;
                }
            }
        }
        let file =
            OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path).map_err(err(&path))?;
        if recovery.truncated > 0 {
            file.set_len(good_end as u64).map_err(err(&path))?;
        }
        let len = file.metadata().map_err(err(&path))?.len();
        recovery.pending = pending.len();
        let mut outbox = Outbox { path, file, pending, next_seq: max_seq + 1, bound: bound.max(1), dropped: 0, len };
        if recovery.corrupt > 0 || recovery.truncated > 0 {
            outbox.compact()?;
        }
        Ok((outbox, recovery))
    }

    fn io_err(&self) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
        move |source| OutboxError { path: self.path.clone(), source }
    }

    fn write(&mut self, record: &[u8], sync: bool) -> Result<(), OutboxError> {
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::End(0)).map_err(|source| OutboxError { path: self.path.clone(), source })?;
        self.file.write_all(record).map_err(|source| OutboxError { path: self.path.clone(), source })?;
        if sync {
            self.file.sync_data().map_err(|source| OutboxError { path: self.path.clone(), source })?;
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Stores a hit for `topic` durably (fsynced) and returns its sequence number.
    /// At the bound, the oldest pending hit is dropped first (and counted).
    pub fn append(&mut self, topic: &str, payload: &[u8]) -> Result<u64, OutboxError> {
        while self.pending.len() >= self.bound {
            let Some((&oldest, _)) = self.pending.iter().next() else { break };
            self.write(&encode(KIND_DROPPED, oldest, &[]), false)?;
            self.pending.remove(&oldest);
            self.dropped += 1;
            tracing::error!("outbox full ({} hits): dropped the oldest undelivered hit (#{oldest})", self.bound);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut body = Vec::with_capacity(topic.len() + 1 + payload.len());
        body.extend_from_slice(topic.as_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        self.write(&encode(KIND_HIT, seq, &body), true)?;
        self.pending.insert(seq, Pending { seq, topic: topic.to_string(), payload: payload.to_vec() });
        Ok(seq)
    }

    /// Marks hit `seq` delivered. Unknown (already acknowledged) numbers are ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        if self.pending.remove(&seq).is_none() {
            return Ok(());
        }
        self.write(&encode(KIND_ACK, seq, &[]), false)?;
        if self.len > COMPACT_BYTES && self.pending.len() < 1024 {
            self.compact()?;
        }
        Ok(())
    }

    /// Pending hits, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.pending.values()
    }

    pub fn get(&self, seq: u64) -> Option<&Pending> {
        self.pending.get(&seq)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Rewrites the file with only the pending hits.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = Vec::new();
        for p in self.pending.values() {
            let mut body = p.topic.as_bytes().to_vec();
            body.push(0);
            body.extend_from_slice(&p.payload);
            out.extend_from_slice(&encode(KIND_HIT, p.seq, &body));
        }
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().read(true).write(true).open(&self.path)
        };
        self.file = write().map_err(self.io_err())?;
        self.len = out.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Outbox, Recovery) {
        Outbox::open(dir, 100).unwrap()
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
        let (o, r) = open(d.path());
        assert_eq!(r.pending, 2);
        let seqs: Vec<u64> = o.pending().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![a, c]);
        assert_eq!(o.get(c).unwrap().payload, b"{\"n\":3}");
        assert_eq!(o.get(a).unwrap().topic, "cw/hits/a");
        // New sequence numbers continue after the old ones.
        let (mut o, _) = (o, ());
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
        assert_eq!(r.corrupt, 1, "{r:?}");
        assert!(r.truncated > 0, "{r:?}");
        let left: Vec<&[u8]> = o.pending().map(|p| p.payload.as_slice()).collect();
        assert_eq!(left, vec![b"first".as_slice()]);
        drop(o);
        // The damage was compacted away: reading again finds nothing wrong.
        let (o, r) = open(d.path());
        assert_eq!((r.corrupt, r.truncated, o.len()), (0, 0, 1));
    }

    #[test]
    fn garbage_files_never_stop_start_up() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hits.log"), b"CWOBCWOB\x01garbage\x00\x00CWOB").unwrap();
        let (mut o, r) = open(d.path());
        assert!(o.is_empty());
        assert!(r.corrupt + r.truncated as usize > 0);
        o.append("t", b"ok").unwrap();
        drop(o);
        assert_eq!(open(d.path()).0.len(), 1);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(d.path(), 3).unwrap();
        for i in 0..5u8 {
            o.append("t", &[b'0' + i]).unwrap();
        }
        assert_eq!(o.dropped, 2);
        let left: Vec<u8> = o.pending().map(|p| p.payload[0]).collect();
        assert_eq!(left, b"234".to_vec());
        drop(o);
        assert_eq!(Outbox::open(d.path(), 3).unwrap().0.len(), 3);
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
        assert_eq!(o.pending().map(|p| p.seq).collect::<Vec<_>>(), keep);
    }
}
