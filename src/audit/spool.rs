//! The audit spool: an append-only directory of JSON-lines segments where records wait
//! while the store is down or slow, replayed oldest first when it answers again.
//!
//! Each append writes whole lines, so a record the writer counted as spooled survives the
//! process (a crash, SIGKILL); [`Spool::sync_blocking`] (`fdatasync`), called by the writer
//! at most every `AUDIT_SYNC_INTERVAL`, makes it survive the machine. After a restart the
//! writer never appends to an old segment (its tail may be torn): it starts a new one,
//! and a torn last line is skipped on replay. The replay cursor lives in memory; a crash
//! mid-replay replays the segment again, which the store's `(id, ts)` key makes harmless.
//! The directory's total size is capped: an append that would pass the cap fails with
//! [`SpoolError::Full`], unless the spool is empty (one batch larger than the cap is kept).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use llmmux_actors::audit::SpoolError;
use tracing::warn;

use super::record::AuditRecord;

/// A segment is closed and a new one started past this size, so replayed space is freed
/// a segment at a time.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const SUFFIX: &str = ".spool";

struct Segment {
    seq: u64,
    len: u64,
}

struct State {
    /// Oldest first.
    segments: VecDeque<Segment>,
    /// The segment being appended to (always the newest), opened by this process.
    writer: Option<Appending>,
    /// A segment was closed (rotated, or after a failed write) without its unsynced writes
    /// known to be on disk: the next [`Spool::sync_blocking`] reports it.
    close_failed: bool,
    /// Replay position in the oldest segment.
    read_offset: u64,
    total: u64,
    next_seq: u64,
}

struct Appending {
    seq: u64,
    file: File,
    /// Written since the last sync.
    dirty: bool,
}

/// Where a replay read ended: committed once its records are stored.
#[derive(Debug, Clone, Copy)]
pub struct ReadMark {
    seq: u64,
    offset: u64,
}

