//! The local audit journal used without `DATABASE_URL` (the embedded default): one JSON
//! line per record, appended and synced per batch like the spool. Past
//! `AUDIT_JOURNAL_MAX_BYTES` the file is renamed to `<path>.1` (replacing an older one)
//! and a new file is started, so the journal's disk use stays bounded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::AuditRecord;

#[derive(Clone)]
pub struct Journal {
    path: Arc<PathBuf>,
    max_bytes: u64,
    file: Arc<Mutex<Option<(File, u64)>>>,
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
            file: Arc::new(Mutex::new(None)),
        };
        let f = j.open_file()?;
        *j.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Ok(j)
    }

    fn open_file(&self) -> std::io::Result<(File, u64)> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.path)?;
        let len = f.metadata()?.len();
        Ok((f, len))
    }

    /// Appends and syncs a batch (blocking I/O).
    pub fn append_blocking(&self, batch: &[AuditRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        super::record::write_lines(batch, &mut buf)?;
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|(_, len)| *len >= self.max_bytes) {
            *slot = None;
            std::fs::rename(&*self.path, rotated(&self.path))?;
        }
        if slot.is_none() {
            *slot = Some(self.open_file()?);
        }
        let Some((file, len)) = slot.as_mut() else {
            return Err(std::io::Error::other("journal not open"));
        };
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
            // Cut a partial line off (the next batch must start on a line of its own), and
            // reopen next time.
            let _ = file.set_len(*len);
            *slot = None;
            return Err(e);
        }
        *len += buf.len() as u64;
        Ok(())
    }

    /// Visits every record in the journal (the rotated file first), one line at a time, so
    /// a query holds only what it keeps. Unreadable lines (a torn tail) are skipped.
    pub fn for_each_blocking(&self, mut visit: impl FnMut(AuditRecord)) -> std::io::Result<()> {
        for p in [rotated(&self.path), (*self.path).clone()] {
            let f = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(f).split(b'\n') {
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(&line?) {
                    visit(r);
                }
            }
        }
        Ok(())
    }
}
