//! The local audit journal used without `DATABASE_URL` (the embedded default): one JSON
//! line per record, appended per batch and synced when the writer asks (like the spool). Past
//! `AUDIT_JOURNAL_MAX_BYTES` the file is renamed to `<path>.1` (replacing an older one)
//! and a new file is started, so the journal's disk use stays bounded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::AuditRecord;

/// The file being appended to.
struct Open {
    file: File,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
}

#[derive(Clone)]
pub struct Journal {
    path: Arc<PathBuf>,
    max_bytes: u64,
    file: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    open: Option<Open>,
    /// A file was closed (rotated, or after a failed write) without its unsynced writes
    /// known to be on disk: the next [`Journal::sync_blocking`] reports it.
    close_failed: bool,
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl Journal {
    /// Opens the journal for appending (creating it and its directory).
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let j = Journal {
            path: Arc::new(path.to_owned()),
            max_bytes,
            file: Arc::new(Mutex::new(Slot::default())),
        };
        let f = j.open_file()?;
        j.file.lock().unwrap_or_else(|p| p.into_inner()).open = Some(f);
        Ok(j)
    }

    fn open_file(&self) -> std::io::Result<Open> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.path)?;
        let len = file.metadata()?.len();
        Ok(Open {
            file,
            len,
            dirty: false,
        })
    }

    /// Appends a batch (blocking I/O); [`Journal::sync_blocking`] makes it durable.
    pub fn append_blocking(&self, batch: &[AuditRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        super::record::write_lines(batch, &mut buf)?;
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(full) = slot.open.take_if(|o| o.len >= self.max_bytes) {
            // The file is closed here, so what it holds unsynced is synced now or never.
            if full.dirty {
                if let Err(e) = full.file.sync_data() {
                    slot.close_failed = true;
                    return Err(e);
                }
            }
            std::fs::rename(&*self.path, rotated(&self.path))?;
        }
        if slot.open.is_none() {
            slot.open = Some(self.open_file()?);
        }
        let Some(open) = slot.open.as_mut() else {
            return Err(std::io::Error::other("journal not open"));
        };
        if let Err(e) = open.file.write_all(&buf) {
            // Cut a partial line off (the next batch must start on a line of its own), and
            // reopen next time. What the file held unsynced is not known to be on disk: the
            // next sync reports that, so the writer appends those batches again.
            let _ = open.file.set_len(open.len);
            slot.close_failed |= open.dirty;
            slot.open = None;
            return Err(e);
        }
        open.len += buf.len() as u64;
        open.dirty = true;
        Ok(())
    }

    /// Syncs what was appended since the last sync (blocking I/O). After a failure the
    /// file is reopened: the writer appends what the sync covered again.
    pub fn sync_blocking(&self) -> std::io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut slot.close_failed) {
            return Err(std::io::Error::other(
                "a closed journal file was not synced",
            ));
        }
        let Some(open) = slot.open.as_mut().filter(|o| o.dirty) else {
            return Ok(());
        };
        if let Err(e) = open.file.sync_data() {
            slot.open = None;
            return Err(e);
        }
        open.dirty = false;
        Ok(())
    }

    /// What the journal holds now, to be read however often (a query may read it twice)
    /// while the writer appends and rotates: the files stay open and are read up to their
    /// length at this moment.
    pub fn snapshot_blocking(&self) -> std::io::Result<Snapshot> {
        // Under the append lock: no batch is half-written, and no rotation falls between
        // the two opens (which would skip the file being renamed).
        let _appends = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::with_capacity(2);
        for p in [rotated(&self.path), (*self.path).clone()] {
            match File::open(&p) {
                Ok(f) => {
                    let len = f.metadata()?.len();
                    files.push((f, len));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Snapshot { files })
    }
}

/// The journal's files as they were when it was taken (see [`Journal::snapshot_blocking`]).
pub struct Snapshot {
    files: Vec<(File, u64)>,
}

impl Snapshot {
    /// Visits every record (the rotated file first), one line at a time, so a query holds
    /// only what it keeps. Unreadable lines (a torn tail) are skipped.
    pub fn for_each(&self, mut visit: impl FnMut(AuditRecord)) -> std::io::Result<()> {
        for (file, len) in &self.files {
            let mut f = file;
            f.seek(SeekFrom::Start(0))?;
            for line in BufReader::new(f.take(*len)).split(b'\n') {
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(&line?) {
                    visit(r);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::RequestEntry;

    fn ids(s: &Snapshot) -> Vec<u128> {
        let mut out = Vec::new();
        s.for_each(|r| {
            if let AuditRecord::Request(r) = r {
                out.push(r.id.as_u128());
            }
        })
        .expect("read");
        out
    }

    /// A query's two passes must see the same records: appends and a rotation after the
    /// snapshot change neither.
    #[test]
    fn a_snapshot_reads_the_same_records_while_the_journal_grows_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = |id| AuditRecord::Request(RequestEntry::sample(id, 1));
        // Small enough that the third batch rotates the file.
        let j = Journal::open(&dir.path().join("audit.jsonl"), 600).expect("open");
        j.append_blocking(&[rec(1), rec(2)]).expect("append");
        j.append_blocking(&[rec(3)]).expect("append");
        let snap = j.snapshot_blocking().expect("snapshot");
        assert_eq!(ids(&snap), [1, 2, 3]);
        for id in 4..10 {
            j.append_blocking(&[rec(id)]).expect("append");
        }
        assert!(
            dir.path().join("audit.jsonl.1").exists(),
            "the journal rotated"
        );
        assert_eq!(
            ids(&snap),
            [1, 2, 3],
            "read again after appends and rotations"
        );
        assert_ne!(ids(&j.snapshot_blocking().expect("snapshot")), [1, 2, 3]);
    }
}