#[derive(Clone)]
pub struct Spool {
    dir: Arc<PathBuf>,
    max_bytes: u64,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit spool directory {dir}: {source}")]
pub struct SpoolOpenError {
    dir: String,
    source: std::io::Error,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SUFFIX}"))
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, finding what an earlier process
    /// left there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolOpenError> {
        let fail = |source| SpoolOpenError {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map_err(fail)?.len();
            segments.push(Segment { seq, len });
        }
        segments.sort_by_key(|s| s.seq);
        let total = segments.iter().map(|s| s.len).sum();
        let next_seq = segments.last().map_or(1, |s| s.seq + 1);
        // Probe that the directory is writable now rather than at the first outage.
        let probe = dir.join(".write-test");
        File::create(&probe).map_err(fail)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Spool {
            dir: Arc::new(dir.to_owned()),
            max_bytes,
            state: Arc::new(Mutex::new(State {
                segments: segments.into(),
                writer: None,
                close_failed: false,
                read_offset: 0,
                total,
                next_seq,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    /// Whether unread records remain.
    pub fn has_records(&self) -> bool {
        let st = self.lock();
        match st.segments.len() {
            0 => false,
            1 => st.segments[0].len > st.read_offset,
            _ => true,
        }
    }

    /// Appends `batch` (blocking I/O: call from a blocking thread).
    pub fn append_blocking(&self, batch: &[AuditRecord]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        super::record::write_lines(batch, &mut buf).map_err(|e| SpoolError::Io(e.to_string()))?;
        let len = buf.len() as u64;
        let mut st = self.lock();
        // An empty spool takes any one batch: one larger than the cap could otherwise never
        // be spooled, and with `AUDIT_ON_FULL=reject` nothing would be served until the
        // store is back. The cap is passed by at most that batch.
        if st.total > 0 && st.total + len > self.max_bytes {
            return Err(SpoolError::Full);
        }
        let io = |e: std::io::Error| SpoolError::Io(e.kind().to_string());
        let rotate = match &st.writer {
            None => true,
            Some(w) => st
                .segments
                .back()
                .is_none_or(|s| s.seq != w.seq || s.len >= SEGMENT_BYTES),
        };
        if rotate {
            // The segment is closed here, so what it holds unsynced is synced now or never.
            if let Some(old) = st.writer.take().filter(|w| w.dirty) {
                if let Err(e) = old.file.sync_data() {
                    st.close_failed = true;
                    return Err(io(e));
                }
            }
            let seq = st.next_seq;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(seg_path(&self.dir, seq))
                .map_err(io)?;
            // The new name must survive a crash too.
            if let Ok(d) = File::open(&*self.dir) {
                let _ = d.sync_all();
            }
            st.next_seq += 1;
            st.segments.push_back(Segment { seq, len: 0 });
            st.writer = Some(Appending {
                seq,
                file,
                dirty: false,
            });
        }
        let Some(w) = st.writer.as_mut() else {
            return Err(SpoolError::Io("no segment open".into()));
        };
        if let Err(e) = w.file.write_all(&buf) {
            // The segment may now end in a partial line: start a new one next time. What it
            // held unsynced is not known to be on disk: the next sync reports that, so the
            // writer appends those batches again.
            st.close_failed |= w.dirty;
            st.writer = None;
            return Err(io(e));
        }
        w.dirty = true;
        if let Some(seg) = st.segments.back_mut() {
            seg.len += len;
        }
        st.total += len;
        Ok(())
    }

    /// Syncs what was appended since the last sync (blocking I/O). After a failure the
    /// next append starts a new segment: the writer appends what the sync covered again.
    pub fn sync_blocking(&self) -> std::io::Result<()> {
        let mut st = self.lock();
        if std::mem::take(&mut st.close_failed) {
            return Err(std::io::Error::other("a closed segment was not synced"));
        }
        let Some(w) = st.writer.as_mut().filter(|w| w.dirty) else {
            return Ok(());
        };
        if let Err(e) = w.file.sync_data() {
            st.writer = None;
            return Err(e);
        }
        w.dirty = false;
        Ok(())
    }

    /// Reads up to `max` records from the replay position (blocking I/O).
    pub fn read_blocking(&self, max: usize) -> std::io::Result<(Vec<AuditRecord>, ReadMark)> {
        let st = self.lock();
        let Some(seg) = st.segments.front() else {
            return Ok((Vec::new(), ReadMark { seq: 0, offset: 0 }));
        };
        let (seq, seg_len, start) = (seg.seq, seg.len, st.read_offset);
        let active = st.writer.as_ref().is_some_and(|w| w.seq == seq);
        drop(st);
        let mut file = BufReader::new(File::open(seg_path(&self.dir, seq))?);
        file.seek(SeekFrom::Start(start))?;
        let mut out = Vec::new();
        let mut offset = start;
        let mut line = Vec::new();
        while out.len() < max && offset < seg_len {
            line.clear();
            let n = file.read_until(b'\n', &mut line)? as u64;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A torn tail left by a crash: never acknowledged, so nothing is lost.
                if !active {
                    warn!(segment = seq, "audit spool: skipping a torn last line");
                    offset = seg_len;
                }
                break;
            }
            offset += n;
            match serde_json::from_slice::<AuditRecord>(&line) {
                Ok(r) => out.push(r),
                Err(_) => warn!(segment = seq, "audit spool: skipping an unreadable line"),
            }
        }
        Ok((out, ReadMark { seq, offset }))
    }

    /// The records read up to `mark` are stored: move past them, and delete a segment
    /// once it is fully replayed.
    pub fn commit(&self, mark: ReadMark) {
        let mut st = self.lock();
        let Some((seq, len)) = st.segments.front().map(|s| (s.seq, s.len)) else {
            return;
        };
        if seq != mark.seq {
            return;
        }
        st.read_offset = mark.offset;
        if mark.offset < len {
            return;
        }
        if st.writer.as_ref().is_some_and(|w| w.seq == seq) {
            st.writer = None;
        }
        st.segments.pop_front();
        st.total = st.total.saturating_sub(len);
        st.read_offset = 0;
        if let Err(e) = std::fs::remove_file(seg_path(&self.dir, seq)) {
            warn!(segment = seq, error = %e.kind(), "audit spool: cannot delete a replayed segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::ActivityEntry;

    fn recs(n: usize) -> Vec<AuditRecord> {
        (0..n)
            .map(|i| {
                let mut r = crate::audit::record::RequestEntry::from_outcome(&sample());
                r.latency_ms = i as f64 + 0.25;
                r.prompt_tokens = Some(i as u64);
                if i % 2 == 0 {
                    AuditRecord::Request(r)
                } else {
                    AuditRecord::Activity(ActivityEntry::new(&format!("a{i}"), "success"))
                }
            })
            .collect()
    }

    /// A finished request with numbers in every numeric field (they must survive the
    /// round trip through a spool line).
    fn sample() -> crate::outcome::RequestRecord {
        crate::outcome::RequestRecord {
            id: "r".into(),
            ts: std::time::SystemTime::now(),
            method: http::Method::POST,
            endpoint: "/v1/chat/completions".into(),
            route: "/v1/chat/completions",
            client_addr: std::net::IpAddr::from([127, 0, 0, 1]),
            principal: None,
            model: Some("m".into()),
            backend: None,
            stream: true,
            status: 200,
            error: None,
            attempts: 2,
            latency: std::time::Duration::from_micros(1500),
            ttfb: Some(std::time::Duration::from_micros(700)),
            prompt_tokens: Some(10),
            completion_tokens: Some(20),
            bodies: None,
        }
    }

    fn drain(s: &Spool) -> Vec<AuditRecord> {
        let mut all = Vec::new();
        loop {
            let (batch, mark) = s.read_blocking(7).expect("read");
            s.commit(mark);
            if batch.is_empty() && !s.has_records() {
                return all;
            }
            all.extend(batch);
        }
    }

    #[test]
    fn records_come_back_in_order_and_space_is_freed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(dir.path(), 1 << 30).expect("open");
        let (a, b) = (recs(20), recs(30));
        s.append_blocking(&a).expect("append");
        s.append_blocking(&b).expect("append");
        assert!(s.has_records());
        let got = drain(&s);
        assert_eq!(got, [a, b].concat());
        assert_eq!(s.bytes(), 0);
        assert!(!s.has_records());
    }

    #[test]
    fn the_cap_refuses_an_append_that_would_pass_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(dir.path(), 4_000).expect("open");
        let mut appended = 0;
        loop {
            match s.append_blocking(&recs(5)) {
                Ok(()) => appended += 5,
                Err(SpoolError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(appended > 0 && s.bytes() <= 4_000);
        assert_eq!(drain(&s).len(), appended);
        s.append_blocking(&recs(5))
            .expect("room again after replay");
    }

    #[test]
    fn an_empty_spool_takes_one_batch_larger_than_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(dir.path(), 1_000).expect("open");
        let big = recs(50);
        s.append_blocking(&big).expect("an empty spool takes it");
        assert!(s.bytes() > 1_000);
        assert!(matches!(s.append_blocking(&recs(1)), Err(SpoolError::Full)));
        assert_eq!(drain(&s), big);
        s.append_blocking(&recs(1))
            .expect("room again after replay");
    }

    #[test]
    fn a_new_process_replays_what_an_old_one_left_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = recs(10);
        {
            let s = Spool::open(dir.path(), 1 << 30).expect("open");
            s.append_blocking(&first).expect("append");
        }
        // A crash mid-append: half a line at the end of the segment.
        let seg = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
            .expect("segment");
        let mut f = OpenOptions::new()
            .append(true)
            .open(seg.path())
            .expect("open");
        f.write_all(b"{\"activity\":{\"id\":").expect("write");
        drop(f);
        let s = Spool::open(dir.path(), 1 << 30).expect("reopen");
        let later = recs(3);
        s.append_blocking(&later).expect("append to a new segment");
        assert_eq!(drain(&s), [first, later].concat());
    }
}
